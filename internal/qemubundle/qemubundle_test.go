package qemubundle

import (
	"context"
	"errors"
	"os/exec"
	"reflect"
	"testing"
)

const lddOut = `	linux-vdso.so.1 (0x00007ffd1a3f2000)
	libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f4c14dab000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4c13a80000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f4c16084000)
	libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f4c14dab000)
`

func TestParseLdd(t *testing.T) {
	got, err := ParseLdd(lddOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got, err := ParseLdd("\tstatically linked\n"); err != nil || len(got) != 0 {
		t.Fatalf("static: %v %v", got, err)
	}
	if _, err := ParseLdd("\tlibfoo.so.1 => not found\n"); !errors.Is(err, ErrMissing) {
		t.Fatalf("not found: %v", err)
	}
}

func TestCollectInstalledQEMU(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	b, err := Collect(context.Background(), qemu)
	if err != nil {
		t.Fatal(err)
	}
	if b.Files[GuestBinary] == "" || b.Files[GuestDataDir+"/bios-microvm.bin"] == "" || len(b.LibDirs) == 0 {
		t.Fatalf("incomplete bundle: %+v", b)
	}
}
