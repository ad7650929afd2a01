package images

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func sampleArchive(t *testing.T) *Archive {
	t.Helper()
	src := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(src, bytes.Repeat([]byte("x"), 1001), 0o600); err != nil {
		t.Fatal(err)
	}
	a := NewArchive()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddFile("/init", 0o755, []byte("#!/bin/sh\n")))
	must(a.AddFile("etc/odd", 0o644, []byte("abc"))) // length not a multiple of 4
	must(a.AddSymlink("bin/sh", "busybox"))
	must(a.AddHostFile("usr/bin/big", 0o755, src))
	must(a.AddDir("proc", 0o555))
	return a
}

func TestArchiveRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	n, err := sampleArchive(t).WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n%512 != 0 {
		t.Errorf("WriteTo returned %d for %d bytes (want a multiple of 512)", n, buf.Len())
	}
	entries, err := ReadArchive(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	got := map[string]*Entry{}
	for _, e := range entries {
		paths = append(paths, e.Path)
		got[e.Path] = e
	}
	want := []string{"bin", "bin/sh", "etc", "etc/odd", "init", "proc", "usr", "usr/bin", "usr/bin/big"}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("paths %v, want %v", paths, want)
	}
	if e := got["init"]; string(e.Data) != "#!/bin/sh\n" || e.Mode != modeRegular|0o755 {
		t.Errorf("init: %+v", e)
	}
	if e := got["etc/odd"]; string(e.Data) != "abc" {
		t.Errorf("etc/odd: %q", e.Data)
	}
	if e := got["bin/sh"]; !e.IsSymlink() || e.LinkTarget != "busybox" {
		t.Errorf("bin/sh: %+v", e)
	}
	if e := got["usr/bin/big"]; len(e.Data) != 1001 || e.Mode != modeRegular|0o755 {
		t.Errorf("usr/bin/big: %d bytes mode %o", len(e.Data), e.Mode)
	}
	if e := got["proc"]; !e.IsDir() || e.Mode&0o777 != 0o555 {
		t.Errorf("proc: mode %o", e.Mode)
	}
}

func TestArchiveDeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if _, err := sampleArchive(t).WriteTo(&a); err != nil {
		t.Fatal(err)
	}
	if _, err := sampleArchive(t).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two identical archives differ")
	}
	var ga, gb bytes.Buffer
	if err := WriteGzip(&ga, sampleArchive(t)); err != nil {
		t.Fatal(err)
	}
	if err := WriteGzip(&gb, sampleArchive(t)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ga.Bytes(), gb.Bytes()) {
		t.Error("gzip output not deterministic")
	}
}

func TestArchiveWithCpioTool(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed")
	}
	var buf bytes.Buffer
	if _, err := sampleArchive(t).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-t", "-v", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	s := string(out)
	for _, want := range []string{"bin/sh -> busybox", "usr/bin/big", "etc/odd", "init"} {
		if !strings.Contains(s, want) {
			t.Errorf("cpio -t output lacks %q:\n%s", want, s)
		}
	}
}

func TestArchiveErrors(t *testing.T) {
	a := NewArchive()
	if err := a.AddFile("/", 0o644, nil); err == nil {
		t.Error("empty path accepted")
	}
	if err := a.AddFile("f", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.AddFile("f/g", 0o644, nil); err == nil {
		t.Error("file under a regular file accepted")
	}
	if err := a.AddHostFile("h", 0o644, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing host file accepted")
	}
	for _, bad := range [][]byte{
		[]byte("not an archive at all, long enough to hold a header of one hundred and ten bytes..............."),
		[]byte("070701"),
		append([]byte("070701"), bytes.Repeat([]byte("Z"), 104)...),
	} {
		if _, err := ReadArchive(bytes.NewReader(bad)); !errors.Is(err, ErrBadArchive) {
			t.Errorf("ReadArchive(%q...) err = %v", bad[:6], err)
		}
	}
	// A truncated archive.
	var buf bytes.Buffer
	if _, err := sampleArchive(t).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadArchive(bytes.NewReader(buf.Bytes()[:300])); !errors.Is(err, ErrBadArchive) {
		t.Errorf("truncated: err = %v", err)
	}
}
