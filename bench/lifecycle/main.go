// Command lifecycle is RainForest's lifecycle benchmark (make bench), the
// paper's Table 4: side by side in one run, it measures for rfm subOSes,
// QEMU/KVM guests and LXC containers the create and destroy latency over
// repeated cycles, and in each cycle, on the running instance, a CPU
// resize (one core more: CPU online; and back: CPU offline) and a memory
// resize (-memory-step-mib more, 512 MiB by default: memory online; and
// back: memory offline). It reports per system and operation the median,
// 99th percentile and maximum, and rfm's ratios to QEMU's (and LXC's).
// -n 100 gives the paper's 100 repetitions.
//
// rfm: `rfm serve` runs with the measurer rflifecycle
// (bench/lifecycle/cmd/rflifecycle) as its API client, from one script
// that internal/kvmhost runs: where this host's KVM cannot run Linux
// guests (nested.Needed), inside one nested L1 guest (3 vCPUs: core 0
// housekeeping, guests on the others), otherwise on this host. The CPU
// and memory resizes are POST /v1/subos/{name}/resize (what `rfm resize
// NAME --cpus N` and `--memory SIZE` send), the memory through the
// subOS's virtio-mem device (created with max_memory = memory + step).
//
// QEMU: the VM rows run where the subOSes run, measured by the same
// rflifecycle in the same script, its cycles alternating with rfm's: a
// QEMU guest (pc machine) with the subOS's kernel, initramfs, memory and
// core, driven over QMP (bench/lifecycle/qemu) rather than libvirt,
// which the nested L1 guest does not have.
//
// The measurer's result lines are parsed as they arrive: each cycle is
// shown when measured, and a session that dies still prints and saves
// what it measured, marked partial.
//
// LXC: always on this host (L0), with lxc-create -t busybox, lxc-start,
// lxc-attach, lxc-cgroup, lxc-stop and lxc-destroy (bench/lifecycle/lxc).
// LXC is not run inside L1: that would need LXC's userspace, templates
// and cgroup setup in the L1 initramfs.
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
	"rainforest/bench/lifecycle/qemu"
	"rainforest/bench/lifecycle/report"
	"rainforest/bench/lifecycle/sample"
	"rainforest/bench/lifecycle/subos"
	"rainforest/internal/kvmhost"
)

// options are the command-line settings.
type options struct {
	benchkit.Common
	lxc           bool
	qemuGuests    bool
	qemu          string
	qemuCPU       string
	memoryMiB     int
	memoryStepMiB int
	timeout       time.Duration
	runTimeout    time.Duration
	verbose       bool
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "lifecycle", 5, "create/destroy cycles per system")
	flag.BoolVar(&o.lxc, "lxc", true, "measure LXC containers too")
	flag.BoolVar(&o.qemuGuests, "qemu-guests", true, "measure QEMU/KVM guests too")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary measured (and, nested, the one running L1)")
	flag.StringVar(&o.qemuCPU, "qemu-cpu", "host", "the -cpu model of the measured QEMU")
	flag.IntVar(&o.memoryMiB, "memory-mib", 256, "guest RAM, MiB (2 MiB hugepages)")
	flag.IntVar(&o.memoryStepMiB, "memory-step-mib", 512, "memory online/offline step, MiB (a multiple of 2; 0: no memory rows)")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole nested session (default 5m + 2m per cycle and VM system)")
	flag.DurationVar(&o.runTimeout, "run-timeout", 5*time.Minute, "bound on each of one cycle's waits")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole L1 console (QEMU guests' consoles included) to stderr")
	flag.Parse()
	if o.Runs < 1 || o.memoryMiB < 2 || o.memoryStepMiB < 0 || o.memoryStepMiB%2 != 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: lifecycle [-n runs] [-json file] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/lifecycle", func(ctx context.Context) (*report.Report, error) { return run(ctx, o, os.Stderr) }, report.WriteTable, o.JSONPath)
}

// systems are the systems measured where rfm runs.
func (o options) systems() []string {
	if o.qemuGuests {
		return []string{subos.System, qemu.System}
	}
	return []string{subos.System}
}

// run measures LXC and then rfm and QEMU and returns the report. A report
// with failed samples comes with an error; so does one whose session
// ended early, holding the samples measured before and marked partial.
func run(ctx context.Context, o options, log io.Writer) (*report.Report, error) {
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-lifecycle-", "rainforest/cmd/rfm", "rainforest/bench/lifecycle/cmd/rflifecycle")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	img, need, why := ws.Image, ws.Nested, ws.Why
	bins := binaries{rfm: ws.Binaries[0], measurer: ws.Binaries[1]}
	guest := fmt.Sprintf("subOS and QEMU guest: 1 core (2 at most), %d MiB on 2 MiB hugepages", o.memoryMiB)
	if o.memoryStepMiB > 0 {
		guest += fmt.Sprintf(" + %d MiB of virtio-mem hotplug memory", o.memoryStepMiB)
	}
	rep := &report.Report{
		Settings: map[string]string{}, Nested: need, HostReason: why, Runs: o.Runs,
		Guest:    guest + fmt.Sprintf(", default image (kernel %s); container: busybox template, no network", img.KernelVersion),
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

	plan := &sessionPlan{runs: o.Runs, memoryMiB: o.memoryMiB, memoryStepMiB: o.memoryStepMiB, runTimeout: o.runTimeout,
		pin: need, echo: o.verbose}
	if o.qemuGuests {
		plan.qemuCPU = o.qemuCPU
	} else {
		rep.Skipped[qemu.System] = "-qemu-guests=false"
	}
	h := &kvmhost.Host{Nested: need, Why: why, L1: img, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	where := nestedSetting
	if need {
		fmt.Fprintf(log, "bench/lifecycle: %s; measuring %s inside the nested L1 guest\n", why, strings.Join(o.systems(), " and "))
	} else {
		fmt.Fprintf(log, "bench/lifecycle: %s; measuring %s directly on this host\n", why, strings.Join(o.systems(), " and "))
		where = "directly on this host: " + why
	}
	for _, sys := range o.systems() {
		rep.Settings[sys] = where
	}
	collect := &benchkit.Collector[sample.Sample]{Parse: sample.ParseLine,
		Progress: func(s sample.Sample, n int) { progress(log, s, n, o.Runs*len(o.systems())) }}
	err = runSession(ctx, o, plan, h, img, bins, ws.Dir, func(line string) {
		if info, ok := strings.CutPrefix(line, infoPrefix+" "); ok {
			fmt.Fprintf(log, "bench/lifecycle: session started: %s\n", info)
		}
		collect.Line(line)
	})
	rep.Commands[subos.System] = rfmCommands(plan)
	if o.qemuGuests {
		rep.Commands[qemu.System] = plan.qemuSteps()
	}
	return rep, finish(rep, collect, o.Runs, o.systems(), err)
}

// rfmCommands are the supervisor's and the measurer's command lines.
func rfmCommands(p *sessionPlan) map[string]string {
	return map[string]string{"serve": p.commands["serve"], "measure": p.commands["measure"]}
}

// progress shows one cycle's sample as it arrives.
func progress(log io.Writer, s sample.Sample, n, total int) {
	if !s.OK() {
		fmt.Fprintf(log, "bench/lifecycle: [%d/%d] %s cycle %d failed: %s\n", n, total, s.System, s.Run, benchkit.ShortenError(s.Error))
		return
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	resize := ""
	if s.CPUOnline > 0 {
		resize = fmt.Sprintf(", cpu online %.1f ms, offline %.1f ms", ms(s.CPUOnline), ms(s.CPUOffline))
	}
	if s.MemOnline > 0 {
		resize += fmt.Sprintf(", memory online %.1f ms, offline %.1f ms", ms(s.MemOnline), ms(s.MemOffline))
	}
	fmt.Fprintf(log, "bench/lifecycle: [%d/%d] %s cycle %d: create->init %.1f ms (returned %.1f ms)%s, destroy %.1f ms (returned %.1f ms)\n",
		n, total, s.System, s.Run, ms(s.CreateInit), ms(s.CreateReturn), resize, ms(s.Destroy), ms(s.DestroyReturn))
}

// finish adds the samples of the session (rfm's and QEMU's) that arrived
// to rep (before LXC's) and returns the run's error: the session's, when
// it ended early (rep is then marked partial), samples missing, or a
// failed sample.
func finish(rep *report.Report, collect *benchkit.Collector[sample.Sample], runs int, systems []string, sessionErr error) error {
	got, perrs := collect.Results()
	rep.Samples = append(got, rep.Samples...)
	for _, e := range perrs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	fillReport(rep)
	if sessionErr != nil {
		rep.MarkPartial(fmt.Errorf("session: %w", sessionErr))
		return fmt.Errorf("session: %w", sessionErr)
	}
	for _, sys := range systems {
		n := 0
		for _, s := range got {
			if s.System == sys {
				n++
			}
		}
		if n != runs {
			return fmt.Errorf("%s: got %d results, want %d", sys, n, runs)
		}
	}
	for _, s := range rep.Samples {
		if !s.OK() {
			return fmt.Errorf("%s run %d failed", s.System, s.Run)
		}
	}
	return nil
}

// fillReport adds summaries, ratios and notes.
func fillReport(rep *report.Report) {
	rep.Summaries = report.Summarize(rep.Samples, subos.System, qemu.System, lxc.System)
	rep.Ratios = report.Ratios(rep.Summaries, subos.System, qemu.System, lxc.System)
	rep.Notes = append(rep.Notes,
		"rfm create: POST /v1/subos until RF-INIT-REACHED (the guest's /init) is in the subOS log (polled every 5 ms); "+
			"create return: until the API call returned (the VMM runs); destroy: DELETE until the supervisor lists no subOS "+
			"(its cores are free in the ledger); destroy return: until the DELETE returned",
		"qemu create: from starting the QEMU process until RF-INIT-REACHED on its serial console (the same /init line); "+
			"create return: until its QMP socket answered and capabilities were negotiated (polled every 20 ms); "+
			"destroy: QMP quit until the QEMU process exited; destroy return: until QEMU answered quit",
		"rfm cpu online/offline: POST /v1/subos/{name}/resize from 1 core to 2 and back, once its agent is healthy, until "+
			"the call returned: cgroup cpuset, vCPU thread pinning and the guest's CPU online/offline through its agent all done "+
			"(the subOS's second vCPU exists from boot, kept offline: no ACPI CPU hotplug)",
		"qemu cpu online: QMP device_add of a vCPU (ACPI CPU hotplug; -smp 1,maxcpus=2) and the new vCPU thread pinned to the "+
			"second core (as libvirt pins a vCPU it adds), until the guest's command, which checks every 5 ms for the CPU's "+
			"sysfs online file, wrote 1 to it and said so on the console; qemu cpu offline: QMP device_del until DEVICE_DELETED "+
			"of the vCPU or its APIC (the guest kernel took the CPU offline and ejected it, QEMU removed it)",
		"rfm memory online/offline: POST /v1/subos/{name}/resize {\"memory\": N} (rfm resize --memory) from the subOS's "+
			"memory to one step more and back, once its agent is healthy, until the call returned: ledger and hugepage pool, "+
			"then the guest plugged (unplugged) the step through the subOS's virtio-mem device, its blocks onlined (offlined) "+
			"by the guest kernel (memhp_default_state=online_movable)",
		"qemu memory online/offline: QMP qom-set of the virtio-mem device's requested-size to the step and back to 0, until "+
			"its size (what the guest has plugged) got there, at QEMU's stamp of the MEMORY_DEVICE_SIZE_CHANGE event saying "+
			"so (QEMU delays that event up to 1 s, rate-limited, but stamps it when the size changed; nothing polls QEMU "+
			"meanwhile); same guest kernel and memhp_default_state; the base RAM and the virtio-mem region on 2 MiB hugepages",
		"lxc create: lxc-create -t busybox + lxc-start -d until lxc-attach -- true succeeds; create return: until "+
			"lxc-start -d returned; destroy: lxc-stop -k + lxc-destroy; destroy return: until lxc-stop -k returned; "+
			"cpu online/offline: lxc-cgroup cpuset.cpus from one CPU to two and back; memory online/offline: lxc-cgroup of "+
			"the memory limit (memory.limit_in_bytes on cgroup v1, memory.max on v2) one step up and back: for a container "+
			"this is only a limit change, nothing is plugged",
		"QEMU/KVM is driven over QMP, not through libvirt with go-libvirt as the issue asks: go-libvirt talks to libvirtd, "+
			"which the nested L1 guest (a busybox initramfs, where the VM rows run beside the subOSes) does not have; "+
			"device_add/device_del of a vCPU and qom-set of virtio-mem's requested-size are what libvirt's "+
			"DomainSetVcpusFlags and virtio-mem size update issue to QEMU")
	if rep.Nested {
		rep.Notes = append(rep.Notes, "rfm and QEMU run in the nested layer here (L1 = QEMU TCG with emulated AMD-V, every "+
			"guest instruction emulated in software) while LXC runs natively on this host, so the comparison with LXC is "+
			"only indicative on this machine; absolute rfm and QEMU times here are not those of real VT-x/AMD-V hardware, "+
			"but both share the same layer, cores and run",
			"cores in L1: the subOS gets core 1 and, grown, core 2; QEMU runs on core 1 (taskset) and its hot-added vCPU is "+
				"pinned to core 2")
	}
}
