package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/lifecycle/qemu"
	"rainforest/bench/lifecycle/report"
	"rainforest/bench/lifecycle/sample"
	"rainforest/images"
	"rainforest/internal/nested"
	"rainforest/vmm"
)

func TestScript(t *testing.T) {
	p := &sessionPlan{runs: 5, memoryMiB: 256, runTimeout: 5 * time.Minute}
	s := p.script(sessionPaths{
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
	if strings.Contains(s, "-systems") || strings.Contains(s, "qemu") || strings.Contains(s, "-memory-step-mib") {
		t.Errorf("QEMU or memory steps in a plan without them:\n%s", s)
	}
}

// TestScriptQEMU: with QEMU, the one measurer times both systems, QEMU's
// command after "--": the subOS's kernel, initramfs and memory, one vCPU
// of two on the subOS's core, a virtio-mem device of the step, both on
// hugepages.
func TestScriptQEMU(t *testing.T) {
	p := &sessionPlan{runs: 3, memoryMiB: 256, memoryStepMiB: 512, runTimeout: time.Minute, qemuCPU: "host", pin: true}
	s := p.script(sessionPaths{
		rfm: "/bin/rfm", measurer: "/bin/rflifecycle", kernel: "/l2/vmlinux", initrd: "/l2/initramfs.cpio.gz",
		qemu: "/usr/bin/qemu-system-x86_64", qemuData: "/usr/share/qemu", work: "/tmp/rf-bench", hkCores: "0",
	})
	measure := p.commands["measure"]
	for _, want := range []string{"-memory-step-mib 512", "-systems rfm,qemu", "-qmp /tmp/rf-bench/qmp.sock", "-online-cores 2", "-resize"} {
		if !strings.Contains(measure, want) {
			t.Errorf("measurer lacks %q: %s", want, measure)
		}
	}
	q := p.commands["qemu"]
	for _, want := range []string{
		"taskset -c 1 /usr/bin/qemu-system-x86_64 -M pc,memory-backend=ram -enable-kvm -cpu host -smp 1,maxcpus=2 -m 256M,maxmem=768M",
		"-object memory-backend-file,id=ram,size=256M,mem-path=/dev/hugepages,prealloc=on",
		"-object memory-backend-file,id=vmem0mem,size=512M,mem-path=/dev/hugepages,reserve=off",
		"-device virtio-mem-pci,id=vmem0,memdev=vmem0mem,requested-size=0",
		"-serial stdio -L /usr/share/qemu", "-qmp unix:/tmp/rf-bench/qmp.sock,server=on,wait=off",
		"-kernel /l2/vmlinux -initrd /l2/initramfs.cpio.gz -append ",
	} {
		if !strings.Contains(q, want) {
			t.Errorf("qemu command lacks %q: %s", want, q)
		}
	}
	if !strings.Contains(s, measure+" -- "+q+"\n") {
		t.Errorf("the script does not run the measurer with QEMU's command:\n%s", s)
	}
	// The guest: rfm's VMM's command line with hotplug memory, the
	// guest's command, no agent; no marker in it.
	cl := qemuCmdline()
	if !strings.HasPrefix(cl, vmm.DefaultCmdline()) || !strings.HasSuffix(cl, " memhp_default_state=online_movable") ||
		!strings.Contains(cl, ` rf.agent=0 rf.cmd="`+qemu.GuestCommand(qemu.CPUOnlineFile, guestFifo)+`"`) {
		t.Errorf("guest command line %q", cl)
	}
	for _, m := range []string{images.InitReachedMarker, qemu.MarkerReady, qemu.MarkerCPUOnline} {
		if strings.Contains(cl, m) {
			t.Errorf("the command line holds %s", m)
		}
	}
	steps := p.qemuSteps()
	for _, op := range report.Operations() {
		if steps[op] == "" {
			t.Errorf("no description of QEMU's %s: %v", op, steps)
		}
	}

	// Without pinning (directly on a host) and without memory steps.
	p = &sessionPlan{runs: 1, memoryMiB: 256, runTimeout: time.Minute, qemuCPU: "host"}
	p.script(sessionPaths{rfm: "r", measurer: "m", kernel: "k", qemu: "q", qemuData: "d", work: "/w"})
	if q := p.commands["qemu"]; strings.Contains(q, "taskset") || strings.Contains(q, "virtio-mem") || !strings.Contains(q, "-m 256M -object") {
		t.Errorf("qemu command %s", q)
	}
	if m := p.commands["measure"]; strings.Contains(m, "-online-cores") || strings.Contains(m, "-memory-step") {
		t.Errorf("measurer %s", m)
	}
	if steps := p.qemuSteps(); strings.Contains(steps["cpu online"], "pinned") || steps["memory online"] != "" {
		t.Errorf("steps %v", steps)
	}
}

// TestNestedSizing: L1's hugepages hold one guest and its memory step
// with room to spare; the guests' cores are L1's.
func TestNestedSizing(t *testing.T) {
	const memoryMiB, stepMiB = 256, 512
	if need := (memoryMiB + stepMiB) / 2; nestedHugePages < need+16 {
		t.Errorf("%d hugepages for a guest needing %d", nestedHugePages, need)
	}
	if nestedMemoryMiB-2*nestedHugePages < 1536 {
		t.Errorf("%d MiB of L1 RAM left besides the hugepages", nestedMemoryMiB-2*nestedHugePages)
	}
	if onlineCore >= nestedCPUs || guestCore == 0 || guestCore == onlineCore {
		t.Errorf("cores %d and %d of %d", guestCore, onlineCore, nestedCPUs)
	}
}

func TestFillReport(t *testing.T) {
	rep := &report.Report{Nested: true, Samples: []sample.Sample{
		{System: "lxc", Run: 1, CreateInit: time.Second},
		{System: "qemu", Run: 1, CreateInit: 4 * time.Second, MemOnline: time.Second, MemOffline: time.Second},
		{System: "rfm", Run: 1, CreateInit: 3 * time.Second, MemOnline: time.Second, MemOffline: 2 * time.Second},
	}}
	fillReport(rep)
	if len(rep.Summaries) != 3 || rep.Summaries[0].System != "rfm" || rep.Summaries[1].System != "qemu" || rep.Summaries[2].System != "lxc" {
		t.Errorf("summaries %+v", rep.Summaries)
	}
	if len(rep.Ratios) == 0 || rep.Ratios[0] != (report.Ratio{System: "rfm", Against: "qemu", Op: report.OpCreate, Median: 0.75, P99: 0.75, Max: 0.75}) {
		t.Errorf("ratios %+v", rep.Ratios)
	}
	notes := strings.Join(rep.Notes, "\n")
	if !strings.Contains(notes, "only indicative") || !strings.Contains(notes, "natively") {
		t.Errorf("notes lack the nested caveat:\n%s", notes)
	}
	if strings.Contains(notes, "not measured yet") || !strings.Contains(notes, "libvirtd") || !strings.Contains(notes, "only a limit change") {
		t.Errorf("notes:\n%s", notes)
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
	if err := finish(rep, collect, 3, []string{"rfm"}, silent); !errors.Is(err, nested.ErrSilent) {
		t.Fatalf("finish: %v", err)
	}
	if !rep.Partial || !strings.Contains(rep.SessionError, "silent for 1m0s") || len(rep.Samples) != 3 || rep.Samples[0].System != "rfm" {
		t.Errorf("report: partial %v %q, samples %+v", rep.Partial, rep.SessionError, rep.Samples)
	}
	// QEMU's row is there, empty.
	if len(rep.Summaries) != 3 || rep.Summaries[0].OK != 1 || rep.Summaries[0].Failed != 1 || rep.Summaries[1].System != "qemu" || rep.Summaries[1].OK != 0 {
		t.Errorf("summaries %+v", rep.Summaries)
	}

	// A complete session with a failed cycle is not partial.
	rep = &report.Report{}
	if err := finish(rep, collect, 2, []string{"rfm"}, nil); err == nil || rep.Partial || !strings.Contains(err.Error(), "rfm run 2 failed") {
		t.Errorf("complete session: %v, partial %v", err, rep.Partial)
	}
	// A session that ended without all of QEMU's cycles.
	rep = &report.Report{}
	if err := finish(rep, collect, 2, []string{"rfm", "qemu"}, nil); err == nil || !strings.Contains(err.Error(), "qemu: got 0 results, want 2") {
		t.Errorf("QEMU missing: %v", err)
	}
}
