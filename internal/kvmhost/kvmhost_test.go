package kvmhost

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"rainforest/internal/nested"
	"rainforest/internal/nested/nestedtest"
	"rainforest/internal/qemubundle"
)

func TestChoose(t *testing.T) {
	if need, why := Choose(NestedAlways); !need || !strings.Contains(why, "-nested always") {
		t.Errorf("always: %v %q", need, why)
	}
	if need, why := Choose(NestedNever); need || !strings.Contains(why, "-nested never") {
		t.Errorf("never: %v %q", need, why)
	}
	if _, why := Choose("auto"); why == "" {
		t.Error("auto: no reason")
	}
}

// fakeQEMUInstall makes dir/bin/qemu-system-x86_64 with dir/share/qemu
// next to it, as a package installs them.
func fakeQEMUInstall(t *testing.T) string {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "share", "qemu"), 0o755); err != nil {
		t.Fatal(err)
	}
	return nestedtest.WriteFile(t, filepath.Join(dir, "bin", "qemu-system-x86_64"), "#!/bin/sh\n", 0o755)
}

func TestRunDirect(t *testing.T) {
	dir := t.TempDir()
	tool := nestedtest.WriteFile(t, filepath.Join(dir, "tool"), "#!/bin/sh\necho tool ran\n", 0o755)
	nestedtest.WriteFile(t, filepath.Join(dir, "l2", "vmlinux"), "kernel", 0o644)
	qemu := fakeQEMUInstall(t)
	var log strings.Builder
	h := &Host{Log: &log}
	var got []string
	res, err := h.Run(context.Background(), Script{
		Text: `"$TOOL"; cat "$L2/vmlinux"; echo; echo "q=$QEMU d=$QEMU_DATA"; echo err >&2; printf 'no newline'; exit 3`,
		Files: []File{
			{Var: "TOOL", Host: tool, L1: "/bin/tool"},
			{Var: "L2", Host: filepath.Join(dir, "l2"), L1: "/l2", Names: []string{"vmlinux"}},
		},
		QEMU:  qemu,
		Lines: func(l string) { got = append(got, l) },
		// Ignored on a direct run.
		CPUs: 3, Silence: time.Nanosecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tool ran", "kernel", "q=" + qemu + " d=" + filepath.Join(filepath.Dir(qemu), "..", "share", "qemu"), "err", "no newline"}
	if !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
	if res.ExitStatus != 3 || res.Output != strings.Join(want, "\n")+"\n" {
		t.Errorf("result %+v", res)
	}
	if !strings.HasPrefix(log.String(), "tool ran\nkernel\n") {
		t.Errorf("log %q", log.String())
	}
	if h.Path(File{Host: tool, L1: "/bin/tool"}) != tool {
		t.Error("Path of a direct host is not the host path")
	}
}

func TestRunDirectTimeout(t *testing.T) {
	h := &Host{}
	var got []string
	// The background sleep holds the output pipe: the whole process
	// group is killed.
	_, err := h.Run(context.Background(), Script{Text: "echo started; sleep 60 & sleep 60", Timeout: 200 * time.Millisecond,
		Lines: func(l string) { got = append(got, l) }})
	if !errors.Is(err, context.DeadlineExceeded) || !slices.Equal(got, []string{"started"}) {
		t.Errorf("err = %v, lines %q", err, got)
	}
}

func TestBadScript(t *testing.T) {
	h := &Host{}
	for _, f := range []File{{Var: "1X", Host: "/x", L1: "/x"}, {Var: "A-B", Host: "/x", L1: "/x"}, {Var: "X", L1: "/x"}, {Var: "X", Host: "/x", L1: "x"}} {
		if _, err := h.Run(context.Background(), Script{Text: "true", Files: []File{f}}); !errors.Is(err, ErrBadScript) {
			t.Errorf("file %+v: err = %v", f, err)
		}
	}
}

// TestRunNested runs against a fake QEMU that checks the L1 initramfs
// for the files and exports, and fails the first session like a dying L1.
func TestRunNested(t *testing.T) {
	dir := t.TempDir()
	tool := nestedtest.WriteFile(t, filepath.Join(dir, "tool"), "TOOL-CONTENT\n", 0o755)
	nestedtest.WriteFile(t, filepath.Join(dir, "l2", "disk.img"), "DISK-CONTENT\n", 0o644)
	s := Script{
		Text: "true\n",
		Files: []File{
			{Var: "TOOL", Host: tool, L1: "/bin/tool"},
			{Var: "L2", Host: filepath.Join(dir, "l2"), L1: "/l2", Names: []string{"disk.img"}},
		},
	}
	want := []string{"TOOL-CONTENT", "DISK-CONTENT", "export TOOL=/bin/tool", "export L2=/l2"}
	// A small dynamic program stands in for the bundled QEMU where the
	// microvm firmware is installed next to it (../share/qemu).
	if _, err := qemubundle.Collect(context.Background(), "/usr/bin/true"); err == nil {
		s.QEMU = "/usr/bin/true"
		want = append(want, "export QEMU="+qemubundle.GuestBinary, "export QEMU_DATA="+qemubundle.GuestDataDir, "export LD_LIBRARY_PATH=")
	} else {
		t.Logf("no QEMU bundle checked: %v", err)
	}
	tries := filepath.Join(dir, "tries")
	q := nestedtest.QEMU(t, `while [ "$1" != -initrd ]; do shift; done
for want in '`+strings.Join(want, "' '")+`'; do
	grep -q "$want" "$2" || { echo "initramfs lacks $want"; exit 1; }
done
echo x >>`+tries+`
echo '`+nested.HeartbeatMarker+` 1.00'
echo `+nested.BeginMarker+`
echo "try $(wc -l <`+tries+`)"
[ "$(wc -l <`+tries+`)" = 1 ] && exit 1
echo '`+nested.ExitMarker+` 5'
`)
	var log strings.Builder
	h := &Host{Nested: true, L1: nestedtest.L1Image(t), QEMU: q, Log: &log}
	var got []string
	s.Lines = func(l string) { got = append(got, l) }

	_, err := h.Run(context.Background(), s)
	if !errors.Is(err, nested.ErrNoExitMarker) || !strings.Contains(err.Error(), "try 1") {
		t.Fatalf("without Rerun: err = %v", err)
	}
	var reruns []error
	s.Rerun = func(err error) { reruns = append(reruns, err) }
	os.Remove(tries)
	got = nil
	res, err := h.Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitStatus != 5 || res.Output != "try 2\n" || len(reruns) != 1 || !errors.Is(reruns[0], nested.ErrNoExitMarker) {
		t.Errorf("result %+v, reruns %v", res, reruns)
	}
	if !slices.Equal(got, []string{"try 1", "try 2"}) {
		t.Errorf("lines %q", got)
	}
	if !strings.Contains(log.String(), "running the session again") {
		t.Errorf("the log does not say the session was rerun:\n%s", log.String())
	}
	if h.Path(s.Files[0]) != "/bin/tool" {
		t.Error("Path of a nested host is not the L1 path")
	}
}

// TestRunDirectDisks gives a direct script a copy of each disk: what it
// writes does not reach the image, and the copy is gone afterwards.
func TestRunDirectDisks(t *testing.T) {
	dir := t.TempDir()
	img := nestedtest.WriteFile(t, filepath.Join(dir, "a,b.img"), "ORIGINAL", 0o644)
	h := &Host{}
	res, err := h.Run(context.Background(), Script{
		Text:  `cat "$DISK"; echo; echo CHANGED >"$DISK"; cat "$DISK"; echo "path $DISK"`,
		Disks: []Disk{{Var: "DISK", Host: img}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Output, "ORIGINAL\nCHANGED\npath ") {
		t.Errorf("output %q", res.Output)
	}
	if data, _ := os.ReadFile(img); string(data) != "ORIGINAL" {
		t.Errorf("the image was written: %q", data)
	}
	copyPath := strings.TrimSpace(strings.TrimPrefix(res.Output[strings.Index(res.Output, "path "):], "path "))
	if copyPath == img {
		t.Fatal("the script got the image itself")
	}
	if _, err := os.Stat(copyPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the copy %s is left behind: %v", copyPath, err)
	}
}

// TestRunNestedDisks checks that disks are attached to L1 with throwaway
// writes, named /dev/vda, /dev/vdb to the script, and that L1 loads the
// virtio-blk driver for them.
func TestRunNestedDisks(t *testing.T) {
	dir := t.TempDir()
	a := nestedtest.WriteFile(t, filepath.Join(dir, "a,1.img"), "A", 0o644)
	b := nestedtest.WriteFile(t, filepath.Join(dir, "b.img"), "B", 0o644)
	q := nestedtest.QEMU(t, `args="$*"
for want in "-drive file=`+filepath.Join(dir, "a,,1.img")+`,format=raw,if=virtio,snapshot=on" "-drive file=`+b+`,format=raw,if=virtio,snapshot=on"; do
	case "$args" in *"$want"*) ;; *) echo "args lack $want: $args"; exit 1 ;; esac
done
while [ "$1" != -initrd ]; do shift; done
for want in 'export A=/dev/vda' 'export B=/dev/vdb' 'lib/modules/virtio_blk.ko' 'lib/modules/virtio_pci.ko'; do
	grep -q "$want" "$2" || { echo "initramfs lacks $want"; exit 1; }
done
echo '`+nested.HeartbeatMarker+` 1.00'
echo `+nested.BeginMarker+`
echo ok
echo '`+nested.ExitMarker+` 0'
`)
	h := &Host{Nested: true, L1: nestedtest.L1Image(t), QEMU: q}
	res, err := h.Run(context.Background(), Script{Text: "true\n", Disks: []Disk{{Var: "A", Host: a}, {Var: "B", Host: b}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Output != "ok\n" {
		t.Errorf("output %q", res.Output)
	}
	if _, err := h.Run(context.Background(), Script{Text: "true\n", Disks: []Disk{{Var: "A", Host: filepath.Join(dir, "missing.img")}}}); err == nil {
		t.Error("a missing disk image was accepted")
	}
}

func TestBadDisks(t *testing.T) {
	h := &Host{}
	many := make([]Disk, maxDisks+1)
	for i := range many {
		many[i] = Disk{Var: "D", Host: "/x"}
	}
	for _, disks := range [][]Disk{{{Var: "1D", Host: "/x"}}, {{Var: "D"}}, many} {
		if _, err := h.Run(context.Background(), Script{Text: "true", Disks: disks}); !errors.Is(err, ErrBadScript) {
			t.Errorf("disks %d %+v: err = %v", len(disks), disks[0], err)
		}
	}
}

func TestDynamicFiles(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip(err)
	}
	real, err := filepath.EvalSymlinks(sh)
	if err != nil {
		t.Fatal(err)
	}
	files, err := DynamicFiles(context.Background(), real)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 || files[0].Host != real || files[0].L1 != real {
		t.Fatalf("files %v", files)
	}
	for _, f := range files[1:] {
		if f.Host != f.L1 || !filepath.IsAbs(f.L1) {
			t.Errorf("library %v", f)
		}
	}
	if _, err := DynamicFiles(context.Background(), filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("no error for a missing program")
	}
}
