// Command lifecycle is RainForest's subOS lifecycle benchmark (make bench),
// the CPU rows of the paper's Table 4: it measures subOS create and
// destroy latency through the supervisor's API over repeated cycles, and
// in each cycle a CPU resize of the running subOS (one core more: CPU
// online; and back: CPU offline, POST /v1/subos/{name}/resize), and, side
// by side in the same session, LXC container create, destroy and cpuset
// resize (lxc-cgroup) on the same machine. -n 100 gives the paper's 100
// repetitions.
//
// rfm: `rfm serve` runs with the measurer rflifecycle
// (bench/lifecycle/cmd/rflifecycle) as its API client, from one script
// that internal/kvmhost runs: where this host's KVM cannot run Linux
// guests (nested.Needed), inside one nested L1 guest (3 vCPUs: core 0
// housekeeping, subOSes on the others), otherwise on this host. The
// measurer's result lines are parsed as they arrive: each cycle is shown
// when measured, and a session that dies still prints and saves what it
// measured, marked partial.
//
// LXC: always on this host (L0), with lxc-create -t busybox, lxc-start,
// lxc-attach, lxc-stop and lxc-destroy (bench/lifecycle/lxc). LXC is not
// run inside L1: that would need LXC's userspace, templates and cgroup
// setup in the L1 initramfs.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/lifecycle/lxc"
	"rainforest/bench/lifecycle/report"
	"rainforest/bench/lifecycle/sample"
	"rainforest/bench/lifecycle/subos"
	"rainforest/internal/kvmhost"
)

// options are the command-line settings.
type options struct {
	benchkit.Common
	lxc        bool
	qemu       string
	memoryMiB  int
	timeout    time.Duration
	runTimeout time.Duration
	verbose    bool
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "lifecycle", 5, "create/destroy cycles per system")
	flag.BoolVar(&o.lxc, "lxc", true, "measure LXC containers too")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary running the nested L1 guest")
	flag.IntVar(&o.memoryMiB, "memory-mib", 256, "subOS RAM, MiB (2 MiB hugepages)")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole nested session (default 5m + 2m per cycle)")
	flag.DurationVar(&o.runTimeout, "run-timeout", 5*time.Minute, "bound on one cycle's waits")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole L1 console to stderr")
	flag.Parse()
	if o.Runs < 1 || o.memoryMiB < 2 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: lifecycle [-n runs] [-json file] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/lifecycle", func(ctx context.Context) (*report.Report, error) { return run(ctx, o, os.Stderr) }, report.WriteTable, o.JSONPath)
}

// run measures LXC and then rfm and returns the report. A report with
// failed samples comes with an error; so does one whose rfm session ended
// early, holding the samples measured before and marked partial.
func run(ctx context.Context, o options, log io.Writer) (*report.Report, error) {
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-lifecycle-", "rainforest/cmd/rfm", "rainforest/bench/lifecycle/cmd/rflifecycle")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	img, need, why := ws.Image, ws.Nested, ws.Why
	bins := binaries{rfm: ws.Binaries[0], measurer: ws.Binaries[1]}
	rep := &report.Report{
		Settings: map[string]string{}, Nested: need, HostReason: why, Runs: o.Runs,
		Guest: fmt.Sprintf("subOS: 1 core, %d MiB on 2 MiB hugepages, default image (kernel %s); "+
			"container: busybox template, no network", o.memoryMiB, img.KernelVersion),
		Commands: map[string]map[string]string{}, Skipped: map[string]string{},
		References: []report.Reference{report.PaperTable4()}, Date: time.Now().UTC().Format(time.RFC3339),
	}

	// LXC first: it takes seconds, and then the machine is left to L1.
	if o.lxc {
		rep.Settings[lxc.System] = "natively on this host (L0); LXC is not run inside the nested L1 guest " +
			"(that would need LXC's userspace, templates and cgroup setup in L1's initramfs)"
		samples, cmds, err := runLXC(ctx, o, ws.Dir, log)
		if err != nil {
			rep.Skipped[lxc.System] = err.Error()
			fmt.Fprintf(log, "bench/lifecycle: LXC skipped: %v\n", err)
		}
		rep.Samples = append(rep.Samples, samples...)
		if cmds != nil {
			rep.Commands[lxc.System] = cmds
		}
	} else {
		rep.Skipped[lxc.System] = "-lxc=false"
	}

	plan := &rfmPlan{runs: o.Runs, memoryMiB: o.memoryMiB, runTimeout: o.runTimeout}
	h := &kvmhost.Host{Nested: need, Why: why, L1: img, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	if need {
		fmt.Fprintf(log, "bench/lifecycle: %s; measuring rfm inside the nested L1 guest\n", why)
		rep.Settings[subos.System] = nestedSetting
	} else {
		fmt.Fprintf(log, "bench/lifecycle: %s; measuring rfm directly on this host\n", why)
		rep.Settings[subos.System] = "directly on this host: " + why
	}
	collect := &benchkit.Collector[sample.Sample]{Parse: sample.ParseLine, Progress: func(s sample.Sample, n int) { progress(log, s, n, o.Runs) }}
	err = runSession(ctx, o, plan, h, img, bins, ws.Dir, func(line string) {
		if info, ok := strings.CutPrefix(line, infoPrefix+" "); ok {
			fmt.Fprintf(log, "bench/lifecycle: session started: %s\n", info)
		}
		collect.Line(line)
	})
	rep.Commands[subos.System] = plan.commands
	return rep, finish(rep, collect, o.Runs, err)
}

// progress shows one cycle's sample as it arrives.
func progress(log io.Writer, s sample.Sample, n, runs int) {
	if !s.OK() {
		fmt.Fprintf(log, "bench/lifecycle: [%d/%d] %s cycle %d failed: %s\n", n, runs, s.System, s.Run, benchkit.ShortenError(s.Error))
		return
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	resize := ""
	if s.CPUOnline > 0 {
		resize = fmt.Sprintf(", cpu online %.1f ms, offline %.1f ms", ms(s.CPUOnline), ms(s.CPUOffline))
	}
	fmt.Fprintf(log, "bench/lifecycle: [%d/%d] %s cycle %d: create->init %.1f ms (returned %.1f ms)%s, destroy %.1f ms (returned %.1f ms)\n",
		n, runs, s.System, s.Run, ms(s.CreateInit), ms(s.CreateReturn), resize, ms(s.Destroy), ms(s.DestroyReturn))
}

// finish adds the rfm samples that arrived to rep (before LXC's) and
// returns the run's error: the session's, when it ended early (rep is
// then marked partial), rfm samples missing, or a failed sample.
func finish(rep *report.Report, collect *benchkit.Collector[sample.Sample], runs int, sessionErr error) error {
	rfmSamples, perrs := collect.Results()
	rep.Samples = append(rfmSamples, rep.Samples...)
	for _, e := range perrs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	fillReport(rep)
	if sessionErr != nil {
		rep.MarkPartial(fmt.Errorf("rfm: %w", sessionErr))
		return fmt.Errorf("rfm: %w", sessionErr)
	}
	if len(rfmSamples) != runs {
		return fmt.Errorf("rfm: got %d results, want %d", len(rfmSamples), runs)
	}
	for _, s := range rep.Samples {
		if !s.OK() {
			return fmt.Errorf("%s run %d failed", s.System, s.Run)
		}
	}
	return nil
}

// fillReport adds summaries and notes.
func fillReport(rep *report.Report) {
	rep.Summaries = report.Summarize(rep.Samples, subos.System, lxc.System)
	rep.Notes = append(rep.Notes,
		"rfm create->init: POST /v1/subos until RF-INIT-REACHED (the guest's /init) is in the subOS log; "+
			"create return: until the API call returned (the VMM runs); destroy: DELETE until the supervisor lists no subOS "+
			"(its cores are free in the ledger); destroy return: until the DELETE returned",
		"rfm cpu online/offline: POST /v1/subos/{name}/resize from 1 core to 2 and back, once its agent is healthy, until "+
			"the call returned: cgroup cpuset, vCPU thread pinning and the guest's CPU online/offline through its agent all done; "+
			"lxc cpu online/offline: lxc-cgroup cpuset.cpus from one CPU to two and back",
		"not measured yet: Table 4's memory online/offline (virtio-mem resize is not wired), and QEMU/KVM through libvirt",
		"lxc create->init: lxc-create -t busybox + lxc-start -d until lxc-attach -- true succeeds; create return: until "+
			"lxc-start -d returned; destroy: lxc-stop -k + lxc-destroy; destroy return: until lxc-stop -k returned")
	if rep.Nested {
		rep.Notes = append(rep.Notes, "rfm runs in the nested layer here (L1 = QEMU TCG with emulated AMD-V, every guest "+
			"instruction emulated in software) while LXC runs natively on this host, so the rfm/LXC comparison is only "+
			"indicative on this machine; absolute rfm times here are not those of real VT-x/AMD-V hardware")
	}
}
