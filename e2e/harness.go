// Package e2e boots real Debian Linux subOSes with rfm and checks what they
// report. One harness serves two kinds of host: where /dev/kvm runs guest
// kernels natively, scripts run directly on the host; elsewhere (no
// VT-x/AMD-V, or the kvm_pvm back end) they run inside the nested layer, an
// L1 QEMU guest with an emulated AMD-V CPU, with rfm and the image copied in.
// Scripts see the same environment either way: $RFM is the rfm binary and
// $L2 the directory holding vmlinux, bzImage, initramfs.cpio.gz and disk.img.
// internal/kvmhost runs them, rerunning once a nested session whose L1
// guest died, froze or went silent.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"rainforest/images"
	"rainforest/internal/kvmhost"
	"rainforest/internal/nested"
)

// Host runs end-to-end scripts.
type Host struct {
	// KVM runs the scripts, nested or directly.
	KVM *kvmhost.Host
	img *images.Image
	rfm string
	// CPUs of the L1 guest (nested only; default 2).
	CPUs int
	// Retried, when set, is told when a nested session had to be rerun
	// because the L1 guest died, froze or went silent.
	Retried func(error)
}

// NewHost prepares a host: it builds a static rfm into workDir and finds
// the image in imagesDir (building it if needed).
func NewHost(ctx context.Context, repoRoot, imagesDir, workDir string, log io.Writer) (*Host, error) {
	// The image's tools (rfcom) and agent, built as `make image` does
	// (reproducibly, so an image made by make stays up to date).
	for _, tool := range []string{"rfcom", "rf-agent"} {
		bin := filepath.Join(workDir, tool)
		if err := goBuild(ctx, repoRoot, bin, "./cmd/"+tool, "-trimpath", "-ldflags=-s -w -buildid="); err != nil {
			return nil, err
		}
		if err := installTool(bin, filepath.Join(imagesDir, images.ToolsDirName, tool)); err != nil {
			return nil, err
		}
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
	return &Host{KVM: &kvmhost.Host{Nested: need, Why: why, L1: img, Log: log}, img: img, rfm: rfm}, nil
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

// Files are what every end-to-end script gets: $RFM, the rfm binary,
// and $L2, the directory of the default image (vmlinux, bzImage,
// initramfs.cpio.gz, disk.img).
func (h *Host) Files() []kvmhost.File {
	return []kvmhost.File{
		{Var: "RFM", Host: h.rfm, L1: "/bin/rfm"},
		{Var: "L2", Host: filepath.Dir(h.img.Kernel), L1: "/l2", Names: []string{
			filepath.Base(h.img.Kernel), filepath.Base(h.img.BzImage), filepath.Base(h.img.Initramfs), filepath.Base(h.img.Disk)}},
	}
}

// L1 sizing of a nested end-to-end session: two 512 MiB subOSes on 2 MiB
// pages at a time.
const (
	l1MemoryMiB = 3072
	l1HugePages = 600
)

// Script returns the kvmhost script of an end-to-end session: text with
// Files, an L1 of h.CPUs vCPUs, and a rerun of a session whose L1
// failed (told to Retried).
func (h *Host) Script(text string, timeout time.Duration) kvmhost.Script {
	return kvmhost.Script{
		Text: text, Files: h.Files(), CPUs: max(h.CPUs, 2), MemoryMiB: l1MemoryMiB, HugePages: l1HugePages, Timeout: timeout,
		Rerun: func(err error) {
			if h.Retried != nil {
				h.Retried(err)
			}
		},
	}
}

// Run executes script (sh) and returns its output and exit status.
func (h *Host) Run(ctx context.Context, script string, timeout time.Duration) (string, int, error) {
	res, err := h.KVM.Run(ctx, h.Script(script, timeout))
	if err != nil {
		return "", -1, err
	}
	return res.Output, res.ExitStatus, nil
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

// Fields returns every value after "KEY " on the lines of out, in order
// (the exit statuses of a section's refused commands, say).
func Fields(out, key string) []string {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + ` +(.*?)\s*$`)
	var vals []string
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		vals = append(vals, m[1])
	}
	return vals
}
