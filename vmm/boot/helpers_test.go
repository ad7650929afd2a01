package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"testing"

	"rainforest/vmm/guestmem"
)

// newMem returns fake guest memory laid out for ramSize bytes of RAM, filled
// with 0xAA so tests can see what the loader wrote or zeroed.
func newMem(t testing.TB, ramSize uint64) *guestmem.Memory {
	t.Helper()
	low := LowRAMEnd(ramSize)
	regions := []guestmem.Region{{GPA: 0, Data: bytes.Repeat([]byte{0xAA}, int(low))}}
	if ramSize > low {
		regions = append(regions, guestmem.Region{GPA: HighRAMStart, Data: make([]byte, ramSize-low)})
	}
	m, err := guestmem.New(regions...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type testSegment struct {
	typ          elf.ProgType
	paddr, memsz uint64
	data         []byte
}

// pvhNote returns a Xen PVH entry note with a descriptor of descSize bytes.
func pvhNote(entry uint64, descSize int) []byte {
	return elfNote("Xen", XenElfnotePhys32Entry, entry, descSize)
}

func elfNote(name string, typ uint32, value uint64, descSize int) []byte {
	var b bytes.Buffer
	nameb := append([]byte(name), 0)
	binary.Write(&b, binary.LittleEndian, uint32(len(nameb)))
	binary.Write(&b, binary.LittleEndian, uint32(descSize))
	binary.Write(&b, binary.LittleEndian, typ)
	b.Write(nameb)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	desc := make([]byte, 8)
	binary.LittleEndian.PutUint64(desc, value)
	b.Write(desc[:descSize])
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// makeELF builds an ELF64 x86-64 executable with the given program headers
// and no section headers.
func makeELF(segs ...testSegment) []byte {
	const ehSize, phSize = 64, 56
	off := uint64(ehSize + phSize*len(segs))
	var body bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: 1,
		Entry: 0x1000000, Phoff: ehSize, Ehsize: ehSize, Phentsize: phSize, Phnum: uint16(len(segs)),
	}
	copy(hdr.Ident[:], elfMagic)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var out bytes.Buffer
	binary.Write(&out, binary.LittleEndian, hdr)
	for _, s := range segs {
		memsz := s.memsz
		if memsz == 0 {
			memsz = uint64(len(s.data))
		}
		binary.Write(&out, binary.LittleEndian, elf.Prog64{
			Type: uint32(s.typ), Flags: uint32(elf.PF_R), Off: off + uint64(body.Len()),
			Vaddr: s.paddr | 0xffffffff80000000, Paddr: s.paddr,
			Filesz: uint64(len(s.data)), Memsz: memsz, Align: 4,
		})
		body.Write(s.data)
	}
	out.Write(body.Bytes())
	return out.Bytes()
}

// pvhKernel returns a small PVH ELF: 0x3000 bytes of text at 0x100000, bss up
// to 0x5000, entry note pointing at 0x100040.
func pvhKernel() []byte {
	text := bytes.Repeat([]byte{0x90}, 0x3000)
	return makeELF(
		testSegment{typ: elf.PT_LOAD, paddr: 0x100000, memsz: 0x5000, data: text},
		testSegment{typ: elf.PT_NOTE, data: append(elfNote("GNU", 3, 0, 4), pvhNote(0x100040, 4)...)},
	)
}

type bzOpts struct {
	version      uint16
	xloadflags   uint16
	relocatable  bool
	pref         uint64
	initSize     uint32
	cmdlineSize  uint32
	setupSects   uint8
	kernel       []byte
	payload      []byte // placed at payload_offset 0 of the kernel when set
	initrdAddrMx uint32
}

// makeBzImage builds a minimal bzImage: setup sectors with a setup header and
// the protected-mode kernel after them.
func makeBzImage(o bzOpts) []byte {
	if o.version == 0 {
		o.version = 0x020F
	}
	if o.setupSects == 0 {
		o.setupSects = 2
	}
	if o.kernel == nil {
		o.kernel = bytes.Repeat([]byte{0xC3}, 0x2000)
	}
	if o.payload != nil {
		o.kernel = append(append([]byte(nil), o.payload...), 0xCC, 0xCC)
	}
	// Like the kernel's build, pad the protected-mode kernel to 16 bytes
	// and record its size in syssize.
	o.kernel = append(o.kernel[:len(o.kernel):len(o.kernel)], make([]byte, -len(o.kernel)&15)...)
	setup := make([]byte, (int(o.setupSects)+1)*512)
	le := binary.LittleEndian
	setup[hdrSetupSects] = o.setupSects
	le.PutUint32(setup[hdrSysSize:], uint32(len(o.kernel)/16))
	le.PutUint16(setup[hdrBootFlag:], bootFlagValue)
	setup[hdrJump] = 0xEB
	setup[hdrJump+1] = 0x6A // header ends at 0x26C
	copy(setup[hdrMagic:], bzMagic)
	le.PutUint16(setup[hdrVersion:], o.version)
	setup[hdrLoadflags] = loadedHigh
	le.PutUint32(setup[hdrCode32Start:], 0x100000)
	le.PutUint32(setup[hdrInitrdAddrMax:], o.initrdAddrMx)
	le.PutUint32(setup[hdrKernelAlign:], 0x200000)
	if o.relocatable {
		setup[hdrRelocatable] = 1
	}
	le.PutUint16(setup[hdrXLoadflags:], o.xloadflags)
	le.PutUint32(setup[hdrCmdlineSize:], o.cmdlineSize)
	if o.payload != nil {
		le.PutUint32(setup[hdrPayloadLength:], uint32(len(o.payload)))
	}
	le.PutUint64(setup[hdrPrefAddress:], o.pref)
	le.PutUint32(setup[hdrInitSize:], o.initSize)
	le.PutUint32(setup[0x268:], 0x12345678) // kernel_info_offset, last header field
	return append(setup, o.kernel...)
}

func defaultBz() bzOpts {
	return bzOpts{xloadflags: xlfKernel64, initrdAddrMx: 0x7FFFFFFF, cmdlineSize: 2047, initSize: 0x10000}
}
