package images

import (
	"rainforest/vmm/boot"

	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMetaTarget(t *testing.T) {
	out := []byte("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n")
	if got := metaTarget("linux-image-cloud-amd64", out); got != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("metaTarget = %q", got)
	}
	if got := metaTarget("busybox-static", []byte("busybox-static\n")); got != "" {
		t.Errorf("no depends: %q", got)
	}
	show := []byte("Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\n")
	if got := controlField(show, "Version"); got != "1:1.35.0-4+deb12u1+b1" {
		t.Errorf("controlField = %q", got)
	}
}

func TestL2InitScript(t *testing.T) {
	s := l2Init([]Module{{Name: "virtio_ring"}, {Name: "virtio"}}, []Module{{Name: "jbd2"}, {Name: "ext4"}})
	order := []string{"mount -t proc", InitReachedMarker, "insmod /lib/modules/virtio_ring.ko", "insmod /lib/modules/virtio.ko",
		"RF-CPUS", "RF-MEMTOTAL-KB", "param rf.root", "insmod /lib/modules/jbd2.ko", "insmod /lib/modules/ext4.ko", "switch_root",
		"/dev/vda", "rf.cat", "rf-agent", "RF-AGENT-EXIT", "rf.cmd", "rf.poweroff", "poweroff -f"}
	last := -1
	for _, want := range order {
		i := strings.Index(s, want)
		if i <= last {
			t.Fatalf("%q missing or out of order in:\n%s", want, s)
		}
		last = i
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		return
	}
	// The parameter parser, run by the host shell.
	start := strings.Index(s, "param() {")
	end := strings.Index(s[start:], "\n}\n") + start + 3
	script := `cmdline='console=ttyS0 rf.cat=/hello.txt rf.cmd="echo a  b" rf.poweroff=1'` + "\n" + s[start:end] +
		`printf '%s|%s|%s|%s\n' "$(param rf.cat)" "$(param rf.cmd)" "$(param rf.poweroff)" "$(param rf.none)"` + "\n"
	out, err := exec.Command(sh, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "/hello.txt|echo a  b|1|" {
		t.Errorf("param parsing: %q", got)
	}
}

// imagesOut is the cache the integration tests share: RF_IMAGES_OUT or the
// repository's build/images.
func imagesOut() string {
	if d := os.Getenv("RF_IMAGES_OUT"); d != "" {
		return d
	}
	return filepath.Join("..", DefaultOutDir)
}

func buildOrSkip(t *testing.T, opts Options) *Image {
	t.Helper()
	if testing.Short() {
		t.Skip("short mode")
	}
	img, err := Build(context.Background(), opts)
	if errors.Is(err, ErrAptUnavailable) {
		t.Skipf("apt not usable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// TestBuildReal builds the real image from Debian packages, checks its
// contents, that a second build is served from the cache, and that a
// forced rebuild is byte-identical.
func TestBuildReal(t *testing.T) {
	var log bytes.Buffer
	img := buildOrSkip(t, Options{OutDir: imagesOut(), Log: &log})
	vmlinux, err := os.ReadFile(img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := boot.DetectFormat(bytes.NewReader(vmlinux), int64(len(vmlinux))); err != nil || f != boot.FormatPVH {
		t.Errorf("vmlinux is not a PVH kernel: %v %v", f, err)
	}
	if !strings.HasPrefix(img.KernelVersion, "6.") || !strings.HasSuffix(img.KernelVersion, "cloud-amd64") {
		t.Errorf("kernel version %q", img.KernelVersion)
	}
	f, err := os.Open(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := ReadArchive(zr)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e.Path] = true
	}
	for _, p := range []string{"init", "bin/busybox", "bin/sh", "bin/insmod", "bin/poweroff",
		"lib/modules/virtio.ko", "lib/modules/virtio_pci.ko", "lib/modules/virtio_blk.ko",
		"lib/modules/virtio_console.ko", "lib/modules/uio_pci_generic.ko"} {
		if !have[p] {
			t.Errorf("initramfs lacks %s", p)
		}
	}
	sums := map[string][32]byte{}
	for _, p := range []string{img.Kernel, img.BzImage, img.Initramfs, img.Disk} {
		sums[p] = fileSum(t, p)
	}

	log.Reset()
	start := time.Now()
	img2 := buildOrSkip(t, Options{OutDir: imagesOut(), Log: &log})
	if !strings.Contains(log.String(), "up to date") {
		t.Errorf("second build was not cached:\n%s", log.String())
	}
	t.Logf("cached build: %v", time.Since(start))
	if img2.Kernel != img.Kernel || img2.Initramfs != img.Initramfs || img2.KernelVersion != img.KernelVersion {
		t.Errorf("cached image differs: %+v vs %+v", img2, img)
	}

	buildOrSkip(t, Options{OutDir: imagesOut(), Force: true})
	for p, sum := range sums {
		if fileSum(t, p) != sum {
			t.Errorf("%s is not reproducible", filepath.Base(p))
		}
	}
}

// TestBootL2UnderQEMU boots the built image with QEMU's software CPU (no
// KVM needed) and checks the /init contract, for the bzImage and for the
// PVH vmlinux, each with a virtio-blk PCI disk.
func TestBootL2UnderQEMU(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	img := buildOrSkip(t, Options{OutDir: imagesOut()})
	const appendLine = `console=ttyS0 quiet panic=-1 rf.cat=/hello.txt rf.cmd="echo cmd ran" rf.poweroff=1`
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"bzImage-pc-virtio-pci", []string{"-kernel", img.BzImage, "-drive", "file=" + img.Disk + ",format=raw,if=virtio,readonly=on"},
			[]string{strings.TrimSpace(DiskText)}},
		// QEMU's pc machine boots an ELF kernel with the PVH note through
		// the PVH entry. (microvm has no HPET or PM timer, and under load
		// TCG makes the kernel's PIT calibration fail and the boot stall.)
		{"vmlinux-pvh-pc-virtio-pci", []string{"-kernel", img.Kernel, "-drive", "file=" + img.Disk + ",format=raw,if=virtio,readonly=on"},
			[]string{strings.TrimSpace(DiskText)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			args := append([]string{"-accel", "tcg,thread=multi", "-cpu", "EPYC", "-smp", "2", "-m", "512",
				"-nographic", "-no-reboot", "-initrd", img.Initramfs, "-append", appendLine}, tc.args...)
			start := time.Now()
			out, err := exec.CommandContext(ctx, qemu, args...).CombinedOutput()
			s := strings.ReplaceAll(string(out), "\r\n", "\n")
			if err != nil {
				t.Fatalf("qemu: %v\n%s", err, s)
			}
			t.Logf("boot to power-off: %v", time.Since(start))
			want := append([]string{InitReachedMarker, "RF-CPUS 2 2", "RF-MEMTOTAL-KB", "cmd ran", "RF-CMD-EXIT 0"}, tc.want...)
			for _, w := range want {
				if !strings.Contains(s, w) {
					t.Errorf("serial lacks %q:\n%s", w, s)
				}
			}
		})
	}
}
