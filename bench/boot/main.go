// Command boot is RainForest's boot benchmark (make bench). It boots the
// default subOS image (the Debian cloud kernel as a PVH vmlinux and the
// RainForest initramfs) N times with rfm vmm and N times with QEMU's
// microvm machine, on the same host in one session, with the same vCPUs,
// memory (2 MiB hugepages for both) and kernel command line, and reports
// per VMM the time from process start to the guest's /init and the VMM's
// memory overhead (VmRSS at /init; VmHWM too), plus the rfm/qemu ratios.
//
// Where this host's KVM cannot run Linux guests (nested.Needed), both VMMs
// run inside one nested L1 guest: the static rfm and rfbench binaries, and
// QEMU with its libraries and firmware, are copied into L1's initramfs.
// Each run is measured by rfbench (bench/boot/cmd/rfbench), whose result
// lines are parsed from L1's console output.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"rainforest/bench/boot/measure"
	"rainforest/bench/boot/report"
	"rainforest/bench/internal/benchkit"
	"rainforest/images"
)

// Settings shared by both VMMs.
const (
	guestCPUs      = 2
	guestMemoryMiB = 512
	cmdline        = "console=ttyS0 reboot=acpi panic=-1 quiet rf.poweroff=1"
	// nestedSetting is the line that names the nested measurement setting.
	nestedSetting = "nested: L1 = QEMU TCG with emulated AMD-V; ratios are meaningful, absolute times are not"
)

// options are the command-line settings.
type options struct {
	runs       int
	jsonPath   string
	imagesDir  string
	nestedMode string
	qemu       string
	qemuCPU    string
	hugetlbfs  string
	timeout    time.Duration
	runTimeout time.Duration
	verbose    bool
}

func main() {
	var o options
	imagesDir := os.Getenv("RF_IMAGES")
	if imagesDir == "" {
		imagesDir = "build/images"
	}
	flag.IntVar(&o.runs, "n", 3, "boots per VMM")
	flag.StringVar(&o.jsonPath, "json", "build/bench/boot.json", "write the results as JSON to this file (empty: do not)")
	flag.StringVar(&o.imagesDir, "images", imagesDir, "directory of the default subOS image (built by make image)")
	flag.StringVar(&o.nestedMode, "nested", "auto", "run inside the nested QEMU layer: auto, always or never")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary measured (and, nested, the one running L1)")
	flag.StringVar(&o.qemuCPU, "qemu-cpu", "host", "the -cpu model of the measured QEMU")
	flag.StringVar(&o.hugetlbfs, "hugetlbfs", "/dev/hugepages", "hugetlbfs mount for QEMU's guest RAM (direct runs)")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole nested session (default 5m + 3m per boot)")
	flag.DurationVar(&o.runTimeout, "run-timeout", 5*time.Minute, "bound on one boot")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole L1 console (and each guest console) to stderr")
	flag.Parse()
	if o.runs < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: boot [-n runs] [-json file] [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o, os.Stderr)
	os.Exit(benchkit.Finish(os.Stdout, os.Stderr, "bench/boot", rep, err, report.WriteTable, o.jsonPath))
}

// run builds what the benchmark needs, runs it (nested or directly) and
// returns the report. A report with failed samples comes with an error.
func run(ctx context.Context, o options, log io.Writer) (*report.Report, error) {
	img, err := images.Build(ctx, images.Options{OutDir: o.imagesDir, Log: log})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	need, why := benchkit.NeedNested(o.nestedMode)
	ws, err := benchkit.NewWorkspace(ctx, "rf-bench-boot-", "rainforest/cmd/rfm", "rainforest/bench/boot/cmd/rfbench")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	bins := binaries{rfm: ws.Binaries[0], rfbench: ws.Binaries[1]}
	plan := &benchPlan{runs: o.runs, runTimeout: o.runTimeout, qemuCPU: o.qemuCPU, verbose: o.verbose}
	rep := &report.Report{
		Nested: need, HostReason: why, Runs: o.runs, CPUs: guestCPUs, MemoryMiB: guestMemoryMiB,
		Cmdline: cmdline, TargetInitMS: float64(report.TargetInit / time.Millisecond),
		TargetOverheadMiB: report.TargetOverheadMiB, Date: time.Now().UTC().Format(time.RFC3339),
	}
	var output string
	if need {
		fmt.Fprintf(log, "bench/boot: %s; measuring inside the nested L1 guest\n", why)
		rep.Setting = nestedSetting
		output, err = runNested(ctx, o, plan, img, bins, log)
	} else {
		fmt.Fprintf(log, "bench/boot: %s; measuring directly on this host\n", why)
		rep.Setting = "direct: " + why + "; absolute times compare with the targets"
		output, err = runDirect(ctx, o, plan, img, bins, log)
	}
	if err != nil {
		return nil, err
	}
	rep.Commands = plan.commands
	fillReport(rep, output)
	for _, s := range rep.Samples {
		if !s.OK() {
			return rep, fmt.Errorf("%s run %d failed", s.VMM, s.Run)
		}
	}
	if len(rep.Samples) != 2*o.runs {
		return rep, fmt.Errorf("got %d results, want %d", len(rep.Samples), 2*o.runs)
	}
	return rep, nil
}

// fillReport parses the measurer's lines and adds summaries, ratios and
// notes.
func fillReport(rep *report.Report, output string) {
	samples, errs := measure.ParseOutput(output)
	rep.Samples = samples
	rep.Summaries = report.Summarize(samples, vmmRFM, vmmQEMU)
	if len(rep.Summaries) >= 2 {
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
		"rfm pins its 2 vCPUs to cores 0-1; QEMU's threads are not pinned",
		"QEMU keeps the -kernel ELF file mapped; its resident pages are most of QEMU's file+shmem")
	if rep.Nested {
		rep.Notes = append(rep.Notes, "QEMU, its libraries and firmware run inside L1 (copied into L1's initramfs); "+
			"files there live on L1's tmpfs root, so mapped binaries count as RssShmem rather than RssFile")
	}
}
