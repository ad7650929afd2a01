package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"rainforest/internal/units"
)

// A bad -size is refused before anything is created, naming the flag.
func TestRunBadSize(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ivshmem.sock")
	for _, size := range []string{"0", "", "-1M", "1.5M", "99999999999999999999G"} {
		err := run([]string{"-socket", sock, "-size", size})
		if !errors.Is(err, units.ErrSize) || !strings.HasPrefix(err.Error(), "-size: ") {
			t.Errorf("-size %q: %v; want a -size error matching units.ErrSize", size, err)
		}
	}
}
