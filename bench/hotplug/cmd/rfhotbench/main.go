// Command rfhotbench measures disk hot-add and hot-remove on one running
// guest (package hotmeasure) and prints one result line per operation on
// stdout. With -system rfm it creates a subOS through a running
// supervisor (the arguments after "--" follow `rfm create NAME`) and uses
// rfm attach/detach; with -system qemu it starts the QEMU command after
// "--" and uses QMP on -qmp. It is built statically (CGO_ENABLED=0) so
// that it runs inside the nested L1 guest.
//
//	rfhotbench -system rfm -run 1 -hot /tmp/hot.img -rfm /bin/rfm -name hp1 -- --cores 1 --append ...
//	rfhotbench -system qemu -run 1 -hot /tmp/hot.img -qmp /tmp/qmp.sock -- qemu-system-x86_64 -M pc ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"rainforest/bench/hotplug/hotmeasure"
	"rainforest/bench/internal/benchkit"
)

// exitGrace is how long a run may take to clean up after its timeout.
const exitGrace = time.Minute

func main() {
	var cfg hotmeasure.Config
	var r hotmeasure.RFM
	var q hotmeasure.QEMU
	flag.StringVar(&cfg.System, "system", "", "rfm or qemu")
	flag.IntVar(&cfg.Run, "run", 1, "run number (result label)")
	flag.StringVar(&cfg.HotDisk, "hot", "", "the image hot-added read-only")
	flag.StringVar(&cfg.Markers.Ready, "ready", "RF-HOT-READY", "console line of a guest waiting for /dev/vdb")
	flag.StringVar(&cfg.Markers.Added, "added", "RF-HOT-ADDED", "console line of a guest that saw /dev/vdb appear")
	flag.StringVar(&cfg.Markers.Removed, "removed", "RF-HOT-REMOVED", "console line of a guest that saw /dev/vdb go")
	flag.DurationVar(&cfg.Settle, "settle", hotmeasure.DefaultSettle, "pause before each request, the guest idle")
	flag.DurationVar(&cfg.Boot, "boot", hotmeasure.DefaultBoot, "bound on the guest's boot to its ready line")
	flag.DurationVar(&cfg.OpTimeout, "op-timeout", hotmeasure.DefaultOpTimeout, "bound on each operation")
	flag.StringVar(&r.Binary, "rfm", "rfm", "rfm command (-system rfm)")
	flag.StringVar(&r.Name, "name", "hotplug", "subOS name (-system rfm)")
	flag.StringVar(&r.RunDir, "run-dir", "/run/rainforest", "the supervisor's run directory (-system rfm)")
	flag.StringVar(&q.QMPSocket, "qmp", "", "QEMU's QMP socket (-system qemu)")
	timeout := flag.Duration("timeout", 10*time.Minute, "bound on the whole run")
	echo := flag.Bool("echo", false, "copy the guest console to stdout, prefixed with [system#run]")
	flag.Parse()
	if cfg.HotDisk == "" || (cfg.System != "rfm" && cfg.System != "qemu") || (cfg.System == "qemu" && (q.QMPSocket == "" || flag.NArg() == 0)) {
		fmt.Fprintln(os.Stderr, "usage: rfhotbench -system rfm|qemu -hot IMAGE [flags] -- (rfm create arguments | QEMU command)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *echo {
		cfg.Echo = os.Stdout
	}
	measure := func() []hotmeasure.Sample {
		if cfg.System == "rfm" {
			r.CreateArgs = flag.Args()
			return hotmeasure.MeasureRFM(ctx, cfg, r)
		}
		q.Argv = flag.Args()
		return hotmeasure.MeasureQEMU(ctx, cfg, q)
	}
	// A VMM that cannot be killed (stuck in a nested guest's kernel) can
	// keep the run waiting: give up on it and say so.
	samples := benchkit.Bounded(*timeout+exitGrace, measure, func() []hotmeasure.Sample {
		err := fmt.Sprintf("the run did not end within %v of its %v timeout (a VMM stuck: left behind)", exitGrace, *timeout)
		return []hotmeasure.Sample{{System: cfg.System, Run: cfg.Run, Op: hotmeasure.OpAdd, Error: err},
			{System: cfg.System, Run: cfg.Run, Op: hotmeasure.OpRemove, Error: err}}
	})
	status := 0
	for _, s := range samples {
		fmt.Println(hotmeasure.FormatLine(s))
		if !s.OK() {
			status = 1
		}
	}
	os.Exit(status)
}
