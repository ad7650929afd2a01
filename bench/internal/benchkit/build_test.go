package benchkit

import (
	"context"
	"debug/elf"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildStatic(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	dir := t.TempDir()
	paths, err := BuildStatic(context.Background(), dir, "./testdata/hello")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 || paths[0] != filepath.Join(dir, "hello") {
		t.Fatalf("paths %v", paths)
	}
	f, err := elf.Open(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a dynamic loader: not static")
		}
	}
}

func TestBuildStaticError(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	_, err := BuildStatic(context.Background(), t.TempDir(), "./testdata/absent")
	if err == nil || !strings.Contains(err.Error(), "go build ./testdata/absent") {
		t.Errorf("err %v", err)
	}
}
