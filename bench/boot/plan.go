package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/boot/measure"
	"rainforest/bench/internal/benchkit"
	"rainforest/images"
	"rainforest/internal/nested"
	"rainforest/internal/qemubundle"
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
	// libraryPath, when set, is exported as LD_LIBRARY_PATH.
	libraryPath string
}

// binaries are the static programs built for the session.
type binaries struct{ rfm, rfbench string }

// argv returns the command lines of both VMMs.
func (p *benchPlan) argv(paths vmmPaths) map[string][]string {
	mem := strconv.Itoa(guestMemoryMiB) + "M"
	return map[string][]string{
		vmmRFM: {paths.rfm, "vmm", "--name", "bench", "--kernel", paths.kernel, "--initrd", paths.initrd,
			"--cpus", "0-" + strconv.Itoa(guestCPUs-1), "--memory", mem, "--page-size", "2M",
			"--console", "stdio", "--cmdline", cmdline},
		vmmQEMU: {paths.qemu, "-M", "microvm,acpi=on,memory-backend=ram", "-enable-kvm", "-cpu", p.qemuCPU,
			"-smp", strconv.Itoa(guestCPUs), "-m", mem,
			"-object", "memory-backend-file,id=ram,size=" + mem + ",mem-path=" + paths.hugetlbfs + ",prealloc=on",
			"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-L", paths.qemuData,
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
	b.WriteString("echo \"RF-BENCH-INFO kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)\"\n")
	if paths.libraryPath != "" {
		b.WriteString("export LD_LIBRARY_PATH=" + shquote.Quote(paths.libraryPath) + "\n")
	}
	b.WriteString(shquote.Quote(paths.qemu) + " --version | head -n 1\n")
	for i := 1; i <= p.runs; i++ {
		order := []string{vmmRFM, vmmQEMU}
		if i%2 == 0 {
			order = []string{vmmQEMU, vmmRFM}
		}
		for _, name := range order {
			fmt.Fprintf(&b, "%s -vmm %s -run %d -timeout %s -echo=%t -marker %s -- %s\n",
				shquote.Quote(paths.rfbench), name, i, p.runTimeout, p.verbose, images.InitReachedMarker, p.commands[name])
		}
	}
	b.WriteString("true\n")
	return b.String()
}

// runNested runs the script inside one L1 guest and returns its output.
func runNested(ctx context.Context, o options, p *benchPlan, img *images.Image, bins binaries, log io.Writer) (string, error) {
	qemu, err := exec.LookPath(o.qemu)
	if err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	bundle, err := qemubundle.Collect(ctx, qemu)
	if err != nil {
		return "", err
	}
	files := bundle.Files
	files["/bin/rfm"] = bins.rfm
	files["/bin/rfbench"] = bins.rfbench
	files["/l2/vmlinux"] = img.Kernel
	files["/l2/initramfs.cpio.gz"] = img.Initramfs
	script := p.script(vmmPaths{
		rfbench: "/bin/rfbench", rfm: "/bin/rfm", qemu: qemubundle.GuestBinary, qemuData: qemubundle.GuestDataDir,
		kernel: "/l2/vmlinux", initrd: "/l2/initramfs.cpio.gz", hugetlbfs: "/dev/hugepages",
		libraryPath: strings.Join(bundle.LibDirs, ":"),
	})
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 5*time.Minute + time.Duration(2*p.runs)*3*time.Minute
	}
	logW := benchkit.ProgressWriter(log, measure.LinePrefix, o.verbose)
	res, err := nested.Run(ctx, nested.Config{
		L1Kernel: img, ExtraFiles: files, Script: script, CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB,
		HugePages: nestedHugePages, Timeout: timeout, Log: logW, QEMU: qemu,
	})
	if err != nil {
		return "", err
	}
	return res.Output, nil
}

// runDirect runs the script on this host and returns its output.
func runDirect(ctx context.Context, o options, p *benchPlan, img *images.Image, bins binaries, log io.Writer) (string, error) {
	qemu, err := exec.LookPath(o.qemu)
	if err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	if err := checkHugetlbfs(o.hugetlbfs); err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(qemu)
	if err != nil {
		return "", err
	}
	script := p.script(vmmPaths{
		rfbench: bins.rfbench, rfm: bins.rfm, qemu: qemu,
		qemuData: filepath.Join(filepath.Dir(real), "..", "share", "qemu"),
		kernel:   img.Kernel, initrd: img.Initramfs, hugetlbfs: o.hugetlbfs,
	})
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	var out bytes.Buffer
	progress := benchkit.ProgressWriter(log, measure.LinePrefix, o.verbose)
	cmd.Stdout = io.MultiWriter(&out, progress)
	cmd.Stderr = log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("benchmark script: %w", err)
	}
	return out.String(), nil
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
