package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/lifecycle/report"
	"rainforest/bench/lifecycle/sample"
	"rainforest/internal/nested"
)

func TestScript(t *testing.T) {
	p := &rfmPlan{runs: 5, memoryMiB: 256, runTimeout: 5 * time.Minute}
	s := p.script(rfmPaths{
		rfm: "/bin/rfm", measurer: "/bin/rflifecycle", kernel: "/l2/vmlinux", initrd: "/l2/initramfs.cpio.gz",
		work: "/tmp/rf-bench", hkCores: "0",
	})
	for _, want := range []string{
		"mount -t cgroup2 cgroup2 /sys/fs/cgroup",
		"mkdir -p /tmp/rf-bench\n",
		"/bin/rfm serve --socket /tmp/rf-bench/rfm.sock --state-dir /tmp/rf-bench/state --run-dir /tmp/rf-bench/run --housekeeping 0 >/tmp/rf-bench/serve.log 2>&1 &",
		"/bin/rflifecycle -socket /tmp/rf-bench/rfm.sock -n 5 -kernel /l2/vmlinux -initrd /l2/initramfs.cpio.gz -cpus 1 -memory-mib 256 -marker RF-INIT-REACHED -timeout 5m0s -resize",
		"kill $serve", "exit $st", "tail -n 40 /tmp/rf-bench/serve.log", "tail -n 20 /tmp/rf-bench/run/*.log",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if serve := strings.Index(s, "rfm serve"); serve < 0 || serve > strings.Index(s, "rflifecycle -socket") {
		t.Error("the supervisor does not start before the measurer")
	}
	if p.commands["serve"] == "" || p.commands["measure"] == "" {
		t.Errorf("commands not recorded: %v", p.commands)
	}
}

func TestFillReport(t *testing.T) {
	rep := &report.Report{Nested: true, Samples: []sample.Sample{
		{System: "lxc", Run: 1, CreateInit: time.Second},
		{System: "rfm", Run: 1, CreateInit: 3 * time.Second},
	}}
	fillReport(rep)
	if len(rep.Summaries) != 2 || rep.Summaries[0].System != "rfm" || rep.Summaries[1].System != "lxc" {
		t.Errorf("summaries %+v", rep.Summaries)
	}
	notes := strings.Join(rep.Notes, "\n")
	if !strings.Contains(notes, "only indicative") || !strings.Contains(notes, "natively") {
		t.Errorf("notes lack the nested caveat:\n%s", notes)
	}
	direct := &report.Report{}
	fillReport(direct)
	if strings.Contains(strings.Join(direct.Notes, "\n"), "only indicative") {
		t.Error("nested caveat on a direct run")
	}
}

// TestFinishKeepsWhatCompleted streams the measurer's lines through the
// collector as they would arrive and ends the session like an L1 that went
// silent during the third cycle: the two cycles measured are shown as
// they arrive and kept, with LXC's, in a report marked partial.
func TestFinishKeepsWhatCompleted(t *testing.T) {
	var log strings.Builder
	collect := &benchkit.Collector[sample.Sample]{Parse: sample.ParseLine, Progress: func(s sample.Sample, n int) { progress(&log, s, n, 3) }}
	for i, l := range []string{
		"RF-LIFECYCLE-INFO kernel=6.1.0-test cpus=3",
		sample.FormatLine(sample.Sample{System: "rfm", Run: 1, CreateInit: 3 * time.Second, CreateReturn: time.Second, Destroy: 200 * time.Millisecond}),
		"[    5.1] noise",
		sample.FormatLine(sample.Sample{System: "rfm", Run: 2, Error: "create: boom"}),
	} {
		collect.Line(l)
		if i == 1 && log.String() != "bench/lifecycle: [1/3] rfm cycle 1: create->init 3000.0 ms (returned 1000.0 ms), destroy 200.0 ms (returned 0.0 ms)\n" {
			t.Fatalf("progress after the first cycle: %q", log.String())
		}
	}
	if !strings.Contains(log.String(), "[2/3] rfm cycle 2 failed: create: boom") {
		t.Errorf("progress %q", log.String())
	}
	rep := &report.Report{Samples: []sample.Sample{{System: "lxc", Run: 1, CreateInit: time.Second}}}
	silent := fmt.Errorf("kvmhost: %w for 1m0s", nested.ErrSilent)
	if err := finish(rep, collect, 3, silent); !errors.Is(err, nested.ErrSilent) {
		t.Fatalf("finish: %v", err)
	}
	if !rep.Partial || !strings.Contains(rep.SessionError, "silent for 1m0s") || len(rep.Samples) != 3 || rep.Samples[0].System != "rfm" {
		t.Errorf("report: partial %v %q, samples %+v", rep.Partial, rep.SessionError, rep.Samples)
	}
	if len(rep.Summaries) != 2 || rep.Summaries[0].OK != 1 || rep.Summaries[0].Failed != 1 {
		t.Errorf("summaries %+v", rep.Summaries)
	}

	// A complete session with a failed cycle is not partial.
	rep = &report.Report{}
	if err := finish(rep, collect, 2, nil); err == nil || rep.Partial || !strings.Contains(err.Error(), "rfm run 2 failed") {
		t.Errorf("complete session: %v, partial %v", err, rep.Partial)
	}
}
