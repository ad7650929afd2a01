package hostfiles

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func TestPrograms(t *testing.T) {
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	files, err := Programs(context.Background(), "sh", sh)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 || !strings.HasSuffix(files[0].Host, "/sh") {
		t.Fatalf("files %+v", files)
	}
	seen := map[string]bool{}
	for _, f := range files {
		if f.Host != f.L1 || !strings.HasPrefix(f.Host, "/") || seen[f.Host] {
			t.Errorf("file %+v: want an absolute path, the same in L1, once", f)
		}
		seen[f.Host] = true
	}
	if _, err := Programs(context.Background(), "rf-no-such-program"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing program: %v", err)
	}
}
