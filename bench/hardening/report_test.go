package main

import (
	"errors"
	"strings"
	"testing"

	"rainforest/bench/internal/benchkit"
)

func TestSummarizeAndTable(t *testing.T) {
	var samples []Sample
	for rep, v := range []float64{100, 300, 200} {
		samples = append(samples,
			Sample{Config: cfgHardened, Rep: rep + 1, Metric: metricBoot, Values: map[string]float64{"create_init_ms": 2 * v}},
			Sample{Config: cfgPlain, Rep: rep + 1, Metric: metricBoot, Values: map[string]float64{"create_init_ms": v}})
	}
	samples = append(samples, Sample{Config: cfgPlain, Rep: 4, Metric: metricBoot, Error: "marker not seen"},
		Sample{Config: cfgHardened, Rep: 1, Metric: metricFICM, Values: map[string]float64{"poll_rtt_median_us": 3}})
	rows := summarize(samples)
	if len(rows) != len(quantities()) {
		t.Fatalf("%d rows", len(rows))
	}
	boot := rows[0]
	if boot.Key != "create_init_ms" || boot.Hardened.N != 3 || boot.Hardened.Median != 400 || boot.Hardened.P99 != 600 ||
		boot.Hardened.Min != 200 || boot.Plain.Median != 200 || boot.Plain.Failed != 1 || boot.Hardened.Failed != 0 || boot.Ratio != 2 {
		t.Errorf("boot row %+v", boot)
	}
	for _, r := range rows {
		if r.Key == "poll_rtt_median_us" && (r.Hardened.N != 1 || r.Plain.N != 0 || r.Ratio != 0) {
			t.Errorf("one-sided row %+v", r)
		}
	}
	var b strings.Builder
	rep := &Report{Runs: 3, Setting: "test", ServeFlags: map[string]string{cfgPlain: plainServeFlags}, Rows: rows, Samples: samples, Notes: []string{"a note"}}
	if err := writeTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{plainServeFlags, "boot: create -> /init", "2.000x", "200-600 (n=3)", "plain rep 4 boot: marker not seen", "- a note"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestCheck(t *testing.T) {
	var all []Sample
	for rep := 1; rep <= 2; rep++ {
		for _, c := range []string{cfgHardened, cfgPlain} {
			all = append(all, Sample{Config: c, Rep: rep, Metric: metricBoot}, Sample{Config: c, Rep: rep, Metric: metricDisk})
			for range 2 * len(ficmModes) {
				all = append(all, Sample{Config: c, Rep: rep, Metric: metricFICM})
			}
		}
	}
	if err := check(all, 2); err != nil {
		t.Errorf("complete: %v", err)
	}
	if err := check(all[1:], 2); err == nil || !strings.Contains(err.Error(), "got 3 boot results, want 4") {
		t.Errorf("missing: %v", err)
	}
	failed := append([]Sample{{Config: cfgPlain, Rep: 1, Metric: metricDisk, Error: "x"}}, all...)
	if err := check(failed, 2); err == nil || !strings.Contains(err.Error(), "plain rep 1 disk failed") {
		t.Errorf("failed: %v", err)
	}
}

// A session that dies keeps what arrived, marked partial.
func TestFinishPartial(t *testing.T) {
	c := &benchkit.Collector[Sample]{Parse: parseLine}
	c.Line("RF-HARDENING config=hardened rep=1 metric=disk | RF-DISK direct=1 seq_read_mbps=5")
	c.Line("RF-HARDENING config=plain rep=1 metric=disk | RF-DISK seq_read_mbps=x")
	rep := &Report{}
	died := errors.New("L1 went silent")
	if err := finish(rep, c, 5, died); !errors.Is(err, died) {
		t.Errorf("err %v", err)
	}
	if !rep.Partial || len(rep.Samples) != 1 || rep.Rows[2].Hardened.Median != 5 || !strings.Contains(strings.Join(rep.Notes, "\n"), "unparsed result line") {
		t.Errorf("report %+v", rep)
	}
}
