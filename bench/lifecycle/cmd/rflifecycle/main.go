// Command rflifecycle measures subOS create and destroy latency against a
// running `rfm serve`: it creates, waits for the guest's init marker,
// (with -resize) grows the running subOS by one core and shrinks it back,
// destroys and waits for the ledger to free the cores, -n times, and
// prints one sample.FormatLine result line per cycle on stdout. It is built
// statically (CGO_ENABLED=0) so that it runs inside the nested L1 guest.
//
//	rflifecycle -socket /run/rainforest/rfm.sock -n 5 -kernel vmlinux -initrd initramfs.cpio.gz
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"rainforest/bench/lifecycle/sample"
	"rainforest/bench/lifecycle/subos"
	"rainforest/images"
	"rainforest/rfm/api"
	"rainforest/rfm/supervisor"
)

func main() {
	socket := flag.String("socket", api.DefaultSocket, "supervisor API socket")
	runs := flag.Int("n", 5, "create/destroy cycles")
	prefix := flag.String("name", "lc-", "subOS name prefix (the run number follows)")
	kernel := flag.String("kernel", "", "subOS kernel (vmlinux)")
	initrd := flag.String("initrd", "", "subOS initramfs")
	cpus := flag.Int("cpus", 1, "cores per subOS")
	memMiB := flag.Uint64("memory-mib", 256, "subOS RAM, MiB (2 MiB hugepages)")
	appendArgs := flag.String("append", "", "extra kernel command line")
	marker := flag.String("marker", images.InitReachedMarker, "guest console text that means init runs")
	timeout := flag.Duration("timeout", subos.DefaultTimeout, "bound on one cycle's waits")
	resize := flag.Bool("resize", false, "time a CPU resize (one core more and back) of each running subOS")
	ready := flag.Duration("ready-timeout", 60*time.Second, "how long to wait for the supervisor to answer")
	flag.Parse()
	if *runs < 1 || *kernel == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: rflifecycle -kernel FILE [-initrd FILE] [-n runs] [-socket PATH] [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := api.NewClient(*socket)
	if err := subos.WaitReady(ctx, c, *ready); err != nil {
		// One failed line per run, so that the host reports every run.
		for i := 1; i <= *runs; i++ {
			fmt.Println(sample.FormatLine(sample.Sample{System: subos.System, Run: i, Error: err.Error()}))
		}
		os.Exit(1)
	}
	cfg := subos.Config{
		Spec: supervisor.Spec{CPUs: *cpus, Memory: *memMiB << 20, PageSize: 2 << 20, Kernel: *kernel, Initrd: *initrd,
			CmdlineAppend: strings.TrimSpace(*appendArgs)},
		NamePrefix: *prefix, Marker: *marker, Timeout: *timeout, Resize: *resize,
	}
	if *resize {
		cfg.Spec.MaxCPUs = *cpus + 1
	}
	failed := false
	for i := 1; i <= *runs; i++ {
		s := subos.Cycle(ctx, c, cfg, i)
		fmt.Println(sample.FormatLine(s))
		failed = failed || !s.OK()
		if ctx.Err() != nil {
			break
		}
	}
	if failed {
		os.Exit(1)
	}
}
