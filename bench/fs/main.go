// Command fs is RainForest's filesystem benchmark (make bench; issue 13):
// in one run on the same host, fio measures sequential read and write
// (1 MiB blocks), random read and write (4 KiB blocks) on one file, and
// the creation, stat and unlinking of many files (fio's filecreate,
// filestat and filedelete engines) on five systems:
//
//   - rffuse: a share (RFfuse: virtio-fs, served by virtiofsd, which the
//     supervisor starts) of an rfm subOS booted from the Debian image;
//   - qemu-virtiofsd: a QEMU guest with the same virtiofsd, run with the
//     same options (vhost-user-fs-pci, guest RAM in a shared memfd),
//     booting the same kernel, initramfs and Debian disk;
//   - qemu-9p: QEMU's virtio-9p, in the same QEMU guest booted again,
//     but with Debian's generic kernel of the same version (the cloud
//     flavour has no 9p; images.BuildFlavour fetches it, when this row
//     is measured, into the images cache) and an initramfs that also
//     loads ext4 and the 9p modules;
//   - virtio-blk: a directory on the subOS's own root disk (ext4 on
//     virtio-blk);
//   - host: fio where the guests run, on the directory the shares serve
//     from.
//
// It reports per workload and system the median, 99th percentile, minimum,
// maximum and spread over -n repetitions, fio's per-I/O p99 latency, and
// RFfuse's ratios to QEMU's virtiofsd, to 9p and to the host.
//
// Where this host's KVM cannot run Linux guests (nested.Needed), all of it
// runs in one nested L1 guest (QEMU TCG) through internal/kvmhost, as
// bench/lifecycle does: the host row is then L1 (fio and virtiofsd are
// this host's, copied into L1 with their libraries). The systems take
// turns: the host runs, then the subOS (rffuse and virtio-blk alternating
// run after run), then the QEMU guest (all qemu-virtiofsd runs, then
// qemu-9p's in its second boot). Result lines are parsed as they arrive,
// so a session that dies keeps what it measured (the report is marked
// partial).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"rainforest/bench/fs/fio"
	"rainforest/bench/fs/report"
	"rainforest/bench/internal/benchkit"
	"rainforest/bench/internal/qemuguest"
	"rainforest/images"
	"rainforest/internal/kvmhost"
	"rainforest/internal/shquote"
	"rainforest/rfm/share"
)

// Nested L1 sizing: one guest at a time (the subOS's 512 MiB on 2 MiB
// hugepages, or QEMU's in a memfd), the shared directories and fio's
// files in L1's RAM.
const (
	nestedCPUs      = 3
	nestedMemoryMiB = 3072
	nestedHugePages = 300
)

type options struct {
	benchkit.Common
	fio        fio.Settings
	systems    string
	qemu       string
	fioTimeout time.Duration
	timeout    time.Duration
	verbose    bool
	systemd    bool
}

func main() {
	var o options
	o.fio = fio.DefaultSettings()
	o.AddFlags(flag.CommandLine, "fs", 3, "repetitions of each workload on each system")
	flag.IntVar(&o.fio.FileMiB, "file-mib", o.fio.FileMiB, "size of the data workloads' file, MiB")
	flag.IntVar(&o.fio.RuntimeSec, "runtime", o.fio.RuntimeSec, "seconds of each data workload (time-based)")
	flag.IntVar(&o.fio.Files, "files", o.fio.Files, "files the metadata workloads create, stat and unlink")
	flag.StringVar(&o.systems, "systems", strings.Join(report.Systems(), ","), "systems measured")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary measured (and, nested, the one running L1)")
	flag.DurationVar(&o.fioTimeout, "fio-timeout", 10*time.Minute, "bound on one fio run")
	flag.DurationVar(&o.timeout, "timeout", 0, "bound on the whole session (default: from -n and the workloads)")
	flag.BoolVar(&o.systemd, "systemd", true, "boot the subOS's Debian disk with systemd (false: fio from the disk in a chroot under the initramfs, as in the QEMU guest)")
	flag.BoolVar(&o.verbose, "v", false, "stream the whole session's output (L1 and guest consoles) to stderr")
	flag.Parse()
	systems, err := parseSystems(o.systems)
	if err != nil || o.Runs < 1 || o.fio.FileMiB < 1 || o.fio.RuntimeSec < 1 || o.fio.Files < 1 || o.fioTimeout < time.Second || flag.NArg() > 0 {
		if err != nil {
			fmt.Fprintln(os.Stderr, "fs:", err)
		}
		fmt.Fprintln(os.Stderr, "usage: fs [-n runs] [-json file] [-systems rffuse,qemu-virtiofsd,...] [flags]")
		os.Exit(2)
	}
	benchkit.Main("bench/fs", func(ctx context.Context) (*report.Report, error) { return run(ctx, o, systems, os.Stderr) },
		report.WriteTable, o.JSONPath)
}

// parseSystems reads -systems.
func parseSystems(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		known := false
		for _, k := range report.Systems() {
			known = known || k == name
		}
		if !known {
			return nil, fmt.Errorf("unknown system %q (known: %s)", name, strings.Join(report.Systems(), ", "))
		}
		out[name] = true
	}
	return out, nil
}

// run prepares and runs the session and returns the report; a session
// that ended early gives a partial report and an error.
func run(ctx context.Context, o options, systems map[string]bool, log io.Writer) (*report.Report, error) {
	ws, err := benchkit.Prepare(ctx, o.Common, log, "rf-bench-fs-", "rainforest/cmd/rfm", "rainforest/bench/fs/cmd/fsresult")
	if err != nil {
		return nil, err
	}
	defer ws.Remove()
	deb, err := images.FindDebian(o.ImagesDir)
	if err != nil {
		return nil, fmt.Errorf("the Debian image (make image-debian): %w", err)
	}
	vfsd, err := share.Find(ctx)
	if err != nil {
		return nil, err
	}
	fioBin, err := exec.LookPath("fio")
	if err != nil {
		return nil, fmt.Errorf("fio (scripts/setup.sh installs it): %w", err)
	}
	if fioBin, err = filepath.EvalSymlinks(fioBin); err != nil {
		return nil, err
	}
	// The cloud kernel has no 9p: qemu-9p boots Debian's generic kernel
	// of the same version, fetched (once, into the images cache) here.
	var generic *images.Image
	var genericErr error
	if systems[report.QEMU9p] {
		generic, genericErr = images.BuildFlavour(ctx, ws.Image, images.FlavourGeneric,
			images.Options{Modules: images.FlavourModules(images.NinePModules()...), Log: log})
		if genericErr != nil {
			if ctx.Err() != nil {
				return nil, genericErr
			}
			fmt.Fprintf(log, "bench/fs: %s skipped: %v\n", report.QEMU9p, genericErr)
			delete(systems, report.QEMU9p)
		}
	}
	p := &plan{runs: o.Runs, settings: o.fio, systems: systems, virtiofsd: vfsd, fioTimeout: int(o.fioTimeout / time.Second), systemd: o.systemd}
	rep := newReport(o, p, ws, deb, generic)
	if genericErr != nil {
		rep.Skipped[report.QEMU9p] = "Debian's generic kernel (9p) could not be built: " + genericErr.Error()
	}

	files := []kvmhost.File{
		{Var: "RFM", Host: ws.Binaries[0], L1: "/bin/rfm"},
		{Var: "FSRESULT", Host: ws.Binaries[1], L1: "/bin/fsresult"},
		{Var: "L2", Host: filepath.Dir(ws.Image.Kernel), L1: "/l2", Names: []string{filepath.Base(ws.Image.Kernel), filepath.Base(ws.Image.Initramfs)}},
	}
	if generic != nil {
		files = append(files, kvmhost.File{Var: "L2G", Host: filepath.Dir(generic.BzImage), L1: "/l2g",
			Names: []string{filepath.Base(generic.BzImage), filepath.Base(generic.Initramfs)}})
	}
	guests := filepath.Join(ws.Dir, "guests")
	if err := os.MkdirAll(guests, 0o755); err != nil {
		return nil, err
	}
	var guestNames []string
	for _, g := range p.qemuGuests() {
		name := guestScriptName(g.system)
		if err := os.WriteFile(filepath.Join(guests, name), []byte(p.guestScript(g.system)), 0o644); err != nil {
			return nil, err
		}
		guestNames = append(guestNames, name)
	}
	if len(guestNames) > 0 {
		files = append(files, kvmhost.File{Var: "GUESTS", Host: guests, L1: "/guests", Names: guestNames})
	}
	for _, dyn := range []struct{ v, bin string }{{"FIO", fioBin}, {"VIRTIOFSD", vfsd.Path}} {
		fs, err := kvmhost.DynamicFiles(ctx, dyn.bin)
		if err != nil {
			return nil, err
		}
		fs[0].Var = dyn.v
		files = append(files, fs...)
	}
	h := &kvmhost.Host{Nested: ws.Nested, Why: ws.Why, L1: ws.Image, QEMU: o.qemu}
	if o.verbose {
		h.Log = log
	}
	if ws.Nested {
		bios, err := qemuguest.BIOSFile(o.qemu)
		if err != nil {
			return nil, err
		}
		files = append(files, bios)
	}
	script := kvmhost.Script{Text: p.script(), Files: files, QEMU: o.qemu,
		Disks: []kvmhost.Disk{{Var: "DEBIAN", Host: deb.Disk}, {Var: "DEBIANQ", Host: deb.Disk}},
		CPUs:  nestedCPUs, MemoryMiB: nestedMemoryMiB, HugePages: nestedHugePages, Timeout: o.timeout}
	if script.Timeout <= 0 {
		// Boots, then per run and system the workloads (nested TCG: a
		// metadata workload of 10,000 files takes minutes).
		script.Timeout = 15*time.Minute + time.Duration(o.Runs*len(systems)*len(fio.Workloads(o.fio)))*time.Minute
	}
	fmt.Fprintf(log, "bench/fs: %s; session bound %v\n", ws.Why, script.Timeout)
	var mu sync.Mutex
	collect := &benchkit.Collector[report.Sample]{Parse: report.ParseLine, Progress: func(s report.Sample, n int) { progress(log, s, n) }}
	script.Lines = func(line string) {
		if info, ok := strings.CutPrefix(line, infoPrefix+" "); ok {
			fmt.Fprintf(log, "bench/fs: %s\n", bound(info))
			mu.Lock()
			rep.Notes = append(rep.Notes, "session: "+bound(info))
			mu.Unlock()
			return
		}
		if skip, ok := strings.CutPrefix(line, skipPrefix+" "); ok {
			sys, why, _ := strings.Cut(skip, " ")
			fmt.Fprintf(log, "bench/fs: %s skipped: %s\n", bound(sys), bound(why))
			mu.Lock()
			rep.Skipped[bound(sys)] = bound(why)
			mu.Unlock()
			return
		}
		collect.Line(line)
	}
	res, err := h.Run(ctx, script)
	got, perrs := collect.Results()
	got, dropped := report.Dedupe(got)
	if dropped > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d sample(s) measured again (a guest crashed and rebooted, running its script again): the later kept", dropped))
	}
	rep.Samples = got
	for _, e := range perrs {
		rep.Notes = append(rep.Notes, "unparsed result line: "+e.Error())
	}
	rep.Fill()
	if err == nil && res.ExitStatus != 0 {
		err = fmt.Errorf("the session script exited with %d", res.ExitStatus)
	}
	if err != nil {
		rep.MarkPartial(err)
		return rep, fmt.Errorf("session: %w", err)
	}
	for _, s := range got {
		if !s.OK() {
			return rep, fmt.Errorf("%s %s run %d failed", s.System, s.Workload, s.Run)
		}
	}
	return rep, nil
}

// bound cuts a line from the session (a guest may print it) for the log
// and report, quoted where it holds control characters.
func bound(s string) string {
	if len(s) > 500 {
		s = s[:500] + "..."
	}
	q := fmt.Sprintf("%q", s)
	if q[1:len(q)-1] != s {
		return q
	}
	return s
}

func progress(log io.Writer, s report.Sample, n int) {
	if !s.OK() {
		fmt.Fprintf(log, "bench/fs: [%d] %s %s run %d failed: %s\n", n, s.System, s.Workload, s.Run, benchkit.ShortenError(s.Error))
		return
	}
	unit, value := report.Metric(s.Workload)
	fmt.Fprintf(log, "bench/fs: [%d] %s %s run %d: %.1f %s (fio clat p99 %.0f us)\n", n, s.System, s.Workload, s.Run, value(s), unit, s.ClatP99Us)
}

// newReport describes the run.
// generic is the qemu-9p guest's kernel image (nil: not measured).
func newReport(o options, p *plan, ws *benchkit.Setup, deb *images.DebianImage, generic *images.Image) *report.Report {
	rep := &report.Report{Date: time.Now().UTC().Format(time.RFC3339), Runs: o.Runs, Nested: ws.Nested, HostReason: ws.Why,
		Guest: fmt.Sprintf("1 core (L1 core %d), %d MiB; kernel %s with RainForest's initramfs and the Debian disk %s",
			guestCore, guestMemoryMiB, ws.Image.KernelVersion, filepath.Base(deb.Disk)),
		Jobs: map[string]string{}, Systems: map[string]string{}, Skipped: map[string]string{}}
	for _, w := range fio.Workloads(o.fio) {
		rep.Jobs[w.Name] = shquote.Join(fioArgs(w, "DIR")[1:]) + " (fio 3.x; DIR is the system's directory)"
	}
	desc := map[string]string{
		report.RFfuse: fmt.Sprintf("rfm create fs --cores 1 --memory %dM --disk DEBIAN --append root=/dev/vda --share DIR:%s "+
			"(the Debian image booted with systemd, as --image debian does but without copying the disk); in the guest "+
			"mount -t virtiofs %s /mnt/%s; fio from the Debian disk through rfm exec", guestMemoryMiB, shareTag, shareTag, shareTag),
		report.QEMUVirtiofsd: p.virtiofsdArgv() + "; " + p.qemuArgv(qemuGuest{report.QEMUVirtiofsd, "$L2/vmlinux", "$L2/initramfs.cpio.gz"}) +
			"; the guest does not switch to the disk's systemd: its " +
			"initramfs mounts the share, then the guest script runs fio from the Debian disk in a chroot",
		report.QEMU9p: "the same QEMU guest command line (-fsdev local,security_model=passthrough + virtio-9p-pci) booted a second time " +
			"with Debian's generic kernel instead (see notes); mount -t 9p -o " + p9Mount + "; fio from the Debian disk in a chroot",
		report.VirtioBlk: "the rfm subOS's root disk (ext4 on virtio-blk, the Debian disk), directory /root/fsb",
		report.Host:      "fio directly where the guests run (nested: in L1, on its initramfs root file system)",
	}
	if !p.systemd {
		desc[report.RFfuse] = fmt.Sprintf("rfm create fs --cores 1 --memory %dM --disk DEBIAN --share DIR:%s (-systemd=false: "+
			"no root=, the subOS stays in its initramfs, which mounts the share at /shares/%s and the Debian disk at /mnt); "+
			"fio from the Debian disk in a chroot (rfm exec fs -- chroot /mnt fio ...), the share bound at /mnt/%s: "+
			"the same guest userspace as the QEMU guest's", guestMemoryMiB, shareTag, shareTag, shareTag)
		desc[report.VirtioBlk] = "the subOS's Debian disk (ext4 on virtio-blk, remounted read-write), directory /root/fsb in the chroot"
	}
	for sys := range p.systems {
		rep.Systems[sys] = desc[sys]
	}
	for _, sys := range report.Systems() {
		if !p.systems[sys] {
			rep.Skipped[sys] = "not in -systems"
		}
	}
	rep.Notes = append(rep.Notes,
		"data workloads: psync, direct=0 (page cache in use; fio invalidates the file's cache before each job), one job, "+
			"iodepth 1, time-based; the writes end with fsync (end_fsync=1), counted in their time",
		"metadata workloads: fio's filecreate, filestat and filedelete engines, one I/O per file: files/s = total I/Os / runtime",
		"spread% = (max - min) / median over the repetitions; p99 is over repetitions (nearest rank); "+
			"clat mean/p99 are fio's per-I/O completion latency (metadata: the create, stat or unlink call alone), median over repetitions; "+
			"files/s also counts fio's own work per file, which dominates under TCG")
	if generic != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("qemu-9p runs Debian's generic kernel %s (%s %s: the same version and ABI as the cloud kernel %s "+
			"of the other rows, another configuration) because the cloud flavour is built without 9p (CONFIG_NET_9P); "+
			"its initramfs (same /init) loads the same virtio modules plus ext4, 9pnet, 9pnet_virtio, 9p and their dependencies; "+
			"the two QEMU rows are separate boots, all qemu-virtiofsd runs first",
			generic.KernelVersion, generic.KernelPackage, generic.KernelPackageVersion, ws.Image.KernelVersion))
	}
	if ws.Nested {
		rep.Notes = append(rep.Notes, "everything runs in one nested L1 guest (QEMU TCG, every guest instruction emulated): "+
			"absolute numbers are not real hardware's; the rows share the same layer and cores")
	}
	return rep
}
