// Package nested is RainForest's nested test layer. On hosts whose
// /dev/kvm cannot run Linux guest kernels (a paravirtual KVM back end, or
// no VT-x/AMD-V), end-to-end tests run inside an "L1" Linux guest booted
// by QEMU's software CPU with emulated AMD SVM. L1 loads kvm and kvm-amd
// from the same Debian kernel package, so it has a real /dev/kvm on which
// the project's static binaries run "L2" guests.
//
// Run builds the L1 initramfs (busybox, the kvm modules, the caller's
// files and script), boots L1, streams its serial console, and returns the
// script's output and exit status, which /init frames with BeginMarker and
// ExitMarker.
package nested

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"rainforest/images"
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
	// scriptPath is where the caller's script is placed in L1.
	scriptPath = "/test.sh"
	// maxSerial bounds the serial output kept in memory; older output is
	// dropped (it was still streamed to Config.Log).
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
	// ErrNoExitMarker means L1 stopped without printing the exit marker.
	ErrNoExitMarker = errors.New("nested: L1 guest ended without exit marker")
	// ErrBadConfig means the configuration is incomplete or invalid.
	ErrBadConfig = errors.New("nested: bad configuration")
)

// L1Modules are the modules /init loads to get /dev/kvm (dependencies are
// resolved from the kernel's module info).
func L1Modules() []string { return []string{"irqbypass", "kvm", "kvm_amd"} }

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
	// Log receives L1's serial console output as it arrives (may be nil).
	Log io.Writer
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
	// Output is the serial output between the markers (CR LF turned into LF).
	Output string
	// Serial is all serial output kept (bounded).
	Serial string
	// Duration is the wall time from starting QEMU until it exited.
	Duration time.Duration
}

// Session is one running L1 guest. QEMU runs until the guest powers off,
// Config.Timeout expires, the context given to Start is done, or Stop is
// called.
type Session struct {
	cmd       *exec.Cmd
	cancel    context.CancelFunc
	runCtx    context.Context
	serial    *serialBuffer
	start     time.Time
	workDir   string
	removeDir bool
	timeout   time.Duration
	// done is closed by the session's waiter goroutine once QEMU has
	// exited; waitErr and end are set before that.
	done    chan struct{}
	waitErr error
	end     time.Time
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
	if cfg.QEMU == "" {
		cfg.QEMU = DefaultQEMU
	}
	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrQEMUNotFound, err)
	}
	s := &Session{serial: &serialBuffer{}, timeout: cfg.Timeout, workDir: cfg.WorkDir}
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
	var out io.Writer = s.serial
	if cfg.Log != nil {
		out = io.MultiWriter(s.serial, errorlessWriter{cfg.Log})
	}
	s.cmd.Stdout = out
	s.cmd.Stderr = &tcgWarningFilter{w: out}
	s.cmd.WaitDelay = 5 * time.Second
	s.start = time.Now()
	if err := s.cmd.Start(); err != nil {
		s.cancel()
		s.cleanup()
		return nil, fmt.Errorf("nested: start %s: %w", qemu, err)
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		s.waitErr = s.cmd.Wait()
		s.end = time.Now()
	}()
	return s, nil
}

// Stop kills QEMU; Wait then returns an error.
func (s *Session) Stop() { s.cancel() }

// Wait waits for QEMU to exit and parses the script's result. When ctx is
// done first, QEMU is killed and ctx's error returned.
func (s *Session) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		s.cancel()
		<-s.done
		s.cleanup()
		return nil, fmt.Errorf("nested: %w", ctx.Err())
	}
	waitErr := s.waitErr
	dur := s.end.Sub(s.start)
	timedOut := errors.Is(s.runCtx.Err(), context.DeadlineExceeded)
	canceled := s.runCtx.Err() != nil && !timedOut
	s.cancel()
	s.cleanup()
	serial := normalize(s.serial.String())
	if timedOut {
		return nil, fmt.Errorf("%w after %v; serial tail:\n%s", ErrTimeout, s.timeout, tail(serial))
	}
	if canceled {
		return nil, fmt.Errorf("nested: canceled: %w", s.runCtx.Err())
	}
	res, ok := parseOutput(serial)
	if !ok {
		return nil, fmt.Errorf("%w (qemu: %v); serial tail:\n%s", ErrNoExitMarker, waitErr, tail(serial))
	}
	res.Duration = dur
	res.Serial = serial
	return res, nil
}

func (s *Session) cleanup() {
	if s.removeDir {
		os.RemoveAll(s.workDir)
	}
}

// parseOutput finds the last begin marker and the exit marker after it.
func parseOutput(serial string) (*Result, bool) {
	lines := strings.Split(serial, "\n")
	begin := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == BeginMarker {
			begin = i
		}
	}
	if begin < 0 {
		return nil, false
	}
	for i := begin + 1; i < len(lines); i++ {
		rest, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), ExitMarker+" ")
		if !ok {
			continue
		}
		status, err := strconv.Atoi(strings.TrimSpace(rest))
		if err != nil {
			continue
		}
		out := strings.Join(lines[begin+1:i], "\n")
		if i > begin+1 {
			out += "\n"
		}
		return &Result{ExitStatus: status, Output: out}, true
	}
	return nil, false
}

func normalize(s string) string {
	return strings.ReplaceAll(s, "\r\n", "\n")
}

func tail(s string) string {
	if len(s) > tailLen {
		return "..." + s[len(s)-tailLen:]
	}
	return s
}

// errorlessWriter hides a log writer's errors so that a failing log does
// not stop the serial console from being drained.
// tcgWarningFilter drops QEMU's "TCG doesn't support requested feature"
// warnings (one per CPU feature of the EPYC model that TCG lacks, repeated
// per vCPU), which say nothing about the run, and passes every other line.
type tcgWarningFilter struct {
	w       io.Writer
	partial []byte
}

func (f *tcgWarningFilter) Write(p []byte) (int, error) {
	f.partial = append(f.partial, p...)
	for {
		i := bytes.IndexByte(f.partial, '\n')
		if i < 0 {
			break
		}
		line := f.partial[:i+1]
		if !bytes.Contains(line, []byte("TCG doesn't support requested feature")) {
			if _, err := f.w.Write(line); err != nil {
				return len(p), err
			}
		}
		f.partial = f.partial[i+1:]
	}
	if len(f.partial) > 64<<10 { // no newline for long: pass it on
		f.w.Write(f.partial)
		f.partial = nil
	}
	return len(p), nil
}

type errorlessWriter struct{ w io.Writer }

func (e errorlessWriter) Write(p []byte) (int, error) {
	e.w.Write(p)
	return len(p), nil
}

// serialBuffer keeps the last maxSerial bytes of output; exec's copying
// goroutine writes it while Serial may read it.
type serialBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *serialBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > maxSerial {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-maxSerial:]...)
	}
	return len(p), nil
}

func (b *serialBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// BuildInitramfs writes the uncompressed L1 initramfs for cfg to w.
func BuildInitramfs(ctx context.Context, cfg Config, w io.Writer) error {
	a, err := l1Archive(ctx, cfg)
	if err != nil {
		return err
	}
	if _, err := a.WriteTo(w); err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	return nil
}

func writeInitramfs(ctx context.Context, cfg Config, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	if err := BuildInitramfs(ctx, cfg, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	return nil
}

func l1Archive(ctx context.Context, cfg Config) (*images.Archive, error) {
	if cfg.L1Kernel == nil {
		return nil, fmt.Errorf("%w: no L1Kernel", ErrBadConfig)
	}
	ix, err := images.LoadModuleIndex(cfg.L1Kernel.ModulesDir)
	if err != nil {
		return nil, err
	}
	mods, err := ix.Resolve(append(L1Modules(), cfg.Modules...)...)
	if err != nil {
		return nil, err
	}
	a := images.NewArchive()
	if err := images.AddBusybox(ctx, a, cfg.L1Kernel.Busybox); err != nil {
		return nil, err
	}
	if err := images.AddModules(a, cfg.L1Kernel.ModulesDir, mods, "lib/modules"); err != nil {
		return nil, err
	}
	guestPaths := make([]string, 0, len(cfg.ExtraFiles))
	for g := range cfg.ExtraFiles {
		guestPaths = append(guestPaths, g)
	}
	sort.Strings(guestPaths)
	for _, g := range guestPaths {
		clean := path.Clean("/" + g)
		if clean == "/" || clean == "/init" || clean == scriptPath {
			return nil, fmt.Errorf("%w: extra file may not replace %q", ErrBadConfig, clean)
		}
		st, err := os.Stat(cfg.ExtraFiles[g])
		if err != nil {
			return nil, fmt.Errorf("nested: extra file %s: %w", g, err)
		}
		if err := a.AddHostFile(clean, st.Mode().Perm(), cfg.ExtraFiles[g]); err != nil {
			return nil, err
		}
	}
	if err := a.AddFile(scriptPath, 0o755, []byte(cfg.Script)); err != nil {
		return nil, err
	}
	if err := a.AddFile("init", 0o755, []byte(l1Init(mods, cfg.HugePages))); err != nil {
		return nil, err
	}
	return a, nil
}

// l1Init renders the L1 /init script.
func l1Init(mods []images.Module, hugePages int) string {
	return `#!/bin/sh
export PATH=/bin:/usr/bin
mount -t proc proc /proc
# Kernel messages would interleave with the script's output on the console.
dmesg -n 1
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
` + images.InsmodLines(mods, "/lib/modules") + `mount -t hugetlbfs hugetlbfs /dev/hugepages
echo ` + strconv.Itoa(hugePages) + ` > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
echo "RF-NESTED-HUGEPAGES $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)"
cd /
echo ` + BeginMarker + `
sh ` + scriptPath + ` </dev/null 2>&1
echo "` + ExitMarker + ` $?"
poweroff -f
`
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
