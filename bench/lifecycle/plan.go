package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/lifecycle/lxc"
	"rainforest/bench/lifecycle/sample"
	"rainforest/images"
	"rainforest/internal/nested"
	"rainforest/internal/shquote"
)

// nestedSetting names the nested measurement setting of rfm.
const nestedSetting = "inside the nested L1 guest (QEMU TCG with emulated AMD-V, 3 vCPUs: core 0 housekeeping, " +
	"subOSes on cores 1-2); absolute times are not those of real hardware"

// Nested L1 sizing: one small subOS at a time on 2 MiB hugepages, plus the
// initramfs (the L2 kernel and initramfs) in L1's RAM.
const (
	nestedCPUs      = 3
	nestedMemoryMiB = 3072
	nestedHugePages = 300
)

// binaries are the static programs built for the session.
type binaries struct{ rfm, measurer string }

// rfmPlan is the rfm half of a session.
type rfmPlan struct {
	runs       int
	memoryMiB  int
	runTimeout time.Duration
	// commands are the command lines run, by step (set by serveArgv and
	// measurerArgv).
	commands map[string]string
}

// rfmPaths are the paths of programs, images and state where rfm runs.
type rfmPaths struct {
	rfm, measurer, kernel, initrd     string
	socket, stateDir, runDir, hkCores string
}

func (p *rfmPlan) record(step string, argv []string) []string {
	if p.commands == nil {
		p.commands = map[string]string{}
	}
	p.commands[step] = shquote.Join(argv)
	return argv
}

// serveArgv is the supervisor's command line.
func (p *rfmPlan) serveArgv(paths rfmPaths) []string {
	argv := []string{paths.rfm, "serve", "--socket", paths.socket, "--state-dir", paths.stateDir, "--run-dir", paths.runDir}
	if paths.hkCores != "" {
		argv = append(argv, "--housekeeping", paths.hkCores)
	}
	return p.record("serve", argv)
}

// measurerArgv is the measurer's command line.
func (p *rfmPlan) measurerArgv(paths rfmPaths) []string {
	return p.record("measure", []string{paths.measurer, "-socket", paths.socket, "-n", strconv.Itoa(p.runs),
		"-kernel", paths.kernel, "-initrd", paths.initrd, "-cpus", "1", "-memory-mib", strconv.Itoa(p.memoryMiB),
		"-marker", images.InitReachedMarker, "-timeout", p.runTimeout.String()})
}

// script renders the L1 script: start rfm serve, run the measurer, stop
// the supervisor, and show its log when something failed.
func (p *rfmPlan) script(paths rfmPaths) string {
	var b strings.Builder
	b.WriteString("grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
	b.WriteString("echo \"RF-LIFECYCLE-INFO kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)\"\n")
	fmt.Fprintf(&b, "mkdir -p %s\n", shquote.Quote(filepath.Dir(paths.socket)))
	fmt.Fprintf(&b, "%s >/tmp/rf-serve.log 2>&1 &\n", shquote.Join(p.serveArgv(paths)))
	b.WriteString("serve=$!\n")
	fmt.Fprintf(&b, "%s\n", shquote.Join(p.measurerArgv(paths)))
	b.WriteString("st=$?\n")
	b.WriteString("kill $serve; wait $serve\n")
	fmt.Fprintf(&b, "if [ $st -ne 0 ]; then echo '== supervisor log'; tail -n 40 /tmp/rf-serve.log; echo '== subOS logs'; tail -n 20 %s/*.log; fi\n",
		shquote.Quote(paths.runDir))
	b.WriteString("exit $st\n")
	return b.String()
}

// runNested runs the rfm half inside one L1 guest and returns its output.
func runNested(ctx context.Context, o options, p *rfmPlan, img *images.Image, bins binaries, log io.Writer) (string, error) {
	files := map[string]string{
		"/bin/rfm":              bins.rfm,
		"/bin/rflifecycle":      bins.measurer,
		"/l2/vmlinux":           img.Kernel,
		"/l2/initramfs.cpio.gz": img.Initramfs,
	}
	script := p.script(rfmPaths{
		rfm: "/bin/rfm", measurer: "/bin/rflifecycle", kernel: "/l2/vmlinux", initrd: "/l2/initramfs.cpio.gz",
		socket: "/run/rf-bench/rfm.sock", stateDir: "/tmp/rf-bench/state", runDir: "/tmp/rf-bench/run", hkCores: "0",
	})
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 5*time.Minute + time.Duration(p.runs)*2*time.Minute
	}
	logW := benchkit.ProgressWriter(log, sample.LinePrefix, o.verbose)
	res, err := nested.Run(ctx, nested.Config{
		L1Kernel: img, ExtraFiles: files, Script: script, CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB,
		HugePages: nestedHugePages, Timeout: timeout, Log: logW, QEMU: o.qemu,
	})
	if err != nil {
		return "", err
	}
	if res.ExitStatus != 0 {
		return res.Output, fmt.Errorf("L1 script exited with %d; output tail:\n%s", res.ExitStatus, tail(res.Output, 4000))
	}
	return res.Output, nil
}

// runDirect runs the rfm half on this host: rfm serve with its own
// socket, state and run directories under work, and the measurer.
func runDirect(ctx context.Context, o options, p *rfmPlan, img *images.Image, bins binaries, work string, log io.Writer) (string, error) {
	paths := rfmPaths{
		rfm: bins.rfm, measurer: bins.measurer, kernel: img.Kernel, initrd: img.Initramfs,
		socket: filepath.Join(work, "rfm.sock"), stateDir: filepath.Join(work, "state"), runDir: filepath.Join(work, "run"),
	}
	serveArgv := p.serveArgv(paths)
	serve := exec.CommandContext(ctx, serveArgv[0], serveArgv[1:]...)
	var serveLog bytes.Buffer
	serve.Stdout, serve.Stderr = &serveLog, &serveLog
	serve.Cancel = func() error { return serve.Process.Signal(syscall.SIGTERM) }
	serve.WaitDelay = 15 * time.Second
	if err := serve.Start(); err != nil {
		return "", fmt.Errorf("rfm serve: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- serve.Wait() }() // owner: this function, which waits for it below
	stopServe := func() error {
		_ = serve.Process.Signal(syscall.SIGTERM)
		return <-served
	}

	mArgv := p.measurerArgv(paths)
	m := exec.CommandContext(ctx, mArgv[0], mArgv[1:]...)
	var out bytes.Buffer
	progress := benchkit.ProgressWriter(log, sample.LinePrefix, o.verbose)
	m.Stdout = io.MultiWriter(&out, progress)
	m.Stderr = log
	merr := m.Run()
	serr := stopServe()
	if serr != nil && !stoppedByTerm(serr) {
		fmt.Fprintf(log, "bench/lifecycle: rfm serve: %v\n", serr)
	}
	if merr != nil {
		return out.String(), fmt.Errorf("rflifecycle: %w; supervisor log tail:\n%s", merr, tail(serveLog.String(), 4000))
	}
	return out.String(), nil
}

// runLXC measures the LXC cycles on this host. It returns the samples and
// the commands, or why LXC could not be measured.
func runLXC(ctx context.Context, o options, work string, log io.Writer) ([]sample.Sample, map[string]string, error) {
	if err := lxc.Available(); err != nil {
		return nil, nil, err
	}
	cfg := lxc.Config{NamePrefix: "rf-bench-lc-" + strconv.Itoa(os.Getpid()) + "-", ConfigFile: filepath.Join(work, "lxc.conf")}
	if err := lxc.WriteConfig(cfg.ConfigFile); err != nil {
		return nil, nil, err
	}
	cmds := lxc.Commands(cfg, cfg.NamePrefix+"N")
	var samples []sample.Sample
	for i := 1; i <= o.runs; i++ {
		s := lxc.Cycle(ctx, cfg, i)
		fmt.Fprintln(log, sample.FormatLine(s))
		samples = append(samples, s)
		if ctx.Err() != nil {
			break
		}
	}
	return samples, cmds, nil
}

// stoppedByTerm reports whether err is the exit of a process ended by
// the SIGTERM we sent it.
func stoppedByTerm(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
