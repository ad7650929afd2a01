package nested

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/images"
	"rainforest/internal/nested/nestedtest"
)

func TestNeeded(t *testing.T) {
	dir := t.TempDir()
	kvm := nestedtest.WriteFile(t, filepath.Join(dir, "kvm"), "", 0o644)
	pvm := filepath.Join(dir, "module", "kvm_pvm")
	withSVM := nestedtest.WriteFile(t, filepath.Join(dir, "cpu-svm"), "processor\t: 0\nflags\t\t: fpu sse svm lm\n", 0o644)
	noVirt := nestedtest.WriteFile(t, filepath.Join(dir, "cpu-none"), "processor\t: 0\nflags\t\t: fpu sse lm\n", 0o644)

	if n, why := needed(dir, withSVM, kvm); n {
		t.Errorf("svm host: needed = true (%s)", why)
	}
	if n, _ := needed(dir, noVirt, kvm); !n {
		t.Error("no vmx/svm: needed = false")
	}
	if n, _ := needed(dir, withSVM, filepath.Join(dir, "missing")); !n {
		t.Error("no /dev/kvm: needed = false")
	}
	if err := os.MkdirAll(pvm, 0o755); err != nil {
		t.Fatal(err)
	}
	if n, why := needed(dir, withSVM, kvm); !n || !strings.Contains(why, "kvm_pvm") {
		t.Errorf("kvm_pvm: needed = %v (%s)", n, why)
	}
	// The real host: only check it does not panic.
	n, why := Needed()
	t.Logf("Needed() = %v: %s", n, why)
}

func TestBuildInitramfs(t *testing.T) {
	img := nestedtest.L1Image(t)
	dir := t.TempDir()
	tool := nestedtest.WriteFile(t, filepath.Join(dir, "rfm"), "#!/bin/true\n", 0o755)
	cfg := Config{
		L1Kernel:   img,
		ExtraFiles: map[string]string{"/bin/rfm": tool, "l2/vmlinux": img.BzImage},
		Script:     "echo hi\n",
		HugePages:  64,
	}
	var buf bytes.Buffer
	if err := BuildInitramfs(context.Background(), cfg, &buf); err != nil {
		t.Fatal(err)
	}
	entries, err := images.ReadArchive(&buf)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]*images.Entry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	for _, p := range []string{"init", "test.sh", "bin/busybox", "bin/sh", "bin/rfm", "l2/vmlinux", "lib/modules/kvm_amd.ko", "lib/modules/ccp.ko"} {
		if byPath[p] == nil {
			t.Errorf("missing %s", p)
		}
	}
	if e := byPath["bin/rfm"]; e != nil && e.Mode&0o111 == 0 {
		t.Errorf("bin/rfm lost its exec bits: %o", e.Mode)
	}
	init := string(byPath["init"].Data)
	order := []string{HeartbeatMarker, HeartbeatPIDFile, "irqbypass.ko", "kvm.ko", "ccp.ko", "kvm_amd.ko", "echo 64 > /sys/kernel/mm/hugepages", BeginMarker, "sh /test.sh", ExitMarker, "poweroff -f"}
	last := -1
	for _, s := range order {
		i := strings.Index(init, s)
		if i <= last {
			t.Fatalf("init: %q missing or out of order:\n%s", s, init)
		}
		last = i
	}

	cfg.ExtraFiles = map[string]string{"/init": tool}
	if err := BuildInitramfs(context.Background(), cfg, &bytes.Buffer{}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("replacing /init: err = %v", err)
	}
}

func TestRunErrors(t *testing.T) {
	img := nestedtest.L1Image(t)
	ctx := context.Background()

	_, err := Run(ctx, Config{L1Kernel: img, QEMU: filepath.Join(t.TempDir(), "no-qemu")})
	if !errors.Is(err, ErrQEMUNotFound) {
		t.Errorf("missing qemu: err = %v", err)
	}
	_, err = Run(ctx, Config{})
	if !errors.Is(err, ErrBadConfig) {
		t.Errorf("no kernel: err = %v", err)
	}

	var log bytes.Buffer
	q := nestedtest.QEMU(t, "echo booting; echo "+BeginMarker+"; echo partial; exit 1\n")
	_, err = Run(ctx, Config{L1Kernel: img, QEMU: q, Log: &log})
	if first, _, _ := strings.Cut(err.Error(), "\n"); !errors.Is(err, ErrNoExitMarker) || first != ErrNoExitMarker.Error()+" (qemu: exit status 1)" ||
		!strings.Contains(err.Error(), "\nserial tail:\nbooting\n"+BeginMarker+"\npartial") {
		t.Errorf("no marker: err = %v", err)
	}
	if !strings.Contains(log.String(), "booting") {
		t.Errorf("log did not stream: %q", log.String())
	}

	q = nestedtest.QEMU(t, "echo waiting; exec sleep 30\n")
	start := time.Now()
	_, err = Run(ctx, Config{L1Kernel: img, QEMU: q, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "waiting") {
		t.Errorf("timeout: err = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("timeout took %v", d)
	}
}

func TestSessionStop(t *testing.T) {
	img := nestedtest.L1Image(t)
	q := nestedtest.QEMU(t, "echo up; exec sleep 30\n")
	s, err := Start(context.Background(), Config{L1Kernel: img, QEMU: q})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait with expired ctx: err = %v", err)
	}
	s, err = Start(context.Background(), Config{L1Kernel: img, QEMU: q})
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if _, err := s.Wait(context.Background()); err == nil {
		t.Error("Wait after Stop: no error")
	}
}

func TestRunFakeQEMU(t *testing.T) {
	img := nestedtest.L1Image(t)
	// The fake checks its arguments and prints a framed result.
	q := nestedtest.QEMU(t, `case "$*" in
*"-cpu EPYC,+svm"*"-smp 3 -m 1024"*"-initrd "*) ;;
*) echo "bad args: $*"; exit 2 ;;
esac
printf 'noise\r\n`+BeginMarker+`\r\nok\r\n`+ExitMarker+` 7\r\n'
`)
	res, err := Run(context.Background(), Config{L1Kernel: img, QEMU: q, CPUs: 3, MemoryMiB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitStatus != 7 || res.Output != "ok\n" || res.Duration <= 0 {
		t.Errorf("result %+v", res)
	}
}

func TestRunStreamsLines(t *testing.T) {
	img := nestedtest.L1Image(t)
	q := nestedtest.QEMU(t, `printf '`+HeartbeatMarker+` 1.00\r\n`+BeginMarker+`\r\none\r\n'
printf '`+HeartbeatMarker+` 11.00\r\ntwo\r\n`+ExitMarker+` 0\r\n'
`)
	var lines []string
	var log bytes.Buffer
	res, err := Run(context.Background(), Config{L1Kernel: img, QEMU: q, Log: &log, Lines: func(l string) { lines = append(lines, l) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Output != "one\ntwo\n" || strings.Join(lines, "|") != "one|two" {
		t.Errorf("output %q, lines %q", res.Output, lines)
	}
	if !strings.Contains(log.String(), HeartbeatMarker+" 11.00") {
		t.Errorf("the log lacks the heartbeat: %q", log.String())
	}
}

// TestRunSilent checks that a session whose L1 goes quiet is killed with
// ErrSilent, both after its heartbeat started and when it never starts.
// The bounds are short; nothing is asserted about how long it took.
func TestRunSilent(t *testing.T) {
	img := nestedtest.L1Image(t)
	ctx := context.Background()
	q := nestedtest.QEMU(t, "echo '"+HeartbeatMarker+" 2.50'; echo "+BeginMarker+"; echo started; exec sleep 60\n")
	_, err := Run(ctx, Config{L1Kernel: img, QEMU: q, Silence: 300 * time.Millisecond})
	if !errors.Is(err, ErrSilent) || !strings.Contains(err.Error(), "uptime 2.50s") || !strings.Contains(err.Error(), "serial tail:\nRF-NESTED-ALIVE 2.50\nRF-NESTED-BEGIN\nstarted") {
		t.Errorf("silent L1: err = %v", err)
	}
	if !L1Failed(err) {
		t.Error("ErrSilent is not an L1 failure")
	}

	q = nestedtest.QEMU(t, "echo SeaBIOS; exec sleep 60\n")
	_, err = Run(ctx, Config{L1Kernel: img, QEMU: q, BootTimeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrSilent) || !strings.Contains(err.Error(), "no heartbeat") || !strings.Contains(err.Error(), "SeaBIOS") {
		t.Errorf("L1 stuck booting: err = %v", err)
	}

	// A script that finished has its result even if QEMU then hangs.
	q = nestedtest.QEMU(t, "echo '"+HeartbeatMarker+" 2.50'; echo "+BeginMarker+"; echo done; echo '"+ExitMarker+" 4'; exec sleep 60\n")
	res, err := Run(ctx, Config{L1Kernel: img, QEMU: q, Silence: 300 * time.Millisecond})
	if err != nil || res.ExitStatus != 4 || res.Output != "done\n" {
		t.Errorf("QEMU hanging after the script: %+v, %v", res, err)
	}
}

// TestL1KVM boots a real L1 guest and checks that /dev/kvm appears in it.
// It needs qemu-system-x86_64 and apt (to build the image); set
// RF_IMAGES_OUT to reuse an image cache (default: the repository's
// build/images).
func TestL1KVM(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	if _, err := exec.LookPath(DefaultQEMU); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	out := os.Getenv("RF_IMAGES_OUT")
	if out == "" {
		out = filepath.Join("..", "..", images.DefaultOutDir)
	}
	ctx := context.Background()
	buildStart := time.Now()
	img, err := images.Build(ctx, images.Options{OutDir: out})
	if errors.Is(err, images.ErrAptUnavailable) {
		t.Skipf("cannot build the image: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image ready in %v", time.Since(buildStart))
	var log bytes.Buffer
	res, err := Run(ctx, Config{
		L1Kernel: img,
		// The L2 artifacts travel along, as they will for end-to-end tests.
		ExtraFiles: map[string]string{
			"/l2/vmlinux":           img.Kernel,
			"/l2/initramfs.cpio.gz": img.Initramfs,
			"/l2/disk.img":          img.Disk,
		},
		Script:    "ls -l /dev/kvm && grep -c svm /proc/cpuinfo && test -s /l2/vmlinux\n",
		HugePages: 16,
		Timeout:   5 * time.Minute,
		Log:       &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("L1 run took %v; output:\n%s", res.Duration, res.Output)
	if testing.Verbose() {
		t.Logf("serial:\n%s", tail(res.Serial))
	}
	if res.ExitStatus != 0 {
		t.Fatalf("exit status %d; serial:\n%s", res.ExitStatus, res.Serial)
	}
	if !strings.Contains(res.Output, "/dev/kvm") {
		t.Errorf("no /dev/kvm in output")
	}
	if strings.Contains(res.Serial, "RF-INSMOD-FAILED") {
		t.Errorf("a module failed to load; serial:\n%s", tail(res.Serial))
	}
	if !strings.Contains(res.Serial, "RF-NESTED-HUGEPAGES 16") {
		t.Errorf("hugepages not reserved; serial:\n%s", tail(res.Serial))
	}
}
