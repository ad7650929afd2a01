package report

import (
	"math"
	"strings"
	"testing"

	"rainforest/bench/net/sample"
)

func samples() []sample.Sample {
	return []sample.Sample{
		{Row: "host", Test: sample.Stream, Run: 1, Gbps: 20},
		{Row: "host", Test: sample.RR, Run: 1, P50US: 10, P99US: 30},
		{Row: "host", Test: sample.Stream, Run: 2, Gbps: 10},
		{Row: "host", Test: sample.RR, Run: 2, P50US: 20, P99US: 50},
		{Row: "host", Test: sample.Stream, Run: 3, Gbps: 30},
		{Row: "host", Test: sample.RR, Run: 3, P50US: 30, P99US: 40},
		{Row: "rfloop", Test: sample.Stream, Run: 1, Gbps: 16},
		{Row: "rfloop", Test: sample.RR, Run: 1, Error: "sockperf: timed out"},
		{Row: "slirp", Test: sample.Stream, Run: 1, Gbps: 1},
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarize(t *testing.T) {
	sums := Summarize(samples(), "host", "rfloop", "rftun", "slirp")
	if len(sums) != 3 || sums[0].Row != "host" || sums[1].Row != "rfloop" || sums[2].Row != "slirp" {
		t.Fatalf("rows %+v", sums)
	}
	h := sums[0]
	if h.Gbps.N != 3 || h.Gbps.Median != 20 || h.Gbps.P99 != 30 || !near(h.Gbps.SpreadPct, 100) {
		t.Errorf("host gbps %+v", h.Gbps)
	}
	if h.RTTP50US.Median != 20 || h.RTTP99US.Median != 40 || h.RTTP99US.P99 != 50 {
		t.Errorf("host rtt %+v %+v", h.RTTP50US, h.RTTP99US)
	}
	if l := sums[1]; l.Failed != 1 || l.RTTP50US.N != 0 || l.Gbps.Median != 16 {
		t.Errorf("rfloop %+v", l)
	}
}

func TestRatios(t *testing.T) {
	sums := Summarize(samples())
	rs := Ratios(sums, []Ratio{{Of: "rfloop", To: "host", Goal: 0.8, Paper: 0.63}, {Of: "rftun", To: "qemu-vhost", Goal: 1}, {Of: "host", To: "slirp"}})
	if rs[0].Name != "rfloop/host" || !near(rs[0].Throughput, 0.8) || rs[0].RTTP50 != 0 {
		t.Errorf("rfloop/host %+v", rs[0])
	}
	if rs[1].Throughput != 0 || rs[1].RTTP50 != 0 {
		t.Errorf("missing rows give no ratio: %+v", rs[1])
	}
	if !near(rs[2].Throughput, 20) {
		t.Errorf("host/slirp %+v", rs[2])
	}
}

func TestWriteTable(t *testing.T) {
	r := &Report{Runs: 3, Seconds: 10, Guest: "Debian", Rows: []Row{{"host", "loopback"}, {"rfloop", "shm"}, {"rftun", "tap"}},
		Skipped: map[string]string{"rftun": "no bridge"}, Samples: samples()}
	r.Summaries = Summarize(r.Samples, "host", "rfloop", "rftun")
	r.Ratios = Ratios(r.Summaries, []Ratio{{Of: "rfloop", To: "host", Goal: 0.8, Paper: 0.63}})
	var b strings.Builder
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"Gbps med", "20.000", "rfloop/host", "throughput 0.8x", "goal >= 0.80x, paper 0.63x",
		"rftun: skipped: no bridge", "failed: rfloop rr run 1: sockperf: timed out", "host: loopback"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
