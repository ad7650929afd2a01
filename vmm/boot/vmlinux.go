package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// ErrUnsupportedCompression: the bzImage payload is not LZ4-compressed.
var ErrUnsupportedCompression = errors.New("unsupported bzImage payload compression")

// MaxVmlinuxSize bounds the output of ExtractVmlinux.
const MaxVmlinuxSize = 1 << 30

// lz4LegacyMagic is the LZ4 legacy frame magic 0x184C2102, little-endian.
const lz4LegacyMagic = "\x02\x21\x4C\x18"

// compressionName names the compressor whose magic number starts payload,
// for error messages.
func compressionName(payload []byte) string {
	for _, m := range []struct{ name, magic string }{
		{"gzip", "\x1F\x8B"},
		{"xz", "\xFD7zXZ\x00"},
		{"zstd", "\x28\xB5\x2F\xFD"},
		{"bzip2", "BZh"},
		{"lzo", "\x89LZO"},
		{"lzma", "\x5D\x00\x00"},
	} {
		if bytes.HasPrefix(payload, []byte(m.magic)) {
			return m.name
		}
	}
	return "unknown"
}

// ExtractVmlinux returns the ELF vmlinux inside an LZ4-compressed bzImage
// (the decompressed payload: a stripped vmlinux, followed on relocatable
// kernels by the relocation table the decompressor uses, which ELF readers
// ignore). Debian's kernels are LZ4-compressed; other compressors are
// reported as ErrUnsupportedCompression.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	h, err := parseSetupHeader(bytes.NewReader(bzImage), int64(len(bzImage)))
	if err != nil {
		return nil, err
	}
	if h.version < protocolPayload {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d has no payload fields", ErrUnsupported, h.version>>8, h.version&0xFF)
	}
	start := h.kernelOffset() + uint64(h.payloadOffset)
	n := uint64(h.payloadLength)
	if start > uint64(len(bzImage)) || n > uint64(len(bzImage))-start {
		return nil, fmt.Errorf("%w: payload at %#x+%#x beyond end of %d-byte bzImage", ErrTruncated, start, n, len(bzImage))
	}
	payload := bzImage[start : start+n]
	if !bytes.HasPrefix(payload, []byte(lz4LegacyMagic)) {
		return nil, fmt.Errorf("%w: payload compression is %s, only LZ4 (legacy frame) is supported",
			ErrUnsupportedCompression, compressionName(payload))
	}
	// The kernel build appends the decompressed size as a little-endian
	// uint32 after the frame.
	if len(payload) < len(lz4LegacyMagic)+4 {
		return nil, fmt.Errorf("%w: %d-byte LZ4 payload", ErrTruncated, len(payload))
	}
	want := uint64(le32(payload, len(payload)-4))
	if want > MaxVmlinuxSize {
		return nil, fmt.Errorf("%w: decompressed size %d exceeds %d", ErrMalformed, want, MaxVmlinuxSize)
	}
	var out bytes.Buffer
	zr := lz4.NewReader(bytes.NewReader(payload))
	got, err := io.Copy(&out, io.LimitReader(zr, int64(want)+1))
	if err != nil {
		return nil, fmt.Errorf("%w: decompressing LZ4 payload: %w", ErrMalformed, err)
	}
	if uint64(got) != want {
		return nil, fmt.Errorf("%w: decompressed %d bytes, size trailer says %d", ErrMalformed, got, want)
	}
	vmlinux := out.Bytes()
	if !bytes.HasPrefix(vmlinux, []byte(elfMagic)) {
		return nil, fmt.Errorf("%w: decompressed payload is not an ELF file", ErrMalformed)
	}
	return vmlinux, nil
}
