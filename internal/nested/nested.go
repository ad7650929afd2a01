// Package nested is RainForest's nested test layer. On hosts whose
// /dev/kvm cannot run Linux guest kernels (a paravirtual KVM back end, or
// no VT-x/AMD-V), end-to-end tests run inside an "L1" Linux guest booted
// by QEMU's software CPU with emulated AMD SVM. L1 loads kvm and kvm-amd
// from the same Debian kernel package, so it has a real /dev/kvm on which
// the project's static binaries run "L2" guests.
//
// Run builds the L1 initramfs (busybox, the kvm modules, the caller's
// files and script), boots L1, follows its serial console, and returns the
// script's output and exit status, which /init frames with BeginMarker and
// ExitMarker. The script's lines reach Config.Lines as they arrive. L1's
// /init prints a heartbeat (HeartbeatMarker) that is removed from the
// output; a session silent for Config.Silence is killed (ErrSilent).
//
// Most callers want internal/kvmhost, which runs a script here or
// directly on a host with working KVM.
package nested

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"rainforest/images"
	"rainforest/internal/lines"
	"rainforest/vmm"
)

// Markers printed by the L1 /init around the caller's script.
const (
	BeginMarker = "RF-NESTED-BEGIN"
	ExitMarker  = "RF-NESTED-EXIT"
)

// Defaults for Config fields left zero.
const (
	DefaultQEMU      = "qemu-system-x86_64"
	DefaultCPUs      = 2
	DefaultMemoryMiB = 4096
	DefaultTimeout   = 10 * time.Minute
	// DefaultSilence is six missed heartbeats.
	DefaultSilence = 6 * HeartbeatInterval
	// DefaultBootTimeout bounds the wait for L1's first heartbeat: the
	// kernel unpacks the initramfs (L2 images, QEMU) in software first;
	// a few seconds normally.
	DefaultBootTimeout = 2 * time.Minute
	// scriptPath is where the caller's script is placed in L1.
	scriptPath = "/test.sh"
	// maxSerial bounds the serial output kept in memory, and the script
	// output; older output is dropped (it was still streamed to Config.Log
	// and Config.Lines).
	maxSerial = 16 << 20
	// tailLen is how much serial output error messages carry.
	tailLen = 4000
)

// Sentinel errors callers can branch on.
var (
	// ErrQEMUNotFound means the QEMU binary is not installed.
	ErrQEMUNotFound = errors.New("nested: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
	// ErrTimeout means L1 did not finish within Config.Timeout and was killed.
	ErrTimeout = errors.New("nested: L1 guest timed out")
	// ErrSilent means L1 printed neither a heartbeat nor anything else
	// for Config.Silence (or no heartbeat within Config.BootTimeout of
	// starting) and was killed: it froze or died without QEMU exiting.
	ErrSilent = errors.New("nested: L1 guest silent")
	// ErrNoExitMarker means L1 stopped without printing the exit marker.
	ErrNoExitMarker = errors.New("nested: L1 guest ended without exit marker")
	// ErrBadConfig means the configuration is incomplete or invalid.
	ErrBadConfig = errors.New("nested: bad configuration")
)

// L1Failed reports whether err says that the L1 guest itself failed: it
// died (ErrNoExitMarker), froze or went silent (ErrSilent), or hung until
// the session's timeout (ErrTimeout). That is the test layer failing, not
// necessarily what the script runs.
func L1Failed(err error) bool {
	return errors.Is(err, ErrNoExitMarker) || errors.Is(err, ErrSilent) || errors.Is(err, ErrTimeout)
}

// L1Modules are the modules /init loads to get /dev/kvm, and TAP devices,
// bridges, vhost-net (/dev/vhost-net) and nftables (the TAPs' source
// guards: its netdev family, payload, meta and counter expressions are
// in nf_tables itself) for subOS NICs (dependencies are resolved from the
// kernel's module info).
func L1Modules() []string {
	return []string{"irqbypass", "kvm", "kvm_amd", "tun", "bridge", "vhost_net", "nf_tables"}
}

// Config describes one L1 run.
type Config struct {
	// L1Kernel supplies the L1 kernel (BzImage), its modules (ModulesDir)
	// and busybox; images.Build returns it.
	L1Kernel *images.Image
	// ExtraFiles maps guest paths to host files copied into the L1
	// initramfs (permission bits kept), e.g. "/bin/rfm" or the L2
	// vmlinux/initramfs/disk.
	ExtraFiles map[string]string
	// Script is the shell script run in L1 as /test.sh.
	Script string
	// CPUs and MemoryMiB size the L1 guest (defaults DefaultCPUs,
	// DefaultMemoryMiB).
	CPUs      int
	MemoryMiB int
	// HugePages is the number of 2 MiB hugepages reserved in L1
	// (hugetlbfs is mounted at /dev/hugepages).
	HugePages int
	// Modules are extra modules (with dependencies) loaded after the kvm
	// modules, e.g. "vfio_pci".
	Modules []string
	// Timeout bounds the whole run (default DefaultTimeout); qemu is killed
	// when it expires.
	Timeout time.Duration
	// Silence bounds how long a running L1 may print neither a heartbeat
	// nor anything else before QEMU is killed with ErrSilent (default
	// DefaultSilence; keep it several HeartbeatIntervals).
	Silence time.Duration
	// BootTimeout bounds the time from starting QEMU to L1's first
	// heartbeat (default DefaultBootTimeout); ErrSilent too.
	BootTimeout time.Duration
	// Log receives L1's serial console output as it arrives, heartbeats
	// included, and QEMU's own messages (may be nil).
	Log io.Writer
	// Lines, when set, receives each line of the script's output as it
	// arrives, without its line end and with heartbeats removed; it is
	// called from one goroutine at a time.
	Lines func(line string)
	// QEMU is the QEMU binary (default DefaultQEMU, looked up in PATH).
	QEMU string
	// QEMUArgs are appended to the QEMU command line (e.g. extra devices).
	QEMUArgs []string
	// Cmdline is appended to L1's kernel command line.
	Cmdline string
	// WorkDir holds the generated initramfs; empty means a temporary
	// directory removed when the run ends.
	WorkDir string
}

// Result is the outcome of a run that reached the exit marker.
type Result struct {
	// ExitStatus is the script's exit status.
	ExitStatus int
	// Output is the script's output: the lines between the markers, each
	// ending in LF, heartbeats removed.
	Output string
	// Serial is all serial output kept (bounded), CR LF turned into LF.
	Serial string
	// Duration is the wall time from starting QEMU until it exited.
	Duration time.Duration
}

// Session is one running L1 guest. QEMU runs until the guest powers off,
// Config.Timeout expires, L1 stays silent too long, the context given to
// Start is done, or Stop is called.
type Session struct {
	cmd       *exec.Cmd
	cancel    context.CancelFunc
	runCtx    context.Context
	console   *console
	stderr    *lines.Writer
	start     time.Time
	workDir   string
	removeDir bool
	timeout   time.Duration
	// done is closed by the session's waiter goroutine once QEMU has
	// exited; waitErr and end are set before that.
	done    chan struct{}
	waitErr error
	end     time.Time
	// watched is closed by the session's watchdog goroutine when it
	// ends; silent is set before that when it killed QEMU.
	watched chan struct{}
	silent  error
}

// Run boots L1 with cfg and waits for the script to finish.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	s, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return s.Wait(ctx)
}

// Start builds the L1 initramfs and starts QEMU. The caller must call Wait
// (or Stop and then Wait) to release the session.
func Start(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.L1Kernel == nil || cfg.L1Kernel.BzImage == "" || cfg.L1Kernel.ModulesDir == "" || cfg.L1Kernel.Busybox == "" {
		return nil, fmt.Errorf("%w: L1Kernel with BzImage, ModulesDir and Busybox is required", ErrBadConfig)
	}
	if cfg.CPUs <= 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.MemoryMiB <= 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.HugePages < 0 {
		return nil, fmt.Errorf("%w: negative HugePages", ErrBadConfig)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Silence <= 0 {
		cfg.Silence = DefaultSilence
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.QEMU == "" {
		cfg.QEMU = DefaultQEMU
	}
	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrQEMUNotFound, err)
	}
	s := &Session{timeout: cfg.Timeout, workDir: cfg.WorkDir}
	if s.workDir == "" {
		if s.workDir, err = os.MkdirTemp("", "rf-nested-"); err != nil {
			return nil, fmt.Errorf("nested: %w", err)
		}
		s.removeDir = true
	} else if err := os.MkdirAll(s.workDir, 0o755); err != nil {
		return nil, fmt.Errorf("nested: %w", err)
	}
	initrd := filepath.Join(s.workDir, "l1-initramfs.cpio")
	if err := writeInitramfs(ctx, cfg, initrd); err != nil {
		s.cleanup()
		return nil, err
	}
	cmdline := "console=ttyS0 quiet panic=-1"
	if cfg.Cmdline != "" {
		cmdline += " " + cfg.Cmdline
	}
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMiB),
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", cfg.L1Kernel.BzImage, "-initrd", initrd, "-append", cmdline,
	}
	args = append(args, cfg.QEMUArgs...)

	s.runCtx, s.cancel = context.WithTimeout(ctx, cfg.Timeout)
	s.cmd = exec.CommandContext(s.runCtx, qemu, args...)
	s.console = newConsole(time.Now, cfg.Log, cfg.Lines)
	s.stderr = tcgWarnings(s.console.rawWriter())
	s.cmd.Stdout = s.console
	s.cmd.Stderr = s.stderr
	s.cmd.WaitDelay = 5 * time.Second
	s.start = time.Now()
	if err := s.cmd.Start(); err != nil {
		s.cancel()
		s.cleanup()
		return nil, fmt.Errorf("nested: start %s: %w", qemu, err)
	}
	s.done = make(chan struct{})
	go func() { // owner: the session; ends when QEMU has exited
		defer close(s.done)
		s.waitErr = s.cmd.Wait()
		s.end = time.Now()
	}()
	s.watched = make(chan struct{})
	go s.watch(cfg.BootTimeout, cfg.Silence) // owner: the session; ends when QEMU has exited
	return s, nil
}

// watch kills QEMU when L1 stays silent too long (console.silence). It
// checks ten times per bound, at most once a second.
func (s *Session) watch(boot, silence time.Duration) {
	defer close(s.watched)
	every := min(boot, silence, 10*time.Second) / 10
	tick := time.NewTicker(max(every, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-tick.C:
			if err := s.console.silence(now, boot, silence); err != nil {
				s.silent = err
				s.cancel()
				return
			}
		}
	}
}

// Stop kills QEMU; Wait then returns an error unless the script had
// already finished.
func (s *Session) Stop() { s.cancel() }

// Wait waits for QEMU to exit and returns the script's result. When ctx
// is done first, QEMU is killed and ctx's error returned. A script that
// reached the exit marker has its result even if QEMU had to be killed
// afterwards.
func (s *Session) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		s.cancel()
		<-s.done
		<-s.watched
		s.cleanup()
		return nil, fmt.Errorf("nested: %w", ctx.Err())
	}
	<-s.watched
	s.stderr.Flush()
	s.console.end()
	waitErr := s.waitErr
	dur := s.end.Sub(s.start)
	timedOut := errors.Is(s.runCtx.Err(), context.DeadlineExceeded)
	canceled := s.runCtx.Err() != nil && !timedOut
	s.cancel()
	s.cleanup()
	if res, ok := s.console.result(); ok {
		res.Duration = dur
		return res, nil
	}
	// The errors' first line says what happened; the serial tail follows.
	serial := s.console.serialText()
	switch {
	case s.silent != nil:
		return nil, fmt.Errorf("%w\nserial tail:\n%s", s.silent, tail(serial))
	case timedOut:
		return nil, fmt.Errorf("%w after %v\nserial tail:\n%s", ErrTimeout, s.timeout, tail(serial))
	case canceled:
		return nil, fmt.Errorf("nested: canceled: %w", s.runCtx.Err())
	}
	how := "QEMU exited with status 0: L1 powered off or reset"
	if waitErr != nil {
		how = "qemu: " + waitErr.Error()
	}
	return nil, fmt.Errorf("%w (%s)\nserial tail:\n%s", ErrNoExitMarker, how, tail(serial))
}

func (s *Session) cleanup() {
	if s.removeDir {
		os.RemoveAll(s.workDir)
	}
}

// Needed reports whether Linux guests must run nested on this host: true
// when /dev/kvm is missing, served by the paravirtual kvm_pvm back end, or
// the CPU has neither vmx nor svm. The string says why.
func Needed() (bool, string) {
	return needed("/sys", "/proc/cpuinfo", "/dev/kvm")
}

func needed(sysRoot, cpuinfo, devKVM string) (bool, string) {
	if _, err := os.Stat(devKVM); err != nil {
		return true, fmt.Sprintf("%s is not available: %v", devKVM, err)
	}
	if vmm.CheckNativeKVM(sysRoot) != nil {
		return true, "/dev/kvm is served by the paravirtual kvm_pvm back end, which cannot run guest kernels"
	}
	f, err := os.Open(cpuinfo)
	if err != nil {
		return true, fmt.Sprintf("cannot read %s: %v", cpuinfo, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, fl := range strings.Fields(val) {
			if fl == "vmx" || fl == "svm" {
				return false, "/dev/kvm has hardware virtualization (" + fl + ")"
			}
		}
		return true, "the CPU has no vmx or svm flag"
	}
	return true, "no CPU flags in " + cpuinfo
}
