package report

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/lifecycle/sample"
)

func samples() []sample.Sample {
	ms := time.Millisecond
	return []sample.Sample{
		{System: "lxc", Run: 1, CreateReturn: 340 * ms, CreateInit: 350 * ms, DestroyReturn: 5 * ms, Destroy: 15 * ms},
		{System: "rfm", Run: 1, CreateReturn: 600 * ms, CreateInit: 3000 * ms, DestroyReturn: 70 * ms, Destroy: 80 * ms},
		{System: "rfm", Run: 2, CreateReturn: 800 * ms, CreateInit: 3400 * ms, DestroyReturn: 90 * ms, Destroy: 100 * ms},
		{System: "rfm", Run: 3, CreateReturn: 700 * ms, CreateInit: 3200 * ms, DestroyReturn: 80 * ms, Destroy: 90 * ms},
		{System: "rfm", Run: 4, Error: "create lc-4: no hugepages"},
	}
}

// resizeSamples are samples of all three systems with resizes.
func resizeSamples() []sample.Sample {
	ms := time.Millisecond
	var out []sample.Sample
	for i, f := range []time.Duration{1, 2, 3} {
		out = append(out,
			sample.Sample{System: "rfm", Run: i + 1, CreateInit: 3000 * ms * f, Destroy: 80 * ms * f, CPUOnline: 60 * ms * f, CPUOffline: 50 * ms * f,
				MemOnline: 40 * ms * f, MemOffline: 300 * ms * f},
			sample.Sample{System: "qemu", Run: i + 1, CreateInit: 6000 * ms * f, Destroy: 20 * ms * f, CPUOnline: 120 * ms * f, CPUOffline: 100 * ms * f,
				MemOnline: 80 * ms * f, MemOffline: 600 * ms * f},
			sample.Sample{System: "lxc", Run: i + 1, CreateInit: 300 * ms * f, Destroy: 10 * ms * f, CPUOnline: 2 * ms * f, CPUOffline: 2 * ms * f})
	}
	return out
}

func TestRatios(t *testing.T) {
	sums := Summarize(resizeSamples(), "rfm", "qemu", "lxc")
	if sums[0].MemOnlineMS != (benchkit.Stats{N: 3, Median: 80, Min: 40, Max: 120}) || sums[0].MemOfflineP99 != 900 || sums[0].CreateInitP99 != 9000 ||
		sums[2].MemOnlineMS.N != 0 {
		t.Errorf("summaries %+v", sums)
	}
	rs := Ratios(sums, "rfm", "qemu", "lxc", "absent")
	// qemu: all six operations; lxc: no memory rows.
	if len(rs) != 10 {
		t.Fatalf("ratios %+v", rs)
	}
	for i, op := range Operations() {
		if r := rs[i]; r.Against != "qemu" || r.Op != op {
			t.Errorf("ratio %d: %+v", i, r)
		}
	}
	if r := rs[0]; r.Median != 0.5 || r.P99 != 0.5 || r.Max != 0.5 {
		t.Errorf("create ratio %+v", r)
	}
	if r := rs[1]; r.Median != 4 {
		t.Errorf("destroy ratio %+v", r)
	}
	if r := rs[6]; r.Against != "lxc" || r.Op != OpCreate || r.Median != 10 {
		t.Errorf("lxc create ratio %+v", r)
	}
	if Ratios(sums, "absent", "qemu") != nil {
		t.Error("ratios of a system without a summary")
	}
}

func TestWriteTable4(t *testing.T) {
	r := testReport()
	r.Samples = resizeSamples()
	r.Summaries = Summarize(r.Samples, "rfm", "qemu", "lxc")
	r.Ratios = Ratios(r.Summaries, "rfm", "qemu", "lxc")
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, re := range []string{
		`system +operation +n +med +p99 +max`,
		`rfm +create +3 +6000\.0 +9000\.0 +9000\.0`,
		`rfm +memory online +3 +80\.0 +120\.0 +120\.0`,
		`qemu +memory offline +3 +1200\.0 +1800\.0 +1800\.0`,
		`lxc +memory online +0 +- +- +-`,
		`RainForest \(paper Table 4\) +cpu online +66`,
		`rfm/qemu +cpu online +0\.50x +0\.50x +0\.50x`,
		`rfm/qemu +memory offline +0\.50x`,
		`rfm/lxc +cpu offline +25\.00x`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("table lacks %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "rfm/lxc  memory") {
		t.Errorf("a ratio of an operation lxc did not measure:\n%s", out)
	}
}

func TestSummarize(t *testing.T) {
	sums := Summarize(samples(), "rfm", "lxc", "absent")
	if len(sums) != 3 || sums[0].System != "rfm" || sums[1].System != "lxc" || sums[2].System != "absent" {
		t.Fatalf("order %+v", sums)
	}
	r := sums[0]
	if r.OK != 3 || r.Failed != 1 {
		t.Errorf("ok %d failed %d", r.OK, r.Failed)
	}
	if r.CreateInitMS != (benchkit.Stats{N: 3, Median: 3200, Min: 3000, Max: 3400}) ||
		r.CreateReturnMS.Median != 700 || r.DestroyMS != (benchkit.Stats{N: 3, Median: 90, Min: 80, Max: 100}) || r.DestroyReturnMS.Max != 90 {
		t.Errorf("rfm summary %+v", r)
	}
	if sums[1].CreateInitMS.Median != 350 || sums[2].OK != 0 || sums[2].CreateInitMS != (benchkit.Stats{}) {
		t.Errorf("summaries %+v", sums)
	}
	// Systems not named follow in order of appearance.
	if got := Summarize(samples()); got[0].System != "lxc" || got[1].System != "rfm" {
		t.Errorf("default order %+v", got)
	}
}

func testReport() *Report {
	s := samples()
	return &Report{
		Settings: map[string]string{"rfm": "nested L1", "lxc": "natively on this host"}, Nested: true, Runs: 4,
		Guest: "subOS: 1 core", Skipped: map[string]string{"other": "not installed"},
		Samples: s, Summaries: Summarize(s, "rfm", "lxc"), References: []Reference{PaperTable4()},
		Notes: []string{"rfm runs in the nested layer; only indicative"}, Date: "2026-11-26T00:00:00Z",
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, testReport()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"4 create+destroy cycle(s)", "rfm: nested L1", "lxc: natively on this host",
		"create->init ms med", "destroy ms med", "3/4", "3200.0", "3000.0", "3400.0", "350.0",
		"RainForest (paper Table 4)", "6100", "create 6.1 s, destroy ~0",
		"SKIPPED other: not installed", "Note: rfm runs in the nested layer; only indicative",
		"FAILED rfm run 4: create lc-4: no hugepages",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "\n rfm") > strings.Index(out, " lxc ") {
		t.Errorf("rfm row not before lxc row:\n%s", out)
	}
}

func TestWriteTableShortensErrors(t *testing.T) {
	r := testReport()
	long := strings.Repeat("e", 5000)
	r.Samples = append(r.Samples, sample.Sample{System: "rfm", Run: 9, Error: long})
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); strings.Contains(out, long) || !strings.Contains(out, "FAILED rfm run 9: "+benchkit.ShortenError(long)+"\n") {
		t.Errorf("long error not shortened:\n%s", out)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	data, err := json.Marshal(testReport())
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Samples) != 5 || back.Samples[1].CreateInit != 3*time.Second || back.Summaries[0].CreateInitMS.Median != 3200 ||
		back.References[0].CreateMS != 6100 || back.Settings["rfm"] != "nested L1" {
		t.Errorf("round trip %+v", back)
	}
	for _, key := range []string{`"create_init_ms"`, `"create_return_ms"`, `"destroy_ms"`, `"create_init_ns"`, `"references"`} {
		if !strings.Contains(string(data), key) {
			t.Errorf("JSON lacks %s", key)
		}
	}
}
