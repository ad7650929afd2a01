// Command boot is RainForest's boot benchmark (make bench). It boots the
// default subOS image (the Debian cloud kernel as a PVH vmlinux and the
// RainForest initramfs) N times with rfm vmm and N times with QEMU's
// microvm machine, on the same host in one session, with the same vCPUs,
// memory (2 MiB hugepages for both) and kernel command line, and reports
// per VMM the time from process start to the guest's /init and the VMM's
// memory overhead (VmRSS at /init; VmHWM too), plus the rfm/qemu ratios.
//
// Each guest then stays idle (rf.cmd="sleep 25" before it powers off), and
// over a 10 s window starting 3 s after /init has started that command,
// the context switches of every thread of the VMM process are counted
// (package wakeups): the wake-ups per second of the VMM's own threads,
// whose goal is 0, and separately of its vCPU threads, with each thread's
// count and what it was blocked in during the window.
//
// Where this host's KVM cannot run Linux guests (nested.Needed), both VMMs
// run inside one nested L1 guest: the static rfm and rfbench binaries, and
// QEMU with its libraries and firmware, are copied into L1's initramfs
// (internal/kvmhost runs the session either way). Each run is measured by
// rfbench (bench/boot/cmd/rfbench), whose result lines are parsed as they
// arrive: each sample is shown when measured, and a session that dies
// still prints and saves what it measured, marked partial.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"rainforest/bench/boot/measure"
	"rainforest/bench/boot/report"
	"rainforest/bench/internal/benchkit"
	"rainforest/internal/kvmhost"
)

// Settings shared by both VMMs. The guest sleeps guestIdle in rf.cmd
// before it powers off; the idle window opens idleDelay after idleAfter,
// the last line /init prints before it runs rf.cmd, and lasts idleWindow
// (well inside guestIdle).
const (
	guestCPUs      = 2
	guestMemoryMiB = 512
	cmdline        = `console=ttyS0 reboot=acpi panic=-1 quiet rf.poweroff=1 rf.cmd="sleep 25"`
	guestIdle      = 25 * time.Second
	idleAfter      = "RF-MEMTOTAL-KB"
	idleDelay      = 3 * time.Second
	idleWindow     = 10 * time.Second
	// nestedSetting is the line that names the nested measurement setting.
	nestedSetting = "nested: L1 = QEMU TCG with emulated AMD-V; ratios are meaningful, absolute times are not"
)

// options are the command-line settings.
type options struct {
	benchkit.Common
	qemu       string
	qemuCPU    string
	hugetlbfs  string
	timeout    time.Duration
	runTimeout time.Duration
	verbose    bool
	// rfm is a static rfm binary to measure instead of one built from
	// this tree (empty: build ./cmd/rfm).
	rfm string
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "boot", 3, "boots per VMM")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary measured (and, nested, the one running L1)")
	flag.StringVar(&o.qemuCPU, "qemu-cpu", "host", "the -cpu model of the measured QEMU")
	flag.StringVar(&o.hugetlbfs, "hugetlbfs", "/dev/hugepages", "hugetlbfs mount for QEMU's guest RAM (direct runs)")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole nested session (default 5m + 3m per boot)")
	flag.DurationVar(&o.runTimeout, "run-timeout", 5*time.Minute, "bound on one boot")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole L1 console (and each guest console) to stderr; show each thread's idle wake-ups")
	flag.StringVar(&o.rfm, "rfm", "", "measure this static rfm binary (e.g. an older build, to compare) instead of building ./cmd/rfm")
	flag.Parse()
	if o.Runs < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: boot [-n runs] [-json file] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/boot", func(ctx context.Context) (*report.Report, error) { return run(ctx, o, os.Stderr) }, report.WriteTable, o.JSONPath)
}

// run builds what the benchmark needs, runs it (nested or directly) and
// returns the report. A report with failed samples comes with an error;
// so does one whose session ended early, holding the samples measured
// before and marked partial.
func run(ctx context.Context, o options, log io.Writer) (*report.Report, error) {
	pkgs := []string{"rainforest/bench/boot/cmd/rfbench", "rainforest/cmd/rfm"}
	if o.rfm != "" {
		pkgs = pkgs[:1]
	}
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-boot-", pkgs...)
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	img, need, why := ws.Image, ws.Nested, ws.Why
	bins := binaries{rfbench: ws.Binaries[0], rfm: o.rfm}
	if o.rfm == "" {
		bins.rfm = ws.Binaries[1]
	}
	plan := &benchPlan{runs: o.Runs, runTimeout: o.runTimeout, qemuCPU: o.qemuCPU, verbose: o.verbose}
	rep := &report.Report{
		Nested: need, HostReason: why, Runs: o.Runs, CPUs: guestCPUs, MemoryMiB: guestMemoryMiB,
		Cmdline: cmdline, IdleAfter: idleAfter, IdleDelayS: idleDelay.Seconds(), IdleWindowS: idleWindow.Seconds(),
		TargetInitMS:      float64(report.TargetInit / time.Millisecond),
		TargetOverheadMiB: report.TargetOverheadMiB, Date: time.Now().UTC().Format(time.RFC3339), RFMBinary: o.rfm,
	}
	h := &kvmhost.Host{Nested: need, Why: why, L1: img, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	if need {
		fmt.Fprintf(log, "bench/boot: %s; measuring inside the nested L1 guest\n", why)
		rep.Setting = nestedSetting
	} else {
		fmt.Fprintf(log, "bench/boot: %s; measuring directly on this host\n", why)
		rep.Setting = "direct: " + why + "; absolute times compare with the targets"
	}
	sess := newSession(log, o.Runs, o.verbose)
	err = runSession(ctx, o, plan, h, img, bins, sess.line)
	rep.Commands = plan.commands
	return rep, sess.finish(rep, err)
}

// session gathers a measuring session's samples as its lines arrive and
// shows each one on the log (verbose: with each thread's idle wake-ups).
type session struct {
	log     io.Writer
	runs    int
	collect *benchkit.Collector[measure.Sample]
}

func newSession(log io.Writer, runs int, verbose bool) *session {
	s := &session{log: log, runs: runs}
	s.collect = &benchkit.Collector[measure.Sample]{Parse: measure.ParseLine, Progress: func(m measure.Sample, n int) {
		fmt.Fprintf(log, "bench/boot: [%d/%d] %s\n", n, 2*runs, progressLine(m))
		if verbose && m.Idle != nil {
			for _, l := range report.ThreadLines(*m.Idle) {
				fmt.Fprintf(log, "bench/boot:     %s\n", l)
			}
		}
	}}
	return s
}

// line takes one line of the script's output.
func (s *session) line(l string) {
	if info, ok := strings.CutPrefix(l, infoPrefix+" "); ok {
		fmt.Fprintf(s.log, "bench/boot: session started: %s\n", info)
	}
	s.collect.Line(l)
}

// finish fills rep with the samples that arrived and returns the run's
// error: the session's, when it ended early (rep is then marked
// partial), a failed sample, or samples missing.
func (s *session) finish(rep *report.Report, sessionErr error) error {
	samples, perrs := s.collect.Results()
	fillReport(rep, samples, perrs)
	if sessionErr != nil {
		rep.MarkPartial(sessionErr)
		return sessionErr
	}
	for _, m := range rep.Samples {
		if !m.OK() {
			return fmt.Errorf("%s run %d failed", m.VMM, m.Run)
		}
	}
	if len(rep.Samples) != 2*s.runs {
		return fmt.Errorf("got %d results, want %d", len(rep.Samples), 2*s.runs)
	}
	return nil
}

// progressLine says what one sample measured.
func progressLine(s measure.Sample) string {
	if !s.OK() {
		return fmt.Sprintf("%s run %d failed: %s", s.VMM, s.Run, benchkit.ShortenError(s.Error))
	}
	line := fmt.Sprintf("%s run %d: /init after %.1f ms, VmRSS %.1f MiB (VmHWM %.1f MiB)", s.VMM, s.Run,
		float64(s.Init)/float64(time.Millisecond), float64(s.Status.VmRSS)/1024, float64(s.Status.VmHWM)/1024)
	if s.Idle != nil {
		line += fmt.Sprintf("; idle wake-ups/s: VMM threads %.1f, vCPU threads %.1f", s.Idle.PerSecond(false), s.Idle.PerSecond(true))
	}
	return line
}

// fillReport adds the measurer's samples (and the lines that did not
// parse), summaries, ratios and notes.
func fillReport(rep *report.Report, samples []measure.Sample, errs []error) {
	rep.Samples = samples
	rep.Summaries = report.Summarize(samples, vmmRFM, vmmQEMU)
	if len(rep.Summaries) >= 2 && rep.Summaries[0].OK > 0 && rep.Summaries[1].OK > 0 {
		r := report.RatiosOf(rep.Summaries[0], rep.Summaries[1])
		rep.Ratios = &r
	}
	for _, e := range errs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	for _, s := range samples {
		if s.OK() && s.Status.HugetlbPages < guestMemoryMiB*1024 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s run %d maps only %d KiB of hugetlb pages at /init: part of its guest RAM may be in VmRSS",
				s.VMM, s.Run, s.Status.HugetlbPages))
		}
	}
	rep.Notes = append(rep.Notes,
		"runs alternate the order rfm/qemu; both boot the same PVH vmlinux and initramfs with the same command line",
		fmt.Sprintf("idle wake-ups: voluntary + nonvoluntary context switches of each thread of the VMM process (/proc/PID/task/*/status) "+
			"over %v from %v after the guest printed %s and started rf.cmd (sleep %v); vCPU threads are rfm's vcpuN and QEMU's \"CPU N/KVM\", "+
			"the VMM's own threads are all the others", idleWindow, idleDelay, idleAfter, guestIdle),
		"rfm pins its 2 vCPUs to cores 0-1; QEMU's threads are not pinned",
		"QEMU keeps the -kernel ELF file mapped; its resident pages are most of QEMU's file+shmem")
	if rep.Nested {
		rep.Notes = append(rep.Notes, "QEMU, its libraries and firmware run inside L1 (copied into L1's initramfs); "+
			"files there live on L1's tmpfs root, so mapped binaries count as RssShmem rather than RssFile")
	}
}
