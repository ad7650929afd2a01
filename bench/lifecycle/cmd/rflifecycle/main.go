// Command rflifecycle measures the lifecycle of rfm subOSes and QEMU
// guests where they run (the nested L1 guest, or this host), -n cycles
// per system, the systems alternating from cycle to cycle (rfm first in
// odd cycles, QEMU in even ones), and prints one sample.FormatLine
// result line per cycle on stdout.
//
// rfm (package subos): against a running `rfm serve`, it creates a
// subOS, waits for the guest's init marker, (with -resize) grows the
// running subOS by one core and shrinks it back, (with -memory-step-mib)
// grows its memory by the step and shrinks it back, destroys it and
// waits for the ledger to free its cores.
//
// QEMU (package qemu, with -systems rfm,qemu): it starts the QEMU
// command given after "--" (QMP on -qmp), and measures the same
// operations over QMP.
//
// It is built statically (CGO_ENABLED=0) so that it runs inside the
// nested L1 guest.
//
//	rflifecycle -socket /run/rainforest/rfm.sock -n 5 -kernel vmlinux -initrd initramfs.cpio.gz
//	rflifecycle -systems rfm,qemu -qmp /tmp/qmp.sock -kernel vmlinux -resize -- qemu-system-x86_64 -M pc ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"rainforest/bench/lifecycle/qemu"
	"rainforest/bench/lifecycle/sample"
	"rainforest/bench/lifecycle/subos"
	"rainforest/images"
	"rainforest/internal/units"
	"rainforest/rfm/api"
	"rainforest/rfm/supervisor"
)

func main() {
	socket := flag.String("socket", api.DefaultSocket, "supervisor API socket")
	runs := flag.Int("n", 5, "create/destroy cycles per system")
	systems := flag.String("systems", subos.System, "systems measured, comma-separated: rfm, qemu")
	prefix := flag.String("name", "lc-", "subOS name prefix (the run number follows)")
	kernel := flag.String("kernel", "", "subOS kernel (vmlinux)")
	initrd := flag.String("initrd", "", "subOS initramfs")
	cpus := flag.Int("cpus", 1, "cores per subOS")
	memMiB := flag.Uint64("memory-mib", 256, "subOS RAM, MiB (2 MiB hugepages)")
	appendArgs := flag.String("append", "", "extra kernel command line of the subOS")
	marker := flag.String("marker", images.InitReachedMarker, "guest console text that means init runs")
	timeout := flag.Duration("timeout", subos.DefaultTimeout, "bound on each of one cycle's waits")
	resize := flag.Bool("resize", false, "time a CPU resize (one core more and back) of each running guest")
	memStepMiB := flag.Uint64("memory-step-mib", 0, "time a memory resize (this many MiB more and back) of each running guest (0: none)")
	qmpSocket := flag.String("qmp", "", "the QEMU command's QMP socket (-systems qemu)")
	onlineCores := flag.String("online-cores", "", "host cores the vCPU QEMU hot-adds is pinned to (cpulist; empty: not pinned)")
	echo := flag.Bool("echo", false, "copy each QEMU guest's console to stdout, prefixed with [qemu#run]")
	ready := flag.Duration("ready-timeout", 60*time.Second, "how long to wait for the supervisor to answer")
	flag.Parse()
	want := strings.Split(*systems, ",")
	withQEMU := slices.Contains(want, qemu.System)
	cores, cerr := units.ParseCPUList(*onlineCores)
	bad := slices.ContainsFunc(want, func(s string) bool { return s != subos.System && s != qemu.System })
	if *runs < 1 || *kernel == "" || bad || cerr != nil || (withQEMU && (*qmpSocket == "" || flag.NArg() == 0)) || (!withQEMU && flag.NArg() > 0) {
		fmt.Fprintln(os.Stderr, "usage: rflifecycle -kernel FILE [-initrd FILE] [-n runs] [-socket PATH] [-systems rfm,qemu -qmp PATH] [flags] [-- QEMU command]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cycles := map[string]func(run int) sample.Sample{}
	if slices.Contains(want, subos.System) {
		c := api.NewClient(*socket)
		cfg := subos.Config{
			Spec: supervisor.Spec{CPUs: *cpus, Memory: *memMiB << 20, PageSize: 2 << 20, Kernel: *kernel, Initrd: *initrd,
				CmdlineAppend: strings.TrimSpace(*appendArgs)},
			NamePrefix: *prefix, Marker: *marker, Timeout: *timeout, Resize: *resize, MemoryStep: *memStepMiB << 20,
		}
		if *resize {
			cfg.Spec.MaxCPUs = *cpus + 1
		}
		if cfg.MemoryStep > 0 {
			cfg.Spec.MaxMemory = cfg.Spec.Memory + cfg.MemoryStep
		}
		if err := subos.WaitReady(ctx, c, *ready); err != nil {
			cycles[subos.System] = func(run int) sample.Sample {
				return sample.Sample{System: subos.System, Run: run, Error: err.Error()}
			}
		} else {
			cycles[subos.System] = func(run int) sample.Sample { return subos.Cycle(ctx, c, cfg, run) }
		}
	}
	if withQEMU {
		cfg := qemu.Config{Argv: flag.Args(), QMPSocket: *qmpSocket, Markers: qemu.DefaultMarkers(), Resize: *resize,
			OnlineCores: cores, MemoryStep: *memStepMiB << 20, Timeout: *timeout}
		if *echo {
			cfg.Echo = os.Stdout
		}
		cycles[qemu.System] = func(run int) sample.Sample { return qemu.Cycle(ctx, cfg, run) }
	}

	failed := false
	for i := 1; i <= *runs && ctx.Err() == nil; i++ {
		for _, sys := range order(i) {
			cycle := cycles[sys]
			if cycle == nil {
				continue
			}
			s := cycle(i)
			fmt.Println(sample.FormatLine(s))
			failed = failed || !s.OK()
		}
	}
	if failed {
		os.Exit(1)
	}
}

// order is the order of the systems in cycle i: they alternate, so that
// neither always runs on a machine the other just used.
func order(i int) []string {
	if i%2 == 1 {
		return []string{subos.System, qemu.System}
	}
	return []string{qemu.System, subos.System}
}
