package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"rainforest/images"
	"rainforest/internal/kvmhost"
	"rainforest/internal/shquote"
)

// VMM names in the results.
const (
	vmmRFM  = "rfm"
	vmmQEMU = "qemu"
)

// Nested L1 sizing: one 512 MiB guest at a time on 2 MiB pages, plus the
// initramfs (QEMU and its libraries, the L2 kernel) in L1's RAM.
const (
	nestedCPUs      = 2
	nestedMemoryMiB = 3072
	nestedHugePages = 300
)

// infoPrefix starts the line the script prints first, about where it runs.
const infoPrefix = "RF-BENCH-INFO"

// benchPlan is what one benchmark session runs.
type benchPlan struct {
	runs       int
	runTimeout time.Duration
	qemuCPU    string
	verbose    bool
	// commands are the VMM command lines, by VMM name (set by script).
	commands map[string]string
}

// vmmPaths are the paths of the programs and images where the script runs.
type vmmPaths struct {
	rfbench, rfm, qemu, qemuData, kernel, initrd, hugetlbfs string
}

// binaries are the static programs built for the session.
type binaries struct{ rfm, rfbench string }

// argv returns the command lines of both VMMs.
func (p *benchPlan) argv(paths vmmPaths) map[string][]string {
	mem := strconv.Itoa(guestMemoryMiB) + "M"
	return map[string][]string{
		vmmRFM: {paths.rfm, "vmm", "--name", "bench", "--kernel", paths.kernel, "--initrd", paths.initrd,
			"--cores", "0-" + strconv.Itoa(guestCPUs-1), "--memory", mem, "--page-size", "2M",
			"--console", "stdio", "--cmdline", cmdline},
		vmmQEMU: {paths.qemu, "-M", "microvm,acpi=on,memory-backend=ram", "-enable-kvm", "-cpu", p.qemuCPU,
			"-smp", strconv.Itoa(guestCPUs), "-m", mem,
			"-object", "memory-backend-file,id=ram,size=" + mem + ",mem-path=" + paths.hugetlbfs + ",prealloc=on",
			"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-L", paths.qemuData,
			"-name", "bench,debug-threads=on", // vCPU threads named "CPU N/KVM"
			"-kernel", paths.kernel, "-initrd", paths.initrd, "-append", cmdline},
	}
}

// script renders the shell script that runs every measurement; the order
// of the two VMMs alternates from run to run.
func (p *benchPlan) script(paths vmmPaths) string {
	argv := p.argv(paths)
	p.commands = map[string]string{}
	for name, a := range argv {
		p.commands[name] = shquote.Join(a)
	}
	var b strings.Builder
	b.WriteString("echo \"" + infoPrefix + " kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)\"\n")
	b.WriteString(shquote.Quote(paths.qemu) + " --version | head -n 1\n")
	for i := 1; i <= p.runs; i++ {
		order := []string{vmmRFM, vmmQEMU}
		if i%2 == 0 {
			order = []string{vmmQEMU, vmmRFM}
		}
		for _, name := range order {
			fmt.Fprintf(&b, "%s -vmm %s -run %d -timeout %s -echo=%t -marker %s -idle-after %s -idle-delay %s -idle-window %s -- %s\n",
				shquote.Quote(paths.rfbench), name, i, p.runTimeout, p.verbose, images.InitReachedMarker,
				idleAfter, idleDelay, idleWindow, p.commands[name])
		}
	}
	b.WriteString("true\n")
	return b.String()
}

// files are the programs and images the script uses.
func files(img *images.Image, bins binaries) (rfbench, rfm, l2 kvmhost.File) {
	return kvmhost.File{Host: bins.rfbench, L1: "/bin/rfbench"}, kvmhost.File{Host: bins.rfm, L1: "/bin/rfm"},
		kvmhost.File{Host: filepath.Dir(img.Kernel), L1: "/l2", Names: []string{filepath.Base(img.Kernel), filepath.Base(img.Initramfs)}}
}

// runSession runs the script on h (nested or directly), passing each
// sample to collect as its line arrives.
func runSession(ctx context.Context, o options, p *benchPlan, h *kvmhost.Host, img *images.Image, bins binaries, collect func(string)) error {
	rfbench, rfm, l2 := files(img, bins)
	qemu, qemuData, err := h.QEMUPaths(o.qemu)
	if err != nil {
		return err
	}
	hugetlbfs := "/dev/hugepages" // L1's
	if !h.Nested {
		if err := checkHugetlbfs(o.hugetlbfs); err != nil {
			return err
		}
		hugetlbfs = o.hugetlbfs
	}
	script := p.script(vmmPaths{
		rfbench: h.Path(rfbench), rfm: h.Path(rfm), qemu: qemu, qemuData: qemuData,
		kernel: filepath.Join(h.Path(l2), filepath.Base(img.Kernel)), initrd: filepath.Join(h.Path(l2), filepath.Base(img.Initramfs)),
		hugetlbfs: hugetlbfs,
	})
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 5*time.Minute + time.Duration(2*p.runs)*3*time.Minute
	}
	res, err := h.Run(ctx, kvmhost.Script{
		Text: script, Files: []kvmhost.File{rfbench, rfm, l2}, QEMU: o.qemu,
		CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB, HugePages: nestedHugePages, Timeout: timeout, Lines: collect,
	})
	if err != nil {
		return err
	}
	if res.ExitStatus != 0 {
		return fmt.Errorf("benchmark script exited with status %d", res.ExitStatus)
	}
	return nil
}

// checkHugetlbfs makes sure dir is a hugetlbfs mount (QEMU's guest RAM).
func checkHugetlbfs(dir string) error {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == dir && f[2] == "hugetlbfs" {
			return nil
		}
	}
	return fmt.Errorf("%s is not a hugetlbfs mount (mount -t hugetlbfs none %s)", dir, dir)
}
