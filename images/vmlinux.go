package images

import (
	"bytes"
	"errors"
	"fmt"

	"rainforest/vmm/boot"
)

// ErrNoVmlinux is returned when no PVH-bootable ELF kernel can be cut out of
// a bzImage.
var ErrNoVmlinux = errors.New("images: no PVH vmlinux in bzImage")

// extractVmlinux returns the uncompressed ELF kernel in an LZ4 bzImage
// (boot.ExtractVmlinux) after checking that it boots through PVH.
func extractVmlinux(bz []byte) ([]byte, error) {
	out, err := boot.ExtractVmlinux(bz)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoVmlinux, err)
	}
	f, err := boot.DetectFormat(bytes.NewReader(out), int64(len(out)))
	if err != nil || f != boot.FormatPVH {
		return nil, fmt.Errorf("%w: extracted kernel is not a PVH ELF (%v)", ErrNoVmlinux, err)
	}
	return out, nil
}
