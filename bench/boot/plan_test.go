package main

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"rainforest/bench/boot/measure"
	"rainforest/bench/boot/report"
	"rainforest/bench/boot/wakeups"
	"rainforest/bench/internal/benchkit"
	"rainforest/internal/nested"
)

func TestScript(t *testing.T) {
	p := &benchPlan{runs: 2, runTimeout: time.Minute, qemuCPU: "host"}
	s := p.script(vmmPaths{rfbench: "/bin/rfbench", rfm: "/bin/rfm", qemu: "/usr/bin/qemu-system-x86_64",
		qemuData: "/usr/share/qemu", kernel: "/l2/vmlinux", initrd: "/l2/initrd", hugetlbfs: "/dev/hugepages"})
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var runs []string
	for _, l := range lines {
		if strings.HasPrefix(l, "/bin/rfbench ") {
			f := strings.Fields(l)
			runs = append(runs, f[2]+f[4])
		}
	}
	if strings.Join(runs, " ") != "rfm1 qemu1 qemu2 rfm2" {
		t.Fatalf("run order %v in\n%s", runs, s)
	}
	if !strings.Contains(s, " -idle-after RF-MEMTOTAL-KB -idle-delay 3s -idle-window 10s -- ") {
		t.Errorf("no idle window in\n%s", s)
	}
	quoted := "'" + cmdline + "'"
	for _, name := range []string{vmmRFM, vmmQEMU} {
		c := p.commands[name]
		if !strings.Contains(c, quoted) || !strings.Contains(c, "/l2/vmlinux") || !strings.Contains(c, "/l2/initrd") {
			t.Errorf("%s command %q lacks the shared kernel, initrd or cmdline", name, c)
		}
	}
	for _, want := range []string{"--page-size 2M", "--memory 512M", "--cores 0-1"} {
		if !strings.Contains(p.commands[vmmRFM], want) {
			t.Errorf("rfm command lacks %q", want)
		}
	}
	for _, want := range []string{"-M microvm,acpi=on,memory-backend=ram", "-enable-kvm", "-smp 2", "-m 512M",
		"mem-path=/dev/hugepages,prealloc=on", "-nodefaults", "-no-user-config", "-nographic", "-serial stdio", "-L /usr/share/qemu", "-name bench,debug-threads=on"} {
		if !strings.Contains(p.commands[vmmQEMU], want) {
			t.Errorf("qemu command lacks %q", want)
		}
	}
}

// TestSessionKeepsWhatCompleted feeds a session's lines as they would
// stream from L1 and ends it like an L1 that went silent during the third
// boot: each sample is shown when its line arrives, and the report keeps
// them, marked partial, with the session's error.
func TestSessionKeepsWhatCompleted(t *testing.T) {
	var log strings.Builder
	s := newSession(&log, 2, true)
	ok := measure.Sample{VMM: vmmRFM, Run: 1, Init: 1500 * time.Millisecond, Status: measure.ProcStatus{VmRSS: 4096, VmHWM: 5120, HugetlbPages: 512 * 1024},
		Idle: &wakeups.Window{Duration: 10 * time.Second, Threads: []wakeups.Count{
			{TID: 7, Name: "rfm", Voluntary: 1000, BlockedIn: map[string]int{"nanosleep 10ms": 10}},
			{TID: 9, Name: "vcpu0", VCPU: true, Voluntary: 50},
		}}}
	stream := []string{
		infoPrefix + " kernel=6.1.0-test cpus=2 hugepages_free=300",
		"QEMU emulator version 7.2.0",
		measure.FormatLine(ok),
		"[rfm#1] noise",
		measure.FormatLine(measure.Sample{VMM: vmmQEMU, Run: 1, Init: 900 * time.Millisecond, Status: measure.ProcStatus{VmRSS: 20480}}),
		measure.LinePrefix + " vmm=rfm run=x",
	}
	for i, l := range stream {
		s.line(l)
		if i == 2 && !strings.Contains(log.String(), "bench/boot: [1/4] rfm run 1: /init after 1500.0 ms, VmRSS 4.0 MiB (VmHWM 5.0 MiB); idle wake-ups/s: VMM threads 100.0, vCPU threads 5.0\n"+
			"bench/boot:     tid 7 \"rfm\": 100.0/s (1000 voluntary, 0 not); blocked in: nanosleep 10ms 10/10\n"+
			"bench/boot:     tid 9 \"vcpu0\": 5.0/s (50 voluntary, 0 not)\n") {
			t.Fatalf("no progress line after the first sample:\n%s", log.String())
		}
	}
	if !strings.Contains(log.String(), "bench/boot: session started: kernel=6.1.0-test cpus=2 hugepages_free=300\n") {
		t.Errorf("the session's start is not shown:\n%s", log.String())
	}
	silent := fmt.Errorf("kvmhost: %w for 1m0s", nested.ErrSilent)
	rep := &report.Report{Runs: 2}
	if err := s.finish(rep, silent); !errors.Is(err, nested.ErrSilent) {
		t.Fatalf("finish: %v", err)
	}
	if !rep.Partial || rep.SessionError != silent.Error() || len(rep.Samples) != 2 || len(rep.Summaries) != 2 || rep.Ratios == nil {
		t.Errorf("report: partial %v %q, %d samples, %d summaries", rep.Partial, rep.SessionError, len(rep.Samples), len(rep.Summaries))
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "unparsed result line") {
		t.Errorf("the bad line is not noted: %q", rep.Notes)
	}
	var table strings.Builder
	if err := benchkit.WriteReport(&table, rep, report.WriteTable, ""); err != nil || !strings.HasPrefix(table.String(), "PARTIAL: the session ended early") {
		t.Errorf("table (%v):\n%s", err, table.String())
	}

	// One that ends after the first sample: no ratios, the other VMM's
	// row says it has nothing.
	s = newSession(io.Discard, 2, false)
	s.line(measure.FormatLine(ok))
	rep = &report.Report{Runs: 2}
	if err := s.finish(rep, silent); err == nil || rep.Ratios != nil {
		t.Errorf("one sample: %v, ratios %+v", err, rep.Ratios)
	}
	table.Reset()
	report.WriteTable(&table, rep)
	if !regexp.MustCompile(`(?m)^ +qemu +0/0 +- +-`).MatchString(table.String()) || regexp.MustCompile(`(?m)^ +rfm/qemu `).MatchString(table.String()) {
		t.Errorf("table of one sample:\n%s", table.String())
	}

	// A session that ends before anything was measured still reports.
	rep = &report.Report{Runs: 2}
	if err := newSession(io.Discard, 2, false).finish(rep, silent); err == nil || !rep.Partial || len(rep.Samples) != 0 {
		t.Errorf("empty session: %v, %+v", err, rep)
	}
	if err := report.WriteTable(io.Discard, rep); err != nil {
		t.Errorf("table of nothing: %v", err)
	}

	// A complete session with every sample.
	s = newSession(io.Discard, 1, false)
	s.line(measure.FormatLine(ok))
	s.line(measure.FormatLine(measure.Sample{VMM: vmmQEMU, Run: 1, Init: time.Second}))
	rep = &report.Report{Runs: 1}
	if err := s.finish(rep, nil); err != nil || rep.Partial {
		t.Errorf("complete session: %v, partial %v", err, rep.Partial)
	}
}
