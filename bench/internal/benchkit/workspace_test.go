package benchkit

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestWorkspace(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	t.Setenv("TMPDIR", t.TempDir())
	ws, err := NewWorkspace(context.Background(), "rf-test-", "./testdata/hello")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(ws.Dir), "rf-test-") || len(ws.Binaries) != 1 || ws.Binaries[0] != filepath.Join(ws.Dir, "hello") {
		t.Fatalf("workspace %+v", ws)
	}
	if _, err := os.Stat(ws.Binaries[0]); err != nil {
		t.Fatal(err)
	}
	if err := ws.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ws.Dir); !os.IsNotExist(err) {
		t.Errorf("workspace left behind: %v", err)
	}
}

func TestWorkspaceBuildFailureLeavesNothing(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if _, err := NewWorkspace(context.Background(), "rf-test-", "./testdata/absent"); err == nil {
		t.Fatal("no error")
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
