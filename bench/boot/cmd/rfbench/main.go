// Command rfbench measures one VMM run: it starts the command given after
// "--", reports the time until the marker appears on the command's stdout
// and the command's /proc/PID/status memory at that moment, waits for it to
// exit, and prints one measure.FormatLine result line on stdout. It is
// built statically (CGO_ENABLED=0) so that it runs inside the nested L1
// guest.
//
//	rfbench -vmm rfm -run 1 -marker RF-INIT-REACHED -- rfm vmm --kernel ...
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"rainforest/bench/boot/measure"
)

func main() {
	vmm := flag.String("vmm", "vmm", "name of the VMM measured (result label)")
	run := flag.Int("run", 1, "run number (result label)")
	marker := flag.String("marker", "RF-INIT-REACHED", "console text that ends the boot-time measurement")
	timeout := flag.Duration("timeout", measure.DefaultTimeout, "kill the VMM after this long")
	echo := flag.Bool("echo", true, "copy the VMM's console lines to stdout, prefixed with [vmm#run]")
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
	s := measure.Measure(ctx, measure.Spec{
		VMM: *vmm, Run: *run, Argv: flag.Args(), Marker: *marker, Timeout: *timeout, Echo: echoTo,
	})
	fmt.Println(measure.FormatLine(s))
	if !s.OK() {
		os.Exit(1)
	}
}
