package main

import (
	"strings"
	"testing"
	"time"

	"rainforest/bench/lifecycle/report"
	"rainforest/bench/lifecycle/sample"
)

func TestScript(t *testing.T) {
	p := &rfmPlan{runs: 5, memoryMiB: 256, runTimeout: 5 * time.Minute}
	s := p.script(rfmPaths{
		rfm: "/bin/rfm", measurer: "/bin/rflifecycle", kernel: "/l2/vmlinux", initrd: "/l2/initramfs.cpio.gz",
		socket: "/run/rf-bench/rfm.sock", stateDir: "/tmp/s", runDir: "/tmp/r", hkCores: "0",
	})
	for _, want := range []string{
		"mount -t cgroup2 cgroup2 /sys/fs/cgroup",
		"/bin/rfm serve --socket /run/rf-bench/rfm.sock --state-dir /tmp/s --run-dir /tmp/r --housekeeping 0 >/tmp/rf-serve.log 2>&1 &",
		"/bin/rflifecycle -socket /run/rf-bench/rfm.sock -n 5 -kernel /l2/vmlinux -initrd /l2/initramfs.cpio.gz -cpus 1 -memory-mib 256 -marker RF-INIT-REACHED -timeout 5m0s",
		"kill $serve", "exit $st",
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
