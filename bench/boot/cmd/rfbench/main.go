// Command rfbench measures one VMM run: it starts the command given after
// "--", reports the time until the marker appears on the command's stdout
// and the command's /proc/PID/status memory at that moment, optionally
// counts the context switches of the command's threads over a window
// while its guest is idle (-idle-after, -idle-delay, -idle-window), waits
// for it to exit, and prints one measure.FormatLine result line on stdout.
// It is built statically (CGO_ENABLED=0) so that it runs inside the nested
// L1 guest.
//
//	rfbench -vmm rfm -run 1 -marker RF-INIT-REACHED -idle-after RF-MEMTOTAL-KB -idle-delay 3s -idle-window 10s -- rfm vmm --kernel ...
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
	"rainforest/bench/internal/benchkit"
)

// exitGrace is how long a VMM killed at its timeout may take to exit.
const exitGrace = 30 * time.Second

func main() {
	vmm := flag.String("vmm", "vmm", "name of the VMM measured (result label)")
	run := flag.Int("run", 1, "run number (result label)")
	marker := flag.String("marker", "RF-INIT-REACHED", "console text that ends the boot-time measurement")
	timeout := flag.Duration("timeout", measure.DefaultTimeout, "kill the VMM after this long")
	echo := flag.Bool("echo", true, "copy the VMM's console lines to stdout, prefixed with [vmm#run]")
	var idle measure.IdleSpec
	flag.StringVar(&idle.After, "idle-after", "", "console text after which the guest is idle")
	flag.DurationVar(&idle.Delay, "idle-delay", 3*time.Second, "wait from -idle-after to the idle window")
	flag.DurationVar(&idle.Window, "idle-window", 0, "count the VMM's thread wake-ups over this long while the guest is idle (0: do not)")
	flag.DurationVar(&idle.Every, "idle-every", measure.DefaultIdleEvery, "how often the threads' states are noted during the idle window")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rfbench [flags] -- command [args...]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var echoTo io.Writer
	if *echo {
		echoTo = os.Stdout
	}
	spec := measure.Spec{VMM: *vmm, Run: *run, Argv: flag.Args(), Marker: *marker, Timeout: *timeout, Echo: echoTo, Idle: idle}
	// A VMM that cannot be killed (stuck in a nested guest's kernel) keeps
	// its console open and Measure waiting: give up on it and say so.
	s := benchkit.Bounded(*timeout+exitGrace, func() measure.Sample { return measure.Measure(ctx, spec) }, func() measure.Sample {
		return measure.Sample{VMM: *vmm, Run: *run, ExitCode: -1,
			Error: fmt.Sprintf("the VMM did not end within %v of its %v timeout (killed, but stuck: left behind)", exitGrace, *timeout)}
	})
	fmt.Println(measure.FormatLine(s))
	if !s.OK() {
		os.Exit(1)
	}
}
