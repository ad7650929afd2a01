package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// elfMagic starts every ELF file.
const elfMagic = "\x7fELF"

// Offsets into the bzImage file / boot_params of the setup header fields used.
const (
	hdrStart          = 0x1F1 // struct setup_header inside boot_params
	hdrSetupSects     = 0x1F1
	hdrSysSize        = 0x1F4 // protected-mode kernel size in 16-byte units (32 bits since 2.04)
	hdrBootFlag       = 0x1FE
	hdrJump           = 0x200
	hdrMagic          = 0x202 // "HdrS"
	hdrVersion        = 0x206
	hdrTypeOfLoader   = 0x210
	hdrLoadflags      = 0x211
	hdrCode32Start    = 0x214
	hdrRamdiskImage   = 0x218
	hdrRamdiskSize    = 0x21C
	hdrHeapEndPtr     = 0x224
	hdrCmdLinePtr     = 0x228
	hdrInitrdAddrMax  = 0x22C
	hdrKernelAlign    = 0x230
	hdrRelocatable    = 0x234
	hdrXLoadflags     = 0x236
	hdrCmdlineSize    = 0x238
	hdrPayloadOffset  = 0x248
	hdrPayloadLength  = 0x24C
	hdrPrefAddress    = 0x258
	hdrInitSize       = 0x260
	hdrMinEnd         = 0x264 // header bytes needed (through init_size) for protocol 2.12
	hdrMaxEnd         = 0x290 // end of the setup_header area in boot_params
	bpACPIRSDPAddr    = 0x070
	bpE820Entries     = 0x1E8
	bpE820Table       = 0x2D0
	e820EntrySize     = 20
	bzMagic           = "HdrS"
	bootFlagValue     = 0xAA55
	loadedHigh        = 0x01
	canUseHeap        = 0x80
	xlfKernel64       = 0x01
	minProtocol64     = 0x020C
	protocolACPIRSDP  = 0x020E
	protocolPayload   = 0x0208
	zeroPageSize      = 0x1000
	entry64Offset     = 0x200
	setupHeapEnd      = 0xFE00
	loaderTypeUnknown = 0xFF
)

// DetectFormat reads the start of a kernel image of size bytes and reports
// whether it is a PVH ELF or a bzImage. It only checks magic numbers; the
// loaders validate the rest.
func DetectFormat(r io.ReaderAt, size int64) (Format, error) {
	if r == nil {
		return FormatUnknown, fmt.Errorf("%w: no kernel", ErrBadParams)
	}
	if size <= 0 {
		return FormatUnknown, fmt.Errorf("%w: empty kernel file", ErrUnknownFormat)
	}
	head := make([]byte, min(size, hdrMagic+4))
	if err := readFull(r, head, 0); err != nil {
		return FormatUnknown, fmt.Errorf("boot: reading kernel header: %w", err)
	}
	if bytes.HasPrefix(head, []byte(elfMagic)) {
		return FormatPVH, nil
	}
	if len(head) == hdrMagic+4 && string(head[hdrMagic:]) == bzMagic {
		return FormatBzImage, nil
	}
	if len(head) < len(elfMagic) && bytes.HasPrefix([]byte(elfMagic), head) {
		return FormatUnknown, fmt.Errorf("%w: %d-byte file cut inside the ELF magic", ErrTruncated, len(head))
	}
	return FormatUnknown, fmt.Errorf("%w: %d-byte file has neither ELF magic nor %q at %#x",
		ErrUnknownFormat, size, bzMagic, hdrMagic)
}

func le16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func le64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

// Validate checks a kernel image as far as can be done without guest
// memory: its format, and for PVH the ELF headers and entry note, for a
// bzImage the setup header. It returns the format.
func Validate(r io.ReaderAt, size int64) (Format, error) {
	f, err := DetectFormat(r, size)
	if err != nil {
		return FormatUnknown, err
	}
	switch f {
	case FormatPVH:
		ef, err := openELF(r, size)
		if err != nil {
			return f, err
		}
		if _, err := pvhEntry(ef); err != nil {
			return f, err
		}
	case FormatBzImage:
		if _, err := parseSetupHeader(r, size); err != nil {
			return f, err
		}
	}
	return f, nil
}
