// Command hardening is RainForest's benchmark of what the VMM hardening
// costs (make bench): every VMM jailed (namespaces, pivot_root, an
// unprivileged uid, no capabilities) and under a seccomp allow-list, the
// supervisor's default ("hardened"), against both turned off (`rfm serve
// --no-jail --no-seccomp`, "plain"), side by side in one session. Each
// repeat runs both configurations, the order alternating, each with a
// fresh supervisor, and measures
//
//   - boot: subOS create until the guest's /init prints
//     images.InitReachedMarker, by the lifecycle measurer
//     (bench/lifecycle/cmd/rflifecycle) against the supervisor's API;
//   - virtio-blk: a subOS with a non-sparse scratch disk running
//     `rfcom diskbench --write` (O_DIRECT, sequential 1 MiB and random
//     4 KiB at queue depth 1; the project's stand-in for fio, which the
//     busybox image lacks), its RF-DISK line read with `rfm logs`;
//   - FICM: two subOSes running `rfcom bench` against each other as
//     bench/rfcom does, interrupt and polling mode (round trip median and
//     p99, throughput).
//
// The session is one script through internal/kvmhost: inside one nested
// L1 guest where this host's KVM cannot run Linux guests, otherwise on
// this host. Each result is shown as it arrives; a session that dies
// still prints and saves what it measured, marked partial.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/internal/kvmhost"
)

// options are the command-line settings.
type options struct {
	benchkit.Common
	qemu        string
	memoryMiB   int
	diskMiB     int
	diskSeconds int
	ficmN       int
	runTimeout  time.Duration
	timeout     time.Duration
	verbose     bool
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "hardening", 5, "repeats per configuration (each: a boot, a disk run, a FICM run)")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary running the nested L1 guest")
	flag.IntVar(&o.memoryMiB, "memory-mib", 256, "subOS RAM, MiB (2 MiB hugepages)")
	flag.IntVar(&o.diskMiB, "disk-mib", 64, "scratch disk size, MiB (filled with random data)")
	flag.IntVar(&o.diskSeconds, "disk-seconds", 3, "seconds per diskbench phase")
	flag.IntVar(&o.ficmN, "ficm-n", 500, "FICM round trips (and streamed messages) per mode and run")
	flag.DurationVar(&o.runTimeout, "run-timeout", 5*time.Minute, "bound on one measurement's waits")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole session (default 5m + 12m per repeat)")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole L1 console to stderr")
	flag.Parse()
	if o.Runs < 1 || o.memoryMiB < 2 || o.diskMiB < 2 || o.diskSeconds < 1 || o.ficmN < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: hardening [-n repeats] [-json file] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/hardening", func(ctx context.Context) (*Report, error) { return run(ctx, o, os.Stderr) }, writeTable, o.JSONPath)
}

// run builds rfm and the lifecycle measurer, runs the session and
// returns the report; a session that ended early gives the samples
// measured before, marked partial, with its error.
func run(ctx context.Context, o options, log io.Writer) (*Report, error) {
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-hardening-", "rainforest/cmd/rfm", "rainforest/bench/lifecycle/cmd/rflifecycle")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	img := ws.Image
	h := &kvmhost.Host{Nested: ws.Nested, Why: ws.Why, L1: img, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	plan := &benchPlan{runs: o.Runs, memoryMiB: o.memoryMiB, diskMiB: o.diskMiB, diskSeconds: o.diskSeconds, ficmN: o.ficmN,
		runTimeout: o.runTimeout, work: filepath.Join(ws.Dir, "session")}
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), Runs: o.Runs,
		ServeFlags: map[string]string{cfgHardened: serveFlags(cfgHardened), cfgPlain: serveFlags(cfgPlain)}}
	if ws.Nested {
		plan.work = "/tmp/rf-hardening"
		rep.Setting = "nested: L1 = QEMU TCG with emulated AMD-V (" + ws.Why + "); compare the configurations, not absolute figures"
		fmt.Fprintf(log, "bench/hardening: %s; measuring inside the nested L1 guest\n", ws.Why)
	} else {
		rep.Setting = "direct: " + ws.Why
		fmt.Fprintf(log, "bench/hardening: %s; measuring directly on this host\n", ws.Why)
	}
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 5*time.Minute + time.Duration(o.Runs)*12*time.Minute
	}
	collect := &benchkit.Collector[Sample]{Parse: parseLine, Progress: func(s Sample, n int) { fmt.Fprintln(log, progressLine(s)) }}
	res, err := h.Run(ctx, kvmhost.Script{
		Text: plan.script(),
		Files: []kvmhost.File{
			{Var: "RFM", Host: ws.Binaries[0], L1: "/bin/rfm"},
			{Var: "RFLIFECYCLE", Host: ws.Binaries[1], L1: "/bin/rflifecycle"},
			{Var: "L2", Host: filepath.Dir(img.Kernel), L1: "/l2", Names: []string{"vmlinux", "initramfs.cpio.gz"}},
		},
		CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB, HugePages: nestedHugePages, Timeout: timeout,
		Lines: func(line string) {
			if info, ok := strings.CutPrefix(line, infoPrefix+" "); ok {
				fmt.Fprintf(log, "bench/hardening: session started: %s\n", info)
			}
			collect.Line(line)
		},
	})
	if err == nil && res.ExitStatus != 0 {
		err = fmt.Errorf("the benchmark script exited with status %d", res.ExitStatus)
	}
	return rep, finish(rep, collect, o.Runs, err)
}

// finish fills rep with the samples that arrived and returns the run's
// error: the session's (rep is then partial), a failed sample, or
// samples missing.
func finish(rep *Report, collect *benchkit.Collector[Sample], runs int, sessionErr error) error {
	samples, perrs := collect.Results()
	rep.Samples = samples
	rep.Rows = summarize(samples)
	for _, e := range perrs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	rep.Notes = append(rep.Notes,
		"each repeat runs both configurations, the order alternating (odd repeats hardened first), each with a fresh supervisor; "+
			"min-max is the spread over the repeats, p99 is nearest-rank (the maximum below 100 repeats)",
		"boot: the lifecycle measurer's create->init (POST /v1/subos until the image's /init marker is in the subOS log); "+
			"create returned: until the API call returned",
		"virtio-blk: rfcom diskbench (the project's stand-in for fio, which the busybox image lacks): O_DIRECT in the guest, "+
			"sequential 1 MiB and random 4 KiB at queue depth 1, on a non-sparse scratch file in the measuring layer",
		"FICM: rfcom bench between two subOSes (uio_pci_generic), 64-byte messages, as bench/rfcom",
		"hardened/plain above 1 is a cost for times and latencies (ms, µs), below 1 for rates (MB/s, IOPS, msgs/s)")
	if sessionErr != nil {
		rep.MarkPartial(sessionErr)
		return sessionErr
	}
	return check(samples, runs)
}

// check says what is missing or failed in a complete session's samples:
// per configuration and repeat a boot and a disk sample and, per FICM
// mode, a round trip and a throughput (or a failed FICM sample).
func check(samples []Sample, runs int) error {
	count := map[string]int{}
	for _, s := range samples {
		if !s.OK() {
			return fmt.Errorf("%s rep %d %s failed", s.Config, s.Rep, s.Metric)
		}
		count[s.Metric]++
	}
	want := map[string]int{metricBoot: 2 * runs, metricDisk: 2 * runs, metricFICM: 2 * runs * 2 * len(ficmModes)}
	for _, m := range slices.Sorted(maps.Keys(want)) {
		if count[m] != want[m] {
			return fmt.Errorf("got %d %s results, want %d", count[m], m, want[m])
		}
	}
	return nil
}

// progressLine says what one sample measured.
func progressLine(s Sample) string {
	head := fmt.Sprintf("bench/hardening: %s rep %d %s", s.Config, s.Rep, s.Metric)
	if !s.OK() {
		return head + " failed: " + benchkit.ShortenError(s.Error)
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(s.Values)) {
		kv = append(kv, fmt.Sprintf("%s=%s", k, num(s.Values[k])))
	}
	return head + ": " + strings.Join(kv, " ")
}
