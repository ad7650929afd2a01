// Command net is RainForest's network benchmark (make bench; issue 12):
// in one session on one host it measures, with iperf3's TCP stream test
// (throughput) and sockperf's TCP ping-pong (request-response round trip,
// p50 and p99; netperf's TCP_RR is in Debian's non-free only), these
// paths:
//
//	host        the host's own loopback (client and server on the host
//	            the guests run on)
//	rfloop      two rfm subOSes on an RFloop network (--net loop=...,
//	            shared memory between the subOSes)
//	rftun       the same two subOSes on a TAP bridge (--net bridge=...;
//	            vhost=auto: rfm inspect says whether vhost-net carried it)
//	qemu-vhost  two QEMU guests, virtio-net with vhost-net, on a bridge
//	uplink      a subOS's rootless uplink (--net user, gVisor netstack)
//	            to iperf3 and sockperf on the host
//	slirp       a QEMU guest's user networking (-netdev user) doing the
//	            same
//
// The guests all boot the same kernel, initramfs and Debian disk (make
// image-debian), one core and 512 MiB each. Each test runs -secs seconds,
// -n times; the report gives per row the median, p99 and spread over the
// repetitions, and the ratios rfloop/host (paper 0.63x, goal >= 0.8x),
// rftun/qemu-vhost (goal >= 1x) and uplink/slirp.
//
// Everything runs from one script through internal/kvmhost: where this
// host's KVM cannot run Linux guests, inside one nested L1 guest (QEMU
// TCG, 3 vCPUs: core 0 for the supervisor and the host's ends, the guests
// on cores 1 and 2), with the host's iperf3 and sockperf copied in
// (kvmhost.DynamicFiles). The measurer, bench/net/cmd/rfnet, drives the
// tools in the subOSes through rfm exec and in the QEMU guests through
// the same agent over vhost-vsock. Results are parsed as they arrive, so
// a session that dies still prints and saves what it measured, marked
// partial.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/internal/qemuguest"
	"rainforest/bench/net/report"
	"rainforest/bench/net/sample"
	"rainforest/images"
	"rainforest/internal/kvmhost"
)

type options struct {
	benchkit.Common
	secs       int
	loop       bool
	qemuGuests bool
	qemu       string
	timeout    time.Duration
	verbose    bool
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "net", 3, "repetitions of each test on each path")
	flag.IntVar(&o.secs, "secs", 10, "seconds each test runs")
	flag.BoolVar(&o.loop, "rfloop", true, "measure RFloop (skipped by itself when the supervisor refuses --net loop=...)")
	flag.BoolVar(&o.qemuGuests, "qemu-guests", true, "measure the QEMU rows (vhost-net, slirp)")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary measured (and, nested, the one running L1)")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole session (default 30m + 2 min and 12 tests per repetition)")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole L1 console to stderr")
	flag.Parse()
	if o.Runs < 1 || o.secs < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: net [-n runs] [-secs S] [-json file] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/net", func(ctx context.Context) (*report.Report, error) { return run(ctx, o, os.Stderr) }, report.WriteTable, o.JSONPath)
}

// rowDescriptions say what each row is.
func rowDescriptions() []report.Row {
	return []report.Row{
		{Name: RowHost, What: "the host's own loopback (iperf3/sockperf client and server on the host the guests run on)"},
		{Name: RowRFloop, What: "subOS a -> subOS b on an RFloop network (rfm create --net loop=lan0,members=a+b)"},
		{Name: RowRFtun, What: "subOS a -> subOS b, TAPs on a bridge (rfm create --net bridge=rfbr0, vhost=auto: the kernel's vhost-net where /dev/vhost-net opens, else the VMM's virtio-net; rfm inspect says which)"},
		{Name: RowQEMUVhost, What: "QEMU guest a -> QEMU guest b, virtio-net-pci with vhost=on, TAPs on a bridge"},
		{Name: RowUplink, What: "subOS a -> the host's loopback through its rootless uplink (--net user,host-loopback: gVisor netstack NAT, 10.0.2.2)"},
		{Name: RowSlirp, What: "QEMU guest a -> the host's loopback through QEMU's user networking (-netdev user: slirp, 10.0.2.2)"},
	}
}

// wantRatios are the ratios reported.
func wantRatios() []report.Ratio {
	return []report.Ratio{
		{Of: RowRFloop, To: RowHost, Goal: 0.8, Paper: 0.63},
		{Of: RowRFtun, To: RowQEMUVhost, Goal: 1},
		{Of: RowUplink, To: RowSlirp},
	}
}

func run(ctx context.Context, o options, log io.Writer) (*report.Report, error) {
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-net-", "rainforest/cmd/rfm", "rainforest/bench/net/cmd/rfnet")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	deb, err := images.FindDebian(o.ImagesDir)
	if err != nil {
		return nil, fmt.Errorf("the Debian image (make image-debian): %w", err)
	}
	tools, err := toolFiles(ctx)
	if err != nil {
		return nil, err
	}
	img := ws.Image
	rep := &report.Report{
		Date: time.Now().UTC().Format(time.RFC3339), Nested: ws.Nested, HostReason: ws.Why, Runs: o.Runs, Seconds: o.secs,
		Guest: fmt.Sprintf("every guest: 1 core, %d MiB, kernel %s, the default initramfs, the Debian disk (a throwaway copy each)", guestMiB, img.KernelVersion),
		Rows:  rowDescriptions(), Info: map[string]map[string]string{}, Skipped: map[string]string{},
	}
	plan := &sessionPlan{runs: o.Runs, secs: o.secs, loop: o.loop, qemu: o.qemuGuests}
	h := &kvmhost.Host{Nested: ws.Nested, Why: ws.Why, L1: img, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	rfm := kvmhost.File{Host: ws.Binaries[0], L1: "/bin/rfm"}
	rfnet := kvmhost.File{Host: ws.Binaries[1], L1: "/bin/rfnet"}
	l2 := kvmhost.File{Host: filepath.Dir(img.Kernel), L1: "/l2", Names: []string{filepath.Base(img.Kernel), filepath.Base(img.Initramfs)}}
	script := kvmhost.Script{Files: append([]kvmhost.File{rfm, rfnet, l2}, tools...), CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB,
		HugePages: nestedHugePages, Modules: []string{vsockModule}}
	paths := sessionPaths{rfm: h.Path(rfm), rfnet: h.Path(rfnet),
		kernel: filepath.Join(h.Path(l2), filepath.Base(img.Kernel)), initrd: filepath.Join(h.Path(l2), filepath.Base(img.Initramfs)),
	}
	for i, v := range diskVars() {
		script.Disks = append(script.Disks, kvmhost.Disk{Var: v, Host: deb.Disk})
		paths.disks[i] = "$" + v
	}
	if o.qemuGuests {
		bin, data, err := h.QEMUPaths(o.qemu)
		if err != nil {
			return nil, err
		}
		paths.qemu, paths.qemuData, script.QEMU = bin, data, o.qemu
		if h.Nested {
			bios, err := qemuguest.BIOSFile(o.qemu)
			if err != nil {
				return nil, err
			}
			script.Files = append(script.Files, bios)
		}
	}
	if !h.Nested {
		return nil, errors.New("bench/net runs its guests in the nested L1 guest only for now (-nested always); " +
			"directly on a host it would change the host's network (bridges rfbr0, rfq0)")
	}
	script.Timeout = o.timeout
	if script.Timeout <= 0 {
		script.Timeout = 30*time.Minute + time.Duration(o.Runs)*2*time.Minute + time.Duration(o.Runs*12*o.secs)*time.Second
	}
	script.Text = plan.script(paths)
	fmt.Fprintf(log, "bench/net: %s; measuring %s inside the nested L1 guest\n", ws.Why, strings.Join(Rows(), ", "))
	total := o.Runs * 2 * len(Rows())
	collect := &benchkit.Collector[sample.Sample]{Parse: sample.ParseLine, Progress: func(s sample.Sample, n int) { progress(log, s, n, total) }}
	script.Lines = func(line string) {
		if in, ok, _ := sample.ParseInfo(line); ok {
			addInfo(rep, in)
			fmt.Fprintf(log, "bench/net: %s\n", strings.TrimSpace(line[strings.Index(line, sample.InfoPrefix):]))
			return
		}
		if strings.HasPrefix(line, "== ") {
			fmt.Fprintf(log, "bench/net: %s\n", line)
		}
		collect.Line(line)
	}
	res, err := h.Run(ctx, script)
	if err == nil && res.ExitStatus != 0 {
		err = fmt.Errorf("the session's script exited with %d", res.ExitStatus)
	}
	rep.Commands = plan.commands
	got, perrs := collect.Results()
	rep.Samples = got
	for _, e := range perrs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	fill(rep)
	if err != nil {
		rep.MarkPartial(err)
		return rep, err
	}
	for _, s := range got {
		if !s.OK() {
			return rep, fmt.Errorf("%s %s run %d failed", s.Row, s.Test, s.Run)
		}
	}
	return rep, nil
}

// toolFiles are the host's iperf3 and sockperf with their libraries, for
// the host's end in L1 (kvmhost.DynamicFiles).
func toolFiles(ctx context.Context) ([]kvmhost.File, error) {
	var files []kvmhost.File
	for _, name := range []string{"iperf3", "sockperf"} {
		bin, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("the host's %s (scripts/setup.sh iperf3 sockperf): %w", name, err)
		}
		f, err := kvmhost.DynamicFiles(ctx, bin)
		if err != nil {
			return nil, err
		}
		files = append(files, f...)
	}
	return files, nil
}

// addInfo records an info line: a skip, or facts.
func addInfo(rep *report.Report, in sample.Info) {
	for _, f := range in.Fields {
		if f.Key == "skipped" && in.Row != "" {
			rep.Skipped[in.Row] = f.Value
			continue
		}
		if rep.Info[in.Row] == nil {
			rep.Info[in.Row] = map[string]string{}
		}
		rep.Info[in.Row][f.Key] = f.Value
	}
}

// fill adds summaries, ratios and notes.
func fill(rep *report.Report) {
	rep.Summaries = report.Summarize(rep.Samples, Rows()...)
	rep.Ratios = report.Ratios(rep.Summaries, wantRatios())
	if vh := rep.Info[RowRFtun]["vhost"]; vh != "" {
		rep.Notes = append(rep.Notes, "rftun: rfm inspect a says of its TAP NIC: "+vh)
	}
	rep.Notes = append(rep.Notes,
		"stream: iperf3 -c SERVER -t SECS -J (one TCP stream, client sends); Gbps is the receiver's (sum_received)",
		"rr: sockperf ping-pong --tcp -m 64 --full-rtt (one TCP connection, one 64-byte message at a time); its p50 and p99 round trip "+
			"per test; netperf's TCP_RR is not used: Debian has netperf in non-free only",
		"per row, over the repetitions: median, p99 (nearest rank; the maximum for fewer than 100) and spread ((max - min) / median)")
	if rep.Nested {
		rep.Notes = append(rep.Notes, "everything ran inside the nested L1 guest (QEMU TCG with emulated AMD-V, every instruction of the "+
			"guests and of L1 emulated in software, 3 vCPUs on a shared host): absolute numbers are far below real hardware's; "+
			"the guest rows share the same layer and run, so their ratios are what to read",
			"nested, the host row runs in L1 itself while every guest row runs in L2 (a guest of L1's emulated KVM, "+
				"where each exit to the VMM goes through L1's emulated AMD-V), so rfloop/host compares two layers and "+
				"says nothing of real hardware; rftun/qemu-vhost and uplink/slirp compare guests of the same layer")
	}
}

// progress shows one result as it arrives.
func progress(log io.Writer, s sample.Sample, n, total int) {
	switch {
	case !s.OK():
		fmt.Fprintf(log, "bench/net: [%d/%d] %s %s run %d failed: %s\n", n, total, s.Row, s.Test, s.Run, benchkit.ShortenError(s.Error))
	case s.Test == sample.Stream:
		fmt.Fprintf(log, "bench/net: [%d/%d] %s stream run %d: %.3f Gbit/s (%d retransmits)\n", n, total, s.Row, s.Run, s.Gbps, s.Retransmits)
	default:
		fmt.Fprintf(log, "bench/net: [%d/%d] %s rr run %d: round trip p50 %.1f µs, p99 %.1f µs\n", n, total, s.Row, s.Run, s.P50US, s.P99US)
	}
}
