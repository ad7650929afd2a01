// Command hotplug is RainForest's hot-plug benchmark (make bench): in one
// session, N times each with the order alternating, it boots a Linux guest
// with rfm (a subOS created through the supervisor, `rfm serve` + `rfm
// create`) and with QEMU (`-M pc`, which like rfm offers ACPI PCI
// hotplug; microvm has none), with the same kernel, initramfs, command
// line, read-only boot disk, one vCPU on the same core and RAM on 2 MiB
// hugepages, and times on the running guest
//
//   - the hot-add of a read-only disk: `rfm attach NAME --disk FILE,ro`
//     through the supervisor, as users do, against QMP device_add of a
//     virtio-blk-pci (its read-only block node added before the clock
//     starts), until the guest, which waits for /dev/vdb, prints that it
//     appeared;
//   - its hot-remove: `rfm detach` against QMP device_del, until the
//     guest prints that /dev/vdb went and the VMM said the device is gone
//     (QEMU's DEVICE_DELETED event; rfm detach returning).
//
// One measurer in the session, rfhotbench (bench/hotplug/cmd/rfhotbench),
// watches both guests' consoles (rfm's console socket, QEMU's serial on
// its stdout) and times every run. Where this host's KVM cannot run Linux
// guests, everything runs inside one nested L1 guest (internal/kvmhost),
// with QEMU copied in (its bundle, plus the pc machine's BIOS). Each result
// is shown as it arrives; a session that dies still prints and saves what
// it measured, marked partial.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"rainforest/bench/hotplug/hotmeasure"
	"rainforest/bench/hotplug/report"
	"rainforest/bench/internal/benchkit"
	"rainforest/internal/kvmhost"
)

// options are the command-line settings.
type options struct {
	benchkit.Common
	qemu      string
	qemuCPU   string
	settle    time.Duration
	opTimeout time.Duration
	timeout   time.Duration
	verbose   bool
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "hotplug", 5, "runs per system (each boots a guest and adds and removes a disk once)")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary measured (and, nested, the one running L1)")
	flag.StringVar(&o.qemuCPU, "qemu-cpu", "host", "the -cpu model of the measured QEMU")
	flag.DurationVar(&o.settle, "settle", hotmeasure.DefaultSettle, "pause before each request, the guest idle")
	flag.DurationVar(&o.opTimeout, "op-timeout", hotmeasure.DefaultOpTimeout, "bound on one add or remove")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole session (default 5m + 4m per run and system)")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole session (L1's console and each guest's) to stderr")
	flag.Parse()
	if o.Runs < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: hotplug [-n runs] [-json file] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/hotplug", func(ctx context.Context) (*report.Report, error) { return run(ctx, o, os.Stderr) }, report.WriteTable, o.JSONPath)
}

// run builds what the benchmark needs, runs the session (nested or
// directly) and returns the report; a session that ended early gives the
// samples measured before, marked partial, with its error.
func run(ctx context.Context, o options, log io.Writer) (*report.Report, error) {
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-hotplug-", "rainforest/bench/hotplug/cmd/rfhotbench", "rainforest/cmd/rfm")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	img, need, why := ws.Image, ws.Nested, ws.Why
	h := &kvmhost.Host{Nested: need, Why: why, L1: img, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	fs, err := files(h, o.qemu, ws.Binaries[0], ws.Binaries[1], filepath.Dir(img.Kernel))
	if err != nil {
		return nil, err
	}
	runTimeout := 4 * time.Minute
	plan := &benchPlan{runs: o.Runs, qemuCPU: o.qemuCPU, settle: o.settle, opTimeout: o.opTimeout, runTimeout: runTimeout, verbose: o.verbose}
	rep := &report.Report{Nested: need, HostReason: why, Runs: o.Runs, CPUs: 1, MemoryMiB: guestMemoryMiB, Cmdline: cmdline(),
		Date: time.Now().UTC().Format(time.RFC3339)}
	if need {
		rep.Setting = "nested: L1 = QEMU TCG with emulated AMD-V (" + why + "); compare the systems, not absolute times"
		fmt.Fprintf(log, "bench/hotplug: %s; measuring inside the nested L1 guest\n", why)
	} else {
		rep.Setting = "direct: " + why
		fmt.Fprintf(log, "bench/hotplug: %s; measuring directly on this host\n", why)
	}
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 5*time.Minute + time.Duration(2*o.Runs)*runTimeout
	}
	sess := newSession(log, o.Runs)
	script := plan.script()
	rep.Commands = plan.commands
	res, err := h.Run(ctx, kvmhost.Script{
		Text: script, Files: fs, QEMU: o.qemu,
		CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB, HugePages: nestedHugePages, Timeout: timeout, Lines: sess.line,
	})
	if err == nil && res.ExitStatus != 0 {
		err = fmt.Errorf("benchmark script exited with status %d", res.ExitStatus)
	}
	return rep, sess.finish(rep, err)
}

// session gathers the samples as their lines arrive and shows each one.
type session struct {
	log     io.Writer
	runs    int
	collect *benchkit.Collector[hotmeasure.Sample]
}

func newSession(log io.Writer, runs int) *session {
	s := &session{log: log, runs: runs}
	s.collect = &benchkit.Collector[hotmeasure.Sample]{Parse: hotmeasure.ParseLine, Progress: func(m hotmeasure.Sample, n int) {
		fmt.Fprintf(log, "bench/hotplug: [%d/%d] %s\n", n, 4*runs, progressLine(m))
	}}
	return s
}

// line takes one line of the script's output.
func (s *session) line(l string) {
	if info, ok := strings.CutPrefix(l, infoPrefix+" "); ok {
		fmt.Fprintf(s.log, "bench/hotplug: session started: %s\n", info)
	}
	s.collect.Line(l)
}

// finish fills rep with the samples that arrived and returns the run's
// error: the session's (rep is then partial), a failed sample, or
// samples missing.
func (s *session) finish(rep *report.Report, sessionErr error) error {
	samples, perrs := s.collect.Results()
	rep.Samples = samples
	rep.Summaries = report.Summarize(samples, sysRFM, sysQEMU)
	for _, e := range perrs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	rep.Notes = append(rep.Notes,
		"each run boots a fresh guest per system (runs alternate the order rfm/qemu), waits until it is ready and idle, "+
			"then adds the disk and, once the guest has it, removes it",
		"both guests: the same PVH vmlinux, initramfs and kernel command line, the image's disk read-only as /dev/vda, "+
			"one vCPU on core 1 (rfm: the subOS's cgroup; QEMU: taskset), RAM on 2 MiB hugepages; the hot disk is a copy of it",
		"the guest checks for /dev/vdb every 5 ms (shell read builtin with a timeout): guest times include up to 5 ms of that",
		"rfm's request is the rfm CLI (a process start, then the supervisor's API and the VMM's control socket); QEMU's a QMP "+
			"command on an open connection")
	if sessionErr != nil {
		rep.MarkPartial(sessionErr)
		return sessionErr
	}
	for _, m := range samples {
		if !m.OK() {
			return fmt.Errorf("%s run %d %s failed", m.System, m.Run, m.Op)
		}
	}
	if len(samples) != 4*s.runs {
		return fmt.Errorf("got %d results, want %d", len(samples), 4*s.runs)
	}
	return nil
}

// progressLine says what one sample measured.
func progressLine(s hotmeasure.Sample) string {
	if !s.OK() {
		return fmt.Sprintf("%s run %d %s failed: %s", s.System, s.Run, s.Op, benchkit.ShortenError(s.Error))
	}
	line := fmt.Sprintf("%s run %d %s: %.1f ms (request answered after %.1f ms, guest after %.1f ms", s.System, s.Run, s.Op,
		ms(s.Done()), ms(s.Request), ms(s.Guest))
	if s.Op == hotmeasure.OpRemove {
		line += fmt.Sprintf(", device gone after %.1f ms", ms(s.Removed))
	}
	return line + ")"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
