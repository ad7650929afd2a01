package main

import (
	"testing"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/net/report"
	"rainforest/bench/net/sample"
)

// TestFill checks that info lines become skips and facts, and that the
// ratios the issue asks for are there.
func TestFill(t *testing.T) {
	rep := &report.Report{Info: map[string]map[string]string{}, Skipped: map[string]string{}, Nested: true}
	for _, line := range []string{
		sample.FormatInfo(RowRFloop, benchkit.Field{Key: "skipped", Value: "no loop"}),
		sample.FormatInfo(RowRFtun, benchkit.Field{Key: "vhost", Value: "vhost:on"}),
		sample.FormatInfo("", benchkit.Field{Key: "kernel", Value: "6.1"}),
	} {
		in, ok, err := sample.ParseInfo(line)
		if !ok || err != nil {
			t.Fatalf("%q: %v %v", line, ok, err)
		}
		addInfo(rep, in)
	}
	rep.Samples = []sample.Sample{{Row: RowRFtun, Test: sample.Stream, Run: 1, Gbps: 2}, {Row: RowQEMUVhost, Test: sample.Stream, Run: 1, Gbps: 1}}
	fill(rep)
	if rep.Skipped[RowRFloop] != "no loop" || rep.Info[RowRFtun]["vhost"] != "vhost:on" || rep.Info[""]["kernel"] != "6.1" {
		t.Errorf("skipped %v info %v", rep.Skipped, rep.Info)
	}
	if len(rep.Ratios) != 3 || rep.Ratios[0].Name != "rfloop/host" || rep.Ratios[1].Throughput != 2 || rep.Ratios[2].Name != "uplink/slirp" {
		t.Errorf("ratios %+v", rep.Ratios)
	}
}
