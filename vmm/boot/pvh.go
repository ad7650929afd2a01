package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"

	"rainforest/vmm/guestmem"
)

// PVH constants (Xen public headers: elfnote.h, arch-x86/hvm/start_info.h).
const (
	XenElfnotePhys32Entry = 18
	StartInfoMagic        = 0x336ec578
	startInfoVersion      = 1
	startInfoSize         = 0x38
	modlistAddr           = StartInfoAddr + 0x40 // one hvm_modlist_entry (32 bytes)
	modlistEntrySize      = 0x20
	memmapAddr            = modlistAddr + modlistEntrySize // hvm_memmap_table_entry array
	memmapEntrySize       = 0x18
	memmapMaxEntries      = (ZeroPageAddr - memmapAddr) / memmapEntrySize
	maxNoteSize           = 1 << 20 // larger PT_NOTE segments are not read
)

// loadPVH loads an ELF kernel with a PVH entry note and writes hvm_start_info.
func loadPVH(mem *guestmem.Memory, p Params, res *Result) error {
	f, err := openELF(p.Kernel, p.KernelSize)
	if err != nil {
		return err
	}
	entry, err := pvhEntry(f)
	if err != nil {
		return err
	}
	start, end, err := loadSegments(mem, f, p.KernelSize)
	if err != nil {
		return err
	}
	res.KernelStart, res.KernelEnd = start, end
	if err := loadInitrd(mem, p, LowRAMEnd(p.RAMSize), res); err != nil {
		return err
	}
	if err := writeCmdline(mem, p.Cmdline); err != nil {
		return err
	}
	if err := writeStartInfo(mem, res, p.RSDPAddr); err != nil {
		return err
	}
	if err := writeGDT(mem); err != nil {
		return err
	}
	res.Entry = entry
	res.BootInfo = StartInfoAddr
	res.CPU = pvhCPUState(entry)
	return nil
}

// openELF validates the ELF header extents against the file size and parses
// it with debug/elf. Only 64-bit little-endian x86-64 files are accepted.
func openELF(r io.ReaderAt, size int64) (*elf.File, error) {
	var hdr elf.Header64
	hdrSize := int64(binary.Size(hdr))
	if size < hdrSize {
		return nil, fmt.Errorf("%w: %d-byte ELF file shorter than its %d-byte header", ErrTruncated, size, hdrSize)
	}
	buf := make([]byte, hdrSize)
	if err := readFull(r, buf, 0); err != nil {
		return nil, fmt.Errorf("boot: reading ELF header: %w", err)
	}
	if buf[elf.EI_CLASS] != byte(elf.ELFCLASS64) {
		return nil, fmt.Errorf("%w: ELF class %v, want ELFCLASS64", ErrUnsupported, elf.Class(buf[elf.EI_CLASS]))
	}
	if buf[elf.EI_DATA] != byte(elf.ELFDATA2LSB) {
		return nil, fmt.Errorf("%w: ELF data encoding %v, want little-endian", ErrUnsupported, elf.Data(buf[elf.EI_DATA]))
	}
	if _, err := binary.Decode(buf, binary.LittleEndian, &hdr); err != nil {
		return nil, fmt.Errorf("%w: ELF header: %w", ErrMalformed, err)
	}
	if m := elf.Machine(hdr.Machine); m != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: ELF machine %v, want EM_X86_64", ErrUnsupported, m)
	}
	if err := checkExtent("program headers", hdr.Phoff, uint64(hdr.Phnum)*uint64(hdr.Phentsize), size); err != nil {
		return nil, err
	}
	if err := checkExtent("section headers", hdr.Shoff, uint64(hdr.Shnum)*uint64(hdr.Shentsize), size); err != nil {
		return nil, err
	}
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return f, nil
}

// checkExtent reports ErrTruncated if [off, off+n) is not inside the file.
func checkExtent(what string, off, n uint64, size int64) error {
	if off > uint64(size) || n > uint64(size)-off {
		return fmt.Errorf("%w: %s at %#x+%#x beyond end of %d-byte file", ErrTruncated, what, off, n, size)
	}
	return nil
}

// pvhEntry finds the XEN_ELFNOTE_PHYS32_ENTRY note in the PT_NOTE segments
// (or, failing that, SHT_NOTE sections) and returns the 32-bit entry address.
func pvhEntry(f *elf.File) (uint64, error) {
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_NOTE {
			continue
		}
		if entry, ok, err := findPVHNote(prog.Open(), prog.Filesz); err != nil || ok {
			return entry, err
		}
	}
	for _, sec := range f.Sections {
		if sec.Type != elf.SHT_NOTE {
			continue
		}
		if entry, ok, err := findPVHNote(sec.Open(), sec.Size); err != nil || ok {
			return entry, err
		}
	}
	return 0, ErrNoPVHNote
}

// findPVHNote scans one note area of size bytes for the PVH entry note.
func findPVHNote(r io.ReadSeeker, size uint64) (uint64, bool, error) {
	if size > maxNoteSize {
		return 0, false, fmt.Errorf("%w: ELF note area of %d bytes", ErrMalformed, size)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, false, fmt.Errorf("%w: reading ELF notes: %w", ErrTruncated, err)
	}
	align4 := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz := uint64(le32(data, 0))
		descsz := uint64(le32(data, 4))
		typ := le32(data, 8)
		rest := uint64(len(data)) - 12
		if namesz > rest {
			return 0, false, fmt.Errorf("%w: ELF note name overruns its area", ErrMalformed)
		}
		name := data[12 : 12+namesz]
		descOff := min(12+align4(namesz), uint64(len(data)))
		if descsz > uint64(len(data))-descOff {
			return 0, false, fmt.Errorf("%w: ELF note descriptor overruns its area", ErrMalformed)
		}
		desc := data[descOff : descOff+descsz]
		if typ == XenElfnotePhys32Entry && string(bytes.TrimRight(name, "\x00")) == "Xen" {
			var entry uint64
			switch len(desc) {
			case 4:
				entry = uint64(le32(desc, 0))
			case 8:
				entry = le64(desc, 0)
			default:
				return 0, false, fmt.Errorf("%w: PVH entry note has %d-byte descriptor", ErrMalformed, len(desc))
			}
			if entry > 0xFFFFFFFF {
				return 0, false, fmt.Errorf("%w: PVH entry %#x above 4 GiB", ErrMalformed, entry)
			}
			return entry, true, nil
		}
		next := min(descOff+align4(descsz), uint64(len(data)))
		data = data[next:]
	}
	return 0, false, nil
}

// loadSegments copies the PT_LOAD segments to their physical addresses,
// zeroing the part of each beyond its file size, and returns the range of
// guest memory they cover.
func loadSegments(mem *guestmem.Memory, f *elf.File, size int64) (start, end uint64, err error) {
	start = ^uint64(0)
	for i, prog := range f.Progs {
		if prog.Type != elf.PT_LOAD || prog.Memsz == 0 {
			continue
		}
		if prog.Filesz > prog.Memsz {
			return 0, 0, fmt.Errorf("%w: segment %d file size %#x exceeds memory size %#x", ErrMalformed, i, prog.Filesz, prog.Memsz)
		}
		if err := checkExtent(fmt.Sprintf("segment %d", i), prog.Off, prog.Filesz, size); err != nil {
			return 0, 0, err
		}
		segEnd := prog.Paddr + prog.Memsz
		if segEnd < prog.Paddr {
			return 0, 0, fmt.Errorf("%w: segment %d at %#x+%#x wraps the address space", ErrMalformed, i, prog.Paddr, prog.Memsz)
		}
		if prog.Paddr < HighMemStart {
			return 0, 0, fmt.Errorf("%w: segment %d at %#x is below %#x, over the boot structures", ErrNoFit, i, prog.Paddr, uint64(HighMemStart))
		}
		dst, err := mem.Slice(prog.Paddr, prog.Memsz)
		if err != nil {
			return 0, 0, fmt.Errorf("boot: segment %d at %#x+%#x: %w: %w", i, prog.Paddr, prog.Memsz, ErrNoFit, err)
		}
		if n, err := prog.ReadAt(dst[:prog.Filesz], 0); n != int(prog.Filesz) {
			return 0, 0, fmt.Errorf("%w: segment %d: read %d of %d bytes: %v", ErrTruncated, i, n, prog.Filesz, err)
		}
		clear(dst[prog.Filesz:])
		start, end = min(start, prog.Paddr), max(end, segEnd)
	}
	if end == 0 {
		return 0, 0, fmt.Errorf("%w: ELF kernel has no loadable segment", ErrMalformed)
	}
	return start, end, nil
}

// writeStartInfo writes struct hvm_start_info (version 1) at StartInfoAddr,
// the initrd module entry after it and the memory map after that.
func writeStartInfo(mem *guestmem.Memory, res *Result, rsdp uint64) error {
	if len(res.E820) > memmapMaxEntries {
		return fmt.Errorf("%w: %d memory map entries, room for %d", ErrBadParams, len(res.E820), memmapMaxEntries)
	}
	buf := make([]byte, ZeroPageAddr-StartInfoAddr)
	le := binary.LittleEndian
	le.PutUint32(buf[0x00:], StartInfoMagic)
	le.PutUint32(buf[0x04:], startInfoVersion)
	// flags (0x08) stay 0.
	if res.InitrdSize != 0 {
		le.PutUint32(buf[0x0C:], 1) // nr_modules
		le.PutUint64(buf[0x10:], modlistAddr)
		m := buf[modlistAddr-StartInfoAddr:]
		le.PutUint64(m[0x00:], res.InitrdAddr)
		le.PutUint64(m[0x08:], res.InitrdSize)
		// cmdline_paddr (0x10) and reserved (0x18) stay 0.
	}
	le.PutUint64(buf[0x18:], CmdlineAddr)
	le.PutUint64(buf[0x20:], rsdp)
	le.PutUint64(buf[0x28:], memmapAddr)
	le.PutUint32(buf[0x30:], uint32(len(res.E820)))
	for i, e := range res.E820 {
		m := buf[memmapAddr-StartInfoAddr+memmapEntrySize*i:]
		le.PutUint64(m[0x00:], e.Addr)
		le.PutUint64(m[0x08:], e.Size)
		le.PutUint32(m[0x10:], e.Type)
	}
	if err := mem.WriteAt(buf, StartInfoAddr); err != nil {
		return fmt.Errorf("boot: writing hvm_start_info: %w", err)
	}
	return nil
}
