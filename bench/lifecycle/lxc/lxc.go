// Package lxc measures LXC container create and destroy latency on this
// host with the lxc-* tools, as the peer of a subOS's lifecycle: create is
// lxc-create (busybox template) plus lxc-start -d, timed until they return
// and until `lxc-attach -- true` succeeds (the container's init runs);
// destroy is lxc-stop -k plus lxc-destroy; CPU and memory online and
// offline are lxc-cgroup changes of the running container's cpuset and
// memory limit. Containers are removed even when a cycle fails.
package lxc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/lifecycle/sample"
	"rainforest/internal/units"
)

// System is the name of the measured system in samples.
const System = "lxc"

// ConfigText is the container configuration: no network (this host has no
// lxcbr0 bridge) and no AppArmor profile (the host has no AppArmor).
const ConfigText = "lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n"

// Defaults for Config fields left zero.
const (
	DefaultPoll    = 5 * time.Millisecond
	DefaultTimeout = 60 * time.Second
)

// Tools are the programs a cycle runs.
func Tools() []string {
	return []string{"lxc-create", "lxc-start", "lxc-attach", "lxc-stop", "lxc-destroy", "busybox"}
}

// ErrUnavailable means LXC cannot be measured on this host.
var ErrUnavailable = errors.New("lxc: not available")

// Available reports whether the tools are installed and we are root.
func Available() error {
	var missing []string
	for _, t := range Tools() {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s not found (apt-get install lxc busybox-static)", ErrUnavailable, strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: lxc-create needs root for system containers", ErrUnavailable)
	}
	return nil
}

// Exec runs a program and returns its combined output.
type Exec func(ctx context.Context, name string, args ...string) ([]byte, error)

// Run is the Exec that runs programs for real.
func Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// Config describes the cycles to measure.
type Config struct {
	// NamePrefix starts each container's name; the run number follows.
	NamePrefix string
	// ConfigFile is the lxc-create -f file (see WriteConfig).
	ConfigFile string
	// Timeout bounds the wait for lxc-attach (default DefaultTimeout).
	Timeout time.Duration
	// Poll is the interval between lxc-attach tries (default DefaultPoll).
	Poll time.Duration
	// Exec runs the tools (default Run).
	Exec Exec
	// ResizeFrom and ResizeTo, when set, are cpulists: the running
	// container's cpuset is set to ResizeFrom, then timed growing to
	// ResizeTo (CPU online) and back (CPU offline).
	ResizeFrom, ResizeTo string
	// Memory, when its Key is set, is a memory limit change timed the
	// same way, after the CPU one (MemoryLimits).
	Memory MemoryResize
}

// MemoryResize is a change of a container's memory limit: its cgroup
// file Key set to From, then timed growing to To (memory online) and
// back (memory offline). For a container this is only a limit change:
// no memory is added to or taken from anything.
type MemoryResize struct {
	Key, From, To string
}

// MemoryLimits returns the memory resize of a container from base bytes
// to step bytes more on this host: memory.limit_in_bytes where the cgroup
// v1 memory controller is mounted (at sysRoot/fs/cgroup/memory, sysRoot
// normally /sys), else cgroup v2's memory.max.
func MemoryLimits(sysRoot string, base, step uint64) MemoryResize {
	key := "memory.max"
	if fi, err := os.Stat(filepath.Join(sysRoot, "fs", "cgroup", "memory")); err == nil && fi.IsDir() {
		key = "memory.limit_in_bytes"
	}
	return MemoryResize{Key: key, From: strconv.FormatUint(base, 10), To: strconv.FormatUint(base+step, 10)}
}

// WriteConfig writes ConfigText to path.
func WriteConfig(path string) error {
	if err := os.WriteFile(path, []byte(ConfigText), 0o644); err != nil {
		return fmt.Errorf("lxc: %w", err)
	}
	return nil
}

// Commands returns the command lines of one cycle for a container name,
// for the report.
func Commands(cfg Config, name string) map[string]string {
	m := map[string]string{
		"create":  "lxc-create -t busybox -n " + name + " -f " + cfg.ConfigFile + " && lxc-start -n " + name + " -d",
		"init":    "lxc-attach -n " + name + " -- true, retried every " + pollOf(cfg).String() + " until it succeeds",
		"destroy": "lxc-stop -k -n " + name + " && lxc-destroy -n " + name,
	}
	if cfg.ResizeFrom != "" {
		m["cpu online"] = "lxc-cgroup -n " + name + " cpuset.cpus " + cfg.ResizeTo + " (from " + cfg.ResizeFrom + ")"
		m["cpu offline"] = "lxc-cgroup -n " + name + " cpuset.cpus " + cfg.ResizeFrom
	}
	if mr := cfg.Memory; mr.Key != "" {
		m["memory online"] = "lxc-cgroup -n " + name + " " + mr.Key + " " + mr.To + " (from " + mr.From + ")"
		m["memory offline"] = "lxc-cgroup -n " + name + " " + mr.Key + " " + mr.From
	}
	return m
}

// ResizeCPUs returns the cpulists of a container's resize on this host:
// its first online CPU, and its first two ("" when it has only one).
func ResizeCPUs() (from, to string) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return "", ""
	}
	cpus, err := units.ParseCPUList(strings.TrimSpace(string(b)))
	if err != nil || len(cpus) < 2 {
		return "", ""
	}
	return strconv.Itoa(cpus[0]), units.FormatCPUList(cpus[:2])
}

func pollOf(cfg Config) time.Duration {
	if cfg.Poll <= 0 {
		return DefaultPoll
	}
	return cfg.Poll
}

// Cycle creates, starts, waits for and destroys one container.
func Cycle(ctx context.Context, cfg Config, run int) sample.Sample {
	if cfg.Exec == nil {
		cfg.Exec = Run
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	poll := pollOf(cfg)
	s := sample.Sample{System: System, Run: run}
	name := cfg.NamePrefix + strconv.Itoa(run)
	clean := false
	defer func() {
		if !clean {
			Remove(context.WithoutCancel(ctx), cfg.Exec, name)
		}
	}()
	step := func(args ...string) error {
		out, err := cfg.Exec(ctx, args[0], args[1:]...)
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(tail(string(out))))
		}
		return nil
	}

	start := time.Now()
	if err := step("lxc-create", "-t", "busybox", "-n", name, "-f", cfg.ConfigFile); err != nil {
		s.Error = err.Error()
		return s
	}
	if err := step("lxc-start", "-n", name, "-d"); err != nil {
		s.Error = err.Error()
		return s
	}
	s.CreateReturn = time.Since(start)
	deadline := start.Add(cfg.Timeout)
	for {
		_, err := cfg.Exec(ctx, "lxc-attach", "-n", name, "--", "true")
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Error = fmt.Sprintf("lxc-attach -n %s -- true still failing after %v: %v", name, cfg.Timeout, err)
			return s
		}
		select {
		case <-ctx.Done():
		case <-time.After(poll):
		}
	}
	s.CreateInit = time.Since(start)
	if cfg.ResizeFrom != "" {
		// Table 4's CPU online and offline of a container: its cpuset
		// grows by a core and shrinks back.
		if err := step("lxc-cgroup", "-n", name, "cpuset.cpus", cfg.ResizeFrom); err != nil {
			s.Error = err.Error()
			return s
		}
		start = time.Now()
		if err := step("lxc-cgroup", "-n", name, "cpuset.cpus", cfg.ResizeTo); err != nil {
			s.Error = err.Error()
			return s
		}
		s.CPUOnline = time.Since(start)
		start = time.Now()
		if err := step("lxc-cgroup", "-n", name, "cpuset.cpus", cfg.ResizeFrom); err != nil {
			s.Error = err.Error()
			return s
		}
		s.CPUOffline = time.Since(start)
	}
	if mr := cfg.Memory; mr.Key != "" {
		// Table 4's memory online and offline of a container: its
		// memory limit grows by the step and shrinks back.
		if err := step("lxc-cgroup", "-n", name, mr.Key, mr.From); err != nil {
			s.Error = err.Error()
			return s
		}
		start = time.Now()
		if err := step("lxc-cgroup", "-n", name, mr.Key, mr.To); err != nil {
			s.Error = err.Error()
			return s
		}
		s.MemOnline = time.Since(start)
		start = time.Now()
		if err := step("lxc-cgroup", "-n", name, mr.Key, mr.From); err != nil {
			s.Error = err.Error()
			return s
		}
		s.MemOffline = time.Since(start)
	}

	start = time.Now()
	if err := step("lxc-stop", "-k", "-n", name); err != nil {
		s.Error = err.Error()
		return s
	}
	s.DestroyReturn = time.Since(start)
	if err := step("lxc-destroy", "-n", name); err != nil {
		s.Error = err.Error()
		return s
	}
	s.Destroy = time.Since(start)
	clean = true
	return s
}

// Remove stops and destroys a container, ignoring errors (it may not
// exist). It is bounded by 30 seconds.
func Remove(ctx context.Context, ex Exec, name string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, _ = ex(ctx, "lxc-stop", "-k", "-n", name)
	_, _ = ex(ctx, "lxc-destroy", "-f", "-n", name)
}

func tail(s string) string {
	const n = 400
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
