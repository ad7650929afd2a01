// Package e2e boots real Debian Linux subOSes with rfm and checks what they
// report. One harness serves two kinds of host: where /dev/kvm runs guest
// kernels natively, scripts run directly on the host; elsewhere (no
// VT-x/AMD-V, or the kvm_pvm back end) they run inside the nested layer, an
// L1 QEMU guest with an emulated AMD-V CPU, with rfm and the image copied in.
// Scripts see the same environment either way: $RFM is the rfm binary and
// $L2 the directory holding vmlinux, bzImage, initramfs.cpio.gz and disk.img.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"rainforest/images"
	"rainforest/internal/nested"
)

// Host runs end-to-end scripts.
type Host struct {
	Nested bool
	Why    string // why nested (empty when direct)
	img    *images.Image
	rfm    string
	log    io.Writer
	// CPUs of the L1 guest (nested only; default 2).
	CPUs int
	// Retried, when set, is told when a nested session had to be rerun
	// because the L1 guest died.
	Retried func(error)
	// ExtraFiles maps more L1 paths to host files (nested only; a direct
	// script uses host paths).
	ExtraFiles map[string]string
}

// NewHost prepares a host: it builds a static rfm into workDir and finds
// the image in imagesDir (building it if needed).
func NewHost(ctx context.Context, repoRoot, imagesDir, workDir string, log io.Writer) (*Host, error) {
	// The image's rfcom tool, built as `make image` does (reproducibly, so
	// an image made by make stays up to date).
	rfcom := filepath.Join(workDir, "rfcom")
	if err := goBuild(ctx, repoRoot, rfcom, "./cmd/rfcom", "-trimpath", "-ldflags=-s -w -buildid="); err != nil {
		return nil, err
	}
	if err := installTool(rfcom, filepath.Join(imagesDir, images.ToolsDirName, "rfcom")); err != nil {
		return nil, err
	}
	img, err := images.Build(ctx, images.Options{OutDir: imagesDir, Log: log})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	rfm := filepath.Join(workDir, "rfm")
	if err := goBuild(ctx, repoRoot, rfm, "./cmd/rfm"); err != nil {
		return nil, err
	}
	need, why := nested.Needed()
	return &Host{Nested: need, Why: why, img: img, rfm: rfm, log: log}, nil
}

// goBuild builds a static binary of pkg.
func goBuild(ctx context.Context, repoRoot, out, pkg string, flags ...string) error {
	args := append(append([]string{"build"}, flags...), "-o", out, pkg)
	build := exec.CommandContext(ctx, "go", args...)
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// installTool puts a guest tool into the image's tools directory, replacing
// it atomically only when it differs (other tests may be reading it).
func installTool(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp") // hidden: images skips it
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// Run executes script (sh) and returns its output and exit status.
func (h *Host) Run(ctx context.Context, script string, timeout time.Duration) (string, int, error) {
	if h.Nested {
		files := map[string]string{
			"/bin/rfm":              h.rfm,
			"/l2/vmlinux":           h.img.Kernel,
			"/l2/bzImage":           h.img.BzImage,
			"/l2/initramfs.cpio.gz": h.img.Initramfs,
			"/l2/disk.img":          h.img.Disk,
		}
		for k, v := range h.ExtraFiles {
			files[k] = v
		}
		cfg := nested.Config{
			L1Kernel: h.img, ExtraFiles: files, CPUs: max(h.CPUs, 2), MemoryMiB: 3072, HugePages: 600,
			Script: "export RFM=/bin/rfm L2=/l2\n" + script, Timeout: timeout, Log: h.log,
		}
		res, err := nested.Run(ctx, cfg)
		if errors.Is(err, nested.ErrNoExitMarker) || errors.Is(err, nested.ErrTimeout) {
			// The L1 guest itself died or froze (QEMU's emulated AMD-V is
			// not flawless; sessions that normally take a minute have
			// hung): that is the test layer, not the subject, so run the
			// session once more, and say so. A fault of ours fails
			// twice.
			fmt.Fprintf(h.log, "\ne2e: L1 guest died without finishing the script (%v); running the session again\n", err)
			if h.Retried != nil {
				h.Retried(err)
			}
			res, err = nested.Run(ctx, cfg)
		}
		if err != nil {
			return "", -1, err
		}
		return res.Output, res.ExitStatus, nil
	}
	dir := filepath.Dir(h.img.Kernel)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Env = append(os.Environ(), "RFM="+h.rfm, "L2="+dir)
	var out strings.Builder
	w := io.Writer(&out)
	if h.log != nil {
		w = io.MultiWriter(&out, h.log)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode(), nil
	}
	return out.String(), 0, err
}

// Sections splits script output at lines "== NAME" into named parts.
func Sections(out string) map[string]string {
	secs := map[string]string{}
	name := ""
	var b strings.Builder
	flush := func() {
		if name != "" {
			secs[name] = b.String()
		}
		b.Reset()
	}
	for _, line := range strings.Split(strings.ReplaceAll(out, "\r\n", "\n"), "\n") {
		if n, ok := strings.CutPrefix(line, "== "); ok {
			flush()
			name = strings.TrimSpace(n)
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	flush()
	return secs
}

// Field returns the first value after "KEY " on a line of out, or "".
func Field(out, key string) string {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + ` +(.*?)\s*$`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}
