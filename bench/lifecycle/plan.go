package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/lifecycle/lxc"
	"rainforest/bench/lifecycle/sample"
	"rainforest/images"
	"rainforest/internal/kvmhost"
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

// infoPrefix starts the line the script prints first, about where it runs.
const infoPrefix = "RF-LIFECYCLE-INFO"

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
	rfm, measurer, kernel, initrd string
	// work holds the supervisor's socket, state, run directory and log.
	work    string
	hkCores string
}

func (p rfmPaths) socket() string   { return filepath.Join(p.work, "rfm.sock") }
func (p rfmPaths) stateDir() string { return filepath.Join(p.work, "state") }
func (p rfmPaths) runDir() string   { return filepath.Join(p.work, "run") }
func (p rfmPaths) serveLog() string { return filepath.Join(p.work, "serve.log") }

func (p *rfmPlan) record(step string, argv []string) []string {
	if p.commands == nil {
		p.commands = map[string]string{}
	}
	p.commands[step] = shquote.Join(argv)
	return argv
}

// serveArgv is the supervisor's command line.
func (p *rfmPlan) serveArgv(paths rfmPaths) []string {
	argv := []string{paths.rfm, "serve", "--socket", paths.socket(), "--state-dir", paths.stateDir(), "--run-dir", paths.runDir()}
	if paths.hkCores != "" {
		argv = append(argv, "--housekeeping", paths.hkCores)
	}
	return p.record("serve", argv)
}

// measurerArgv is the measurer's command line.
func (p *rfmPlan) measurerArgv(paths rfmPaths) []string {
	return p.record("measure", []string{paths.measurer, "-socket", paths.socket(), "-n", strconv.Itoa(p.runs),
		"-kernel", paths.kernel, "-initrd", paths.initrd, "-cpus", "1", "-memory-mib", strconv.Itoa(p.memoryMiB),
		"-marker", images.InitReachedMarker, "-timeout", p.runTimeout.String(), "-resize"})
}

// script renders the L1 script: start rfm serve, run the measurer, stop
// the supervisor, and show its log when something failed.
func (p *rfmPlan) script(paths rfmPaths) string {
	var b strings.Builder
	b.WriteString("grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
	b.WriteString("echo \"" + infoPrefix + " kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)\"\n")
	fmt.Fprintf(&b, "mkdir -p %s\n", shquote.Quote(paths.work))
	fmt.Fprintf(&b, "%s >%s 2>&1 &\n", shquote.Join(p.serveArgv(paths)), shquote.Quote(paths.serveLog()))
	b.WriteString("serve=$!\n")
	fmt.Fprintf(&b, "%s\n", shquote.Join(p.measurerArgv(paths)))
	b.WriteString("st=$?\n")
	b.WriteString("kill $serve; wait $serve\n")
	fmt.Fprintf(&b, "if [ $st -ne 0 ]; then echo '== supervisor log'; tail -n 40 %s; echo '== subOS logs'; tail -n 20 %s/*.log; fi\n",
		shquote.Quote(paths.serveLog()), shquote.Quote(paths.runDir()))
	b.WriteString("exit $st\n")
	return b.String()
}

// runSession runs the rfm half on h, nested or directly (where the
// supervisor's files go under work), passing each line to collect as it
// arrives.
func runSession(ctx context.Context, o options, p *rfmPlan, h *kvmhost.Host, img *images.Image, bins binaries, work string, collect func(string)) error {
	rfm := kvmhost.File{Host: bins.rfm, L1: "/bin/rfm"}
	measurer := kvmhost.File{Host: bins.measurer, L1: "/bin/rflifecycle"}
	l2 := kvmhost.File{Host: filepath.Dir(img.Kernel), L1: "/l2", Names: []string{filepath.Base(img.Kernel), filepath.Base(img.Initramfs)}}
	paths := rfmPaths{rfm: h.Path(rfm), measurer: h.Path(measurer),
		kernel: filepath.Join(h.Path(l2), filepath.Base(img.Kernel)), initrd: filepath.Join(h.Path(l2), filepath.Base(img.Initramfs)), work: work}
	if h.Nested {
		// L1 is the whole machine: core 0 stays with the supervisor.
		paths.work, paths.hkCores = "/tmp/rf-bench", "0"
	}
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 5*time.Minute + time.Duration(p.runs)*2*time.Minute
	}
	res, err := h.Run(ctx, kvmhost.Script{
		Text: p.script(paths), Files: []kvmhost.File{rfm, measurer, l2},
		CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB, HugePages: nestedHugePages, Timeout: timeout, Lines: collect,
	})
	if err != nil {
		return err
	}
	if res.ExitStatus != 0 {
		return fmt.Errorf("the measuring script exited with %d; output tail:\n%s", res.ExitStatus, tail(res.Output, 4000))
	}
	return nil
}

// runLXC measures the LXC cycles on this host. It returns the samples and
// the commands, or why LXC could not be measured.
func runLXC(ctx context.Context, o options, work string, log io.Writer) ([]sample.Sample, map[string]string, error) {
	if err := lxc.Available(); err != nil {
		return nil, nil, err
	}
	cfg := lxc.Config{NamePrefix: "rf-bench-lc-" + strconv.Itoa(os.Getpid()) + "-", ConfigFile: filepath.Join(work, "lxc.conf")}
	cfg.ResizeFrom, cfg.ResizeTo = lxc.ResizeCPUs()
	if err := lxc.WriteConfig(cfg.ConfigFile); err != nil {
		return nil, nil, err
	}
	cmds := lxc.Commands(cfg, cfg.NamePrefix+"N")
	var samples []sample.Sample
	for i := 1; i <= o.Runs; i++ {
		s := lxc.Cycle(ctx, cfg, i)
		samples = append(samples, s)
		progress(log, s, len(samples), o.Runs)
		if ctx.Err() != nil {
			break
		}
	}
	return samples, cmds, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
