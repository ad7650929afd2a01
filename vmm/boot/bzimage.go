package boot

import (
	"encoding/binary"
	"fmt"
	"io"

	"rainforest/vmm/guestmem"
)

// setupHeader is the part of the bzImage setup header the loader uses.
type setupHeader struct {
	raw           []byte // file bytes [0, hdrEnd); the header is raw[hdrStart:]
	hdrEnd        int    // end of the setup header (0x202 + jump offset byte)
	setupSects    uint64 // real-mode setup sectors (0 means 4)
	sysSize       uint64 // protected-mode kernel size in 16-byte units
	version       uint16
	loadflags     uint8
	code32Start   uint32
	initrdAddrMax uint32
	kernelAlign   uint32
	relocatable   bool
	xloadflags    uint16
	cmdlineSize   uint32
	payloadOffset uint32
	payloadLength uint32
	prefAddress   uint64
	initSize      uint32
}

// kernelOffset is the file offset of the protected-mode kernel.
func (h *setupHeader) kernelOffset() uint64 { return (h.setupSects + 1) * 512 }

// fileSize is the size of the bzImage the header describes: the setup
// sectors and the protected-mode kernel. The file may be longer (a
// signature appended), never shorter.
func (h *setupHeader) fileSize() uint64 { return h.kernelOffset() + h.sysSize*16 }

// parseSetupHeader reads and checks the setup header of a bzImage of size
// bytes. It requires boot protocol 2.12+ with a 64-bit entry point, and a
// file as long as the header says (setup_sects and syssize): a truncated
// bzImage would otherwise be loaded and fault in the guest.
func parseSetupHeader(r io.ReaderAt, size int64) (*setupHeader, error) {
	if size < hdrMinEnd {
		return nil, fmt.Errorf("%w: %d-byte bzImage shorter than its setup header (%#x bytes)", ErrTruncated, size, hdrMinEnd)
	}
	raw := make([]byte, min(size, hdrMaxEnd))
	if err := readFull(r, raw, 0); err != nil {
		return nil, fmt.Errorf("boot: reading setup header: %w", err)
	}
	if string(raw[hdrMagic:hdrMagic+4]) != bzMagic {
		return nil, fmt.Errorf("%w: no %q magic at %#x", ErrUnknownFormat, bzMagic, hdrMagic)
	}
	if f := le16(raw, hdrBootFlag); f != bootFlagValue {
		return nil, fmt.Errorf("%w: boot_flag %#x, want %#x", ErrMalformed, f, bootFlagValue)
	}
	h := &setupHeader{
		raw:           raw,
		hdrEnd:        hdrJump + 2 + int(raw[hdrJump+1]),
		setupSects:    uint64(raw[hdrSetupSects]),
		sysSize:       uint64(le32(raw, hdrSysSize)),
		version:       le16(raw, hdrVersion),
		loadflags:     raw[hdrLoadflags],
		code32Start:   le32(raw, hdrCode32Start),
		initrdAddrMax: le32(raw, hdrInitrdAddrMax),
		kernelAlign:   le32(raw, hdrKernelAlign),
		relocatable:   raw[hdrRelocatable] != 0,
		xloadflags:    le16(raw, hdrXLoadflags),
		cmdlineSize:   le32(raw, hdrCmdlineSize),
		payloadOffset: le32(raw, hdrPayloadOffset),
		payloadLength: le32(raw, hdrPayloadLength),
		prefAddress:   le64(raw, hdrPrefAddress),
		initSize:      le32(raw, hdrInitSize),
	}
	if h.setupSects == 0 {
		h.setupSects = 4
	}
	if h.version < minProtocol64 {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d, need 2.12 or later for the 64-bit entry",
			ErrUnsupported, h.version>>8, h.version&0xFF)
	}
	if h.xloadflags&xlfKernel64 == 0 {
		return nil, fmt.Errorf("%w: kernel has no 64-bit entry point (XLF_KERNEL_64 not set)", ErrUnsupported)
	}
	if h.hdrEnd < hdrMinEnd || h.hdrEnd > len(raw) {
		return nil, fmt.Errorf("%w: setup header ends at %#x, want %#x..%#x", ErrMalformed, h.hdrEnd, hdrMinEnd, len(raw))
	}
	if h.kernelOffset() >= uint64(size) {
		return nil, fmt.Errorf("%w: %d setup sectors reach past the end of the %d-byte file",
			ErrTruncated, h.setupSects, size)
	}
	if h.sysSize == 0 {
		return nil, fmt.Errorf("%w: syssize is 0 (no protected-mode kernel)", ErrMalformed)
	}
	if need := h.fileSize(); uint64(size) < need {
		return nil, fmt.Errorf("%w: bzImage truncated: %d bytes, header says %d (%d of setup and a %d-byte protected-mode kernel)",
			ErrTruncated, size, need, h.kernelOffset(), h.sysSize*16)
	}
	if h.loadflags&loadedHigh == 0 {
		return nil, fmt.Errorf("%w: zImage (LOADED_HIGH not set)", ErrUnsupported)
	}
	return h, nil
}

// loadBzImage loads the protected-mode kernel, writes boot_params, the
// command line and the page tables, and sets up the 64-bit entry.
func loadBzImage(mem *guestmem.Memory, p Params, res *Result) error {
	h, err := parseSetupHeader(p.Kernel, p.KernelSize)
	if err != nil {
		return err
	}
	if h.cmdlineSize != 0 && uint64(len(p.Cmdline)) > uint64(h.cmdlineSize) {
		return fmt.Errorf("%w: %d bytes, kernel accepts %d", ErrCmdlineTooLong, len(p.Cmdline), h.cmdlineSize)
	}
	lowEnd := LowRAMEnd(p.RAMSize)
	kOff := h.kernelOffset()
	kSize := uint64(p.KernelSize) - kOff

	load, end, err := bzImagePlacement(h, kSize, lowEnd)
	if err != nil {
		return err
	}
	dst, err := mem.Slice(load, kSize)
	if err != nil {
		return fmt.Errorf("boot: kernel at %#x+%#x: %w: %w", load, kSize, ErrNoFit, err)
	}
	if err := readFull(p.Kernel, dst, int64(kOff)); err != nil {
		return fmt.Errorf("boot: reading protected-mode kernel: %w", err)
	}
	res.KernelStart, res.KernelEnd = load, end

	limit := lowEnd
	if h.initrdAddrMax != 0 {
		limit = min(limit, uint64(h.initrdAddrMax)+1)
	}
	if err := loadInitrd(mem, p, limit, res); err != nil {
		return err
	}
	if err := writeCmdline(mem, p.Cmdline); err != nil {
		return err
	}
	if err := writeZeroPage(mem, h, res, p.RSDPAddr); err != nil {
		return err
	}
	if err := writeGDT(mem); err != nil {
		return err
	}
	if err := writePageTables(mem); err != nil {
		return err
	}
	res.Entry = load + entry64Offset
	res.BootInfo = ZeroPageAddr
	res.CPU = longModeCPUState(res.Entry)
	return nil
}

// bzImagePlacement picks the load address of the protected-mode kernel and
// the end of the memory it needs. A relocatable kernel whose pref_address
// leaves room for init_size is loaded there; otherwise at code32_start
// (normally 0x100000). The kernel decompresses itself at
// max(align_up(load, kernel_alignment), pref_address) using init_size bytes,
// so the returned end covers that too.
func bzImagePlacement(h *setupHeader, kSize, lowEnd uint64) (load, end uint64, err error) {
	const maxAddr = 1 << 48
	load = BzImageLoadAddr
	if h.code32Start >= HighMemStart {
		load = uint64(h.code32Start)
	}
	initSize := max(uint64(h.initSize), kSize)
	pref := h.prefAddress
	if pref >= maxAddr {
		return 0, 0, fmt.Errorf("%w: pref_address %#x", ErrMalformed, pref)
	}
	if h.relocatable && pref >= HighMemStart && pref+initSize <= lowEnd {
		load = pref
	}
	run := load
	if align := uint64(h.kernelAlign); h.relocatable && align != 0 && align&(align-1) == 0 && align < maxAddr {
		run = (load + align - 1) &^ (align - 1)
	}
	if pref >= HighMemStart {
		run = max(run, pref)
	}
	end = max(load+kSize, run+initSize)
	if end > lowEnd {
		return 0, 0, fmt.Errorf("boot: kernel needs [%#x,%#x), low RAM ends at %#x: %w", load, end, lowEnd, ErrNoFit)
	}
	return load, end, nil
}

// writeZeroPage builds struct boot_params at ZeroPageAddr.
func writeZeroPage(mem *guestmem.Memory, h *setupHeader, res *Result, rsdp uint64) error {
	if len(res.E820) > MaxE820Entries {
		return fmt.Errorf("%w: %d e820 entries, max %d", ErrBadParams, len(res.E820), MaxE820Entries)
	}
	zp := make([]byte, zeroPageSize)
	copy(zp[hdrStart:h.hdrEnd], h.raw[hdrStart:h.hdrEnd])
	le := binary.LittleEndian
	zp[hdrTypeOfLoader] = loaderTypeUnknown
	zp[hdrLoadflags] = h.loadflags | canUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], setupHeapEnd-0x200)
	le.PutUint32(zp[hdrCmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[hdrRamdiskImage:], uint32(res.InitrdAddr))
	le.PutUint32(zp[hdrRamdiskSize:], uint32(res.InitrdSize))
	le.PutUint32(zp[hdrCode32Start:], uint32(res.KernelStart))
	if h.version >= protocolACPIRSDP {
		le.PutUint64(zp[bpACPIRSDPAddr:], rsdp)
	}
	zp[bpE820Entries] = uint8(len(res.E820))
	for i, e := range res.E820 {
		off := bpE820Table + e820EntrySize*i
		le.PutUint64(zp[off:], e.Addr)
		le.PutUint64(zp[off+8:], e.Size)
		le.PutUint32(zp[off+16:], e.Type)
	}
	if err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return fmt.Errorf("boot: writing boot_params: %w", err)
	}
	return nil
}
