// Package kvmhost runs shell scripts where Linux KVM guests can boot:
// directly on this host when its /dev/kvm runs guest kernels, otherwise
// inside the nested layer (internal/nested), an L1 QEMU guest with an
// emulated AMD-V CPU into which the script's files are copied.
//
// A script sees the same environment either way: each File's variable
// holds the file's path (in L1, or on this host), and $QEMU and
// $QEMU_DATA a QEMU and its firmware when the script asks for one. Its
// output lines reach the caller as they arrive (Script.Lines), so that
// results can be parsed while a long session runs and kept when it dies.
// A nested session whose L1 dies, freezes or goes silent (see
// nested.HeartbeatMarker) can be rerun once (Script.Rerun).
//
// The end-to-end tests, the benchmarks and rfm run's nested mode all run
// their scripts through Host.Run.
package kvmhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"rainforest/images"
	"rainforest/internal/lines"
	"rainforest/internal/nested"
	"rainforest/internal/qemubundle"
	"rainforest/internal/shquote"
)

// Values of a -nested flag (Choose); any other value, such as "auto",
// lets nested.Needed decide.
const (
	NestedAlways = "always"
	NestedNever  = "never"
)

// Variables a script gets with Script.QEMU.
const (
	QEMUVar     = "QEMU"
	QEMUDataVar = "QEMU_DATA"
)

// ErrBadScript means a Script is incomplete or invalid.
var ErrBadScript = errors.New("kvmhost: bad script")

// Choose decides from a -nested flag value whether scripts run nested,
// and says why.
func Choose(mode string) (need bool, why string) {
	switch mode {
	case NestedAlways:
		return true, "nested mode forced (-nested always)"
	case NestedNever:
		return false, "nested mode off (-nested never)"
	}
	return nested.Needed()
}

// Host runs scripts, nested or directly.
type Host struct {
	// Nested runs scripts inside an L1 guest; Why says why (or why not).
	Nested bool
	Why    string
	// L1 supplies the L1 guest's kernel, modules and busybox (nested
	// runs); images.Build returns it.
	L1 *images.Image
	// QEMU is the QEMU binary that runs L1 (default nested.DefaultQEMU).
	QEMU string
	// Log receives everything a session prints as it arrives: L1's
	// serial console (heartbeats included), or a direct script's output;
	// and a note when a session is rerun. May be nil.
	Log io.Writer
}

// File is a file (or a directory's files) a script uses.
type File struct {
	// Var is the environment variable holding the file's path in the
	// script; empty for none.
	Var string
	// Host is the file on this host, or with Names a directory.
	Host string
	// L1 is the path the file is copied to in the nested L1 guest.
	L1 string
	// Names, when set, are the files of the directory Host copied into
	// the directory L1 (a direct script uses the directory as it is).
	Names []string
}

// Disk is a disk image of which a script gets a writable, throwaway copy.
type Disk struct {
	// Var is the environment variable holding the copy's path: nested, a
	// block device of L1 (/dev/vda, /dev/vdb, ... in the order of
	// Script.Disks) whose writes go to a temporary overlay (QEMU's
	// snapshot=on), so that a large image is not copied into L1's
	// memory; directly, a sparse copy in a temporary directory removed
	// when the session ends.
	Var string
	// Host is the raw image on this host; it is never written.
	Host string
}

// diskModules are the modules L1 loads for Script.Disks (dependencies
// are resolved).
func diskModules() []string { return []string{"virtio_pci", "virtio_blk"} }

// maxDisks is how many Script.Disks L1 can name /dev/vda to /dev/vdz.
const maxDisks = 26

// Script is one session.
type Script struct {
	// Text is the sh script. It runs with stdin from /dev/null and
	// stderr joined to stdout, after lines exporting the variables of
	// Files and QEMU. It should bound its own commands: the heartbeat
	// notices a frozen L1, not a command hanging in a live one.
	Text string
	// Files are placed for the script and named to it by their Var.
	Files []File
	// Disks are given to the script as throwaway copies, named by their
	// Var.
	Disks []Disk
	// QEMU, when set, is a QEMU binary (looked up in PATH) for the
	// script: $QEMU is the binary and $QEMU_DATA its data directory
	// (firmware); nested, it is copied into L1 with its libraries (on
	// LD_LIBRARY_PATH) and the microvm firmware (internal/qemubundle).
	QEMU string
	// CPUs, MemoryMiB and HugePages (2 MiB pages reserved at
	// /dev/hugepages) size the L1 guest; Modules are extra modules it
	// loads. Nested runs only; zero means nested's defaults.
	CPUs, MemoryMiB, HugePages int
	Modules                    []string
	// Timeout bounds the session (default nested.DefaultTimeout).
	Timeout time.Duration
	// Silence bounds how long a nested session may print neither a
	// heartbeat nor output (default nested.DefaultSilence).
	Silence time.Duration
	// Lines, when set, receives each line of the script's output as it
	// arrives, without its line end (heartbeats removed); called from
	// one goroutine at a time. A rerun session's lines follow the call
	// to Rerun.
	Lines func(line string)
	// Rerun, when set, opts in to running a nested session once more
	// when its L1 guest died, froze or went silent (nested.L1Failed): it
	// is called with the first session's error before the second starts,
	// and the note goes to Host.Log. A fault of the script fails twice.
	Rerun func(err error)
}

// Result is the outcome of a script that ran to its end.
type Result struct {
	// Output is the script's output, each line ending in LF.
	Output string
	// ExitStatus is the script's exit status.
	ExitStatus int
	// Duration is the session's wall time (the last one, when rerun).
	Duration time.Duration
}

// Path returns where f is for the script: its L1 path when nested, its
// host path otherwise (the value of f.Var).
func (h *Host) Path(f File) string {
	if h.Nested {
		return f.L1
	}
	return f.Host
}

// QEMUPaths returns the paths a script that asks for qemu (Script.QEMU)
// sees in $QEMU and $QEMU_DATA.
func (h *Host) QEMUPaths(qemu string) (binary, dataDir string, err error) {
	if h.Nested {
		return qemubundle.GuestBinary, qemubundle.GuestDataDir, nil
	}
	p, err := exec.LookPath(qemu)
	if err != nil {
		return "", "", fmt.Errorf("kvmhost: qemu: %w", err)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", "", fmt.Errorf("kvmhost: qemu: %w", err)
	}
	return real, filepath.Join(filepath.Dir(real), "..", "share", "qemu"), nil
}

// Run runs s and returns its output and exit status. A script that
// exits non-zero is a Result, not an error; errors are the session's
// (nested's sentinels, such as nested.ErrSilent, are wrapped).
func (h *Host) Run(ctx context.Context, s Script) (*Result, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	res, err := h.run(ctx, s)
	if err != nil && h.Nested && s.Rerun != nil && nested.L1Failed(err) && ctx.Err() == nil {
		first, _, _ := strings.Cut(err.Error(), "\n")
		h.logf("\nkvmhost: the nested L1 guest died, froze or went silent (%s); running the session again\n", first)
		s.Rerun(err)
		res, err = h.run(ctx, s)
	}
	return res, err
}

func (h *Host) run(ctx context.Context, s Script) (*Result, error) {
	if s.Timeout <= 0 {
		s.Timeout = nested.DefaultTimeout
	}
	if h.Nested {
		return h.runNested(ctx, s)
	}
	return h.runDirect(ctx, s)
}

// check reports what is wrong with s.
func (s *Script) check() error {
	for _, f := range s.Files {
		if f.Var != "" && !isVarName(f.Var) {
			return fmt.Errorf("%w: %q is not a variable name", ErrBadScript, f.Var)
		}
		if f.Host == "" || !path.IsAbs(f.L1) {
			return fmt.Errorf("%w: file %q -> %q needs a host path and an absolute L1 path", ErrBadScript, f.Host, f.L1)
		}
	}
	if len(s.Disks) > maxDisks {
		return fmt.Errorf("%w: %d disks, at most %d", ErrBadScript, len(s.Disks), maxDisks)
	}
	for _, d := range s.Disks {
		if !isVarName(d.Var) || d.Host == "" {
			return fmt.Errorf("%w: disk %q needs a variable name (not %q) and a host path", ErrBadScript, d.Host, d.Var)
		}
	}
	return nil
}

// l1Disk returns the L1 device of the i'th disk.
func l1Disk(i int) string { return "/dev/vd" + string(rune('a'+i)) }

// diskQEMUArgs returns the QEMU arguments that attach disks to L1, with
// throwaway writes.
func diskQEMUArgs(disks []Disk) []string {
	var args []string
	for _, d := range disks {
		args = append(args, "-drive", "file="+strings.ReplaceAll(d.Host, ",", ",,")+",format=raw,if=virtio,snapshot=on")
	}
	return args
}

// isVarName reports whether s is a shell variable name.
func isVarName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// exports renders the lines that export vars, in order.
func exports(vars [][2]string) string {
	var b strings.Builder
	for _, v := range vars {
		b.WriteString("export " + v[0] + "=" + shquote.Quote(v[1]) + "\n")
	}
	return b.String()
}

// runNested runs s in an L1 guest.
func (h *Host) runNested(ctx context.Context, s Script) (*Result, error) {
	files := map[string]string{}
	var vars [][2]string
	for _, f := range s.Files {
		if len(f.Names) == 0 {
			files[f.L1] = f.Host
		}
		for _, n := range f.Names {
			files[path.Join(f.L1, n)] = filepath.Join(f.Host, n)
		}
		if f.Var != "" {
			vars = append(vars, [2]string{f.Var, f.L1})
		}
	}
	if s.QEMU != "" {
		qemu, err := exec.LookPath(s.QEMU)
		if err != nil {
			return nil, fmt.Errorf("kvmhost: qemu: %w", err)
		}
		bundle, err := qemubundle.Collect(ctx, qemu)
		if err != nil {
			return nil, err
		}
		for g, p := range bundle.Files {
			files[g] = p
		}
		vars = append(vars, [2]string{QEMUVar, qemubundle.GuestBinary}, [2]string{QEMUDataVar, qemubundle.GuestDataDir},
			[2]string{"LD_LIBRARY_PATH", strings.Join(bundle.LibDirs, ":")})
	}
	mods := s.Modules
	for i, d := range s.Disks {
		if _, err := os.Stat(d.Host); err != nil {
			return nil, fmt.Errorf("kvmhost: disk: %w", err)
		}
		vars = append(vars, [2]string{d.Var, l1Disk(i)})
	}
	if len(s.Disks) > 0 {
		mods = append(append([]string(nil), mods...), diskModules()...)
	}
	res, err := nested.Run(ctx, nested.Config{
		L1Kernel: h.L1, ExtraFiles: files, Script: exports(vars) + s.Text, QEMUArgs: diskQEMUArgs(s.Disks),
		CPUs: s.CPUs, MemoryMiB: s.MemoryMiB, HugePages: s.HugePages, Modules: mods,
		Timeout: s.Timeout, Silence: s.Silence, Log: h.Log, Lines: s.Lines, QEMU: h.QEMU,
	})
	if err != nil {
		return nil, fmt.Errorf("kvmhost: %w", err)
	}
	return &Result{Output: res.Output, ExitStatus: res.ExitStatus, Duration: res.Duration}, nil
}

// runDirect runs s on this host, in a process group of its own that is
// killed when the session ends early.
func (h *Host) runDirect(ctx context.Context, s Script) (*Result, error) {
	var vars [][2]string
	for _, f := range s.Files {
		if f.Var != "" {
			vars = append(vars, [2]string{f.Var, f.Host})
		}
	}
	if s.QEMU != "" {
		bin, data, err := h.QEMUPaths(s.QEMU)
		if err != nil {
			return nil, err
		}
		vars = append(vars, [2]string{QEMUVar, bin}, [2]string{QEMUDataVar, data})
	}
	if len(s.Disks) > 0 {
		dir, err := os.MkdirTemp("", "rf-disks-")
		if err != nil {
			return nil, fmt.Errorf("kvmhost: %w", err)
		}
		defer os.RemoveAll(dir)
		for i, d := range s.Disks {
			dst := filepath.Join(dir, fmt.Sprintf("%d-%s", i, filepath.Base(d.Host)))
			if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", "--reflink=auto", "--", d.Host, dst).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("kvmhost: copy disk %s: %w: %s", d.Host, err, strings.TrimSpace(string(out)))
			}
			vars = append(vars, [2]string{d.Var, dst})
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", exports(vars)+s.Text)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("kvmhost: %w", err)
	}
	defer devNull.Close()
	cmd.Stdin = devNull
	out := &outputWriter{log: h.Log, lines: s.Lines}
	out.split = lines.NewWriter(out.line)
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	err = cmd.Run()
	out.split.Flush()
	res := &Result{Output: out.text.String(), Duration: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("kvmhost: script timed out after %v: %w", s.Timeout, ctx.Err())
	case ctx.Err() != nil:
		return nil, fmt.Errorf("kvmhost: %w", ctx.Err())
	case errors.As(err, &ee):
		res.ExitStatus = ee.ExitCode()
		return res, nil
	case err != nil:
		return nil, fmt.Errorf("kvmhost: %w", err)
	}
	return res, nil
}

// outputWriter takes a direct script's stdout and stderr (exec calls it
// from one goroutine at a time): the log gets the bytes, the caller the
// lines.
type outputWriter struct {
	log   io.Writer
	lines func(string)
	split *lines.Writer
	text  strings.Builder
}

func (o *outputWriter) Write(p []byte) (int, error) {
	if o.log != nil {
		o.log.Write(p) // a failing log does not stop the script
	}
	return o.split.Write(p)
}

func (o *outputWriter) line(l string) {
	o.text.WriteString(l + "\n")
	if o.lines != nil {
		o.lines(l)
	}
}

func (h *Host) logf(format string, args ...any) {
	if h.Log != nil {
		fmt.Fprintf(h.Log, format, args...)
	}
}
