package images

import (
	"bytes"
	"errors"
	"testing"
)

// Extraction itself is tested in vmm/boot; here only the PVH check on top.
func TestExtractVmlinuxRejectsGarbage(t *testing.T) {
	for _, bz := range [][]byte{nil, bytes.Repeat([]byte{1}, 4096), []byte("\x02\x21\x4C\x18garbage")} {
		if _, err := extractVmlinux(bz); !errors.Is(err, ErrNoVmlinux) {
			t.Errorf("extractVmlinux(%d bytes) = %v, want ErrNoVmlinux", len(bz), err)
		}
	}
}
