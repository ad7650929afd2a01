package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"rainforest/vmm/guestmem"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

func TestBuildE820(t *testing.T) {
	lowFixed := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x400, E820Reserved},
		{0xE0000, 0x20000, E820Reserved},
	}
	for _, tc := range []struct {
		ram  uint64
		rest []E820Entry
	}{
		{256 * mib, []E820Entry{{0x100000, 256*mib - 0x100000, E820RAM}}},
		{512 * mib, []E820Entry{{0x100000, 512*mib - 0x100000, E820RAM}}},
		{3 * gib, []E820Entry{{0x100000, 3*gib - 0x100000, E820RAM}}},
		{5 * gib, []E820Entry{{0x100000, 3*gib - 0x100000, E820RAM}, {4 * gib, 2 * gib, E820RAM}}},
	} {
		got, err := BuildE820(tc.ram)
		if err != nil {
			t.Fatalf("BuildE820(%#x): %v", tc.ram, err)
		}
		want := append(slices.Clone(lowFixed), tc.rest...)
		if !slices.Equal(got, want) {
			t.Errorf("BuildE820(%#x) =\n%v\nwant\n%v", tc.ram, got, want)
		}
		var ram uint64
		for _, e := range got {
			if e.Type == E820RAM {
				ram += e.Size
			}
		}
		if hole := uint64(0x100000 - 0x9FC00); ram != tc.ram-hole {
			t.Errorf("BuildE820(%#x): %#x bytes of RAM, want %#x", tc.ram, ram, tc.ram-hole)
		}
	}
	if _, err := BuildE820(1 * mib); !errors.Is(err, ErrBadParams) {
		t.Errorf("BuildE820(1 MiB) err = %v, want ErrBadParams", err)
	}
}

func TestPlaceInitrd(t *testing.T) {
	for _, tc := range []struct {
		name                          string
		size, limit, kStart, kEnd, at uint64
		wantErr                       bool
	}{
		{name: "top", size: 0x1800, limit: 64 * mib, kStart: 0x100000, kEnd: 0x200000, at: 64*mib - 0x2000},
		{name: "limit unaligned", size: 0x1000, limit: 64*mib + 0x123, kStart: 0x100000, kEnd: 0x200000, at: 64*mib - 0x1000},
		{name: "below kernel", size: 4 * mib, limit: 64 * mib, kStart: 32 * mib, kEnd: 62 * mib, at: 28 * mib},
		{name: "no room", size: 40 * mib, limit: 64 * mib, kStart: 16 * mib, kEnd: 62 * mib, wantErr: true},
		{name: "too big", size: 128 * mib, limit: 64 * mib, kStart: 1 * mib, kEnd: 2 * mib, wantErr: true},
		{name: "empty", size: 0, limit: 64 * mib, at: 0},
	} {
		got, err := PlaceInitrd(tc.size, tc.limit, tc.kStart, tc.kEnd)
		if tc.wantErr {
			if !errors.Is(err, ErrNoFit) {
				t.Errorf("%s: err = %v, want ErrNoFit", tc.name, err)
			}
			continue
		}
		if err != nil || got != tc.at {
			t.Errorf("%s: PlaceInitrd = %#x, %v; want %#x", tc.name, got, err, tc.at)
		}
	}
}

func TestDescriptors(t *testing.T) {
	for _, tc := range []struct {
		name string
		seg  Segment
		want uint64
	}{
		{"code32", code32Segment(), 0x00CF9B000000FFFF},
		{"code64", code64Segment(), 0x00AF9B000000FFFF},
		{"data", dataSegment(), 0x00CF93000000FFFF},
		{"tss", tssSegment(), 0x00008B0000000067},
	} {
		if got := descriptor(tc.seg); got != tc.want {
			t.Errorf("%s descriptor = %#016x, want %#016x", tc.name, got, tc.want)
		}
	}
}

func mustU64(t *testing.T, m *guestmem.Memory, gpa uint64) uint64 {
	t.Helper()
	v, err := m.Uint64(gpa)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustU32(t *testing.T, m *guestmem.Memory, gpa uint64) uint32 {
	t.Helper()
	v, err := m.Uint32(gpa)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustBytes(t *testing.T, m *guestmem.Memory, gpa, n uint64) []byte {
	t.Helper()
	b, err := m.Slice(gpa, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkGDT(t *testing.T, m *guestmem.Memory) {
	t.Helper()
	want := []uint64{0, 0x00CF9B000000FFFF, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00008B0000000067, 0}
	for i, w := range want {
		if got := mustU64(t, m, GDTAddr+8*uint64(i)); got != w {
			t.Errorf("GDT[%d] = %#x, want %#x", i, got, w)
		}
	}
}

func checkCmdline(t *testing.T, m *guestmem.Memory, cmdline string) {
	t.Helper()
	got := mustBytes(t, m, CmdlineAddr, uint64(len(cmdline))+1)
	if string(got) != cmdline+"\x00" {
		t.Errorf("command line in memory = %q, want %q", got, cmdline)
	}
}

func TestLoadPVH(t *testing.T) {
	kernel := pvhKernel()
	initrd := bytes.Repeat([]byte("initrd!"), 1000)
	const ram = 64 * mib
	mem := newMem(t, ram)
	res, err := Load(mem, Params{
		Kernel: bytes.NewReader(kernel), KernelSize: int64(len(kernel)),
		Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
		Cmdline: "console=ttyS0 quiet", RAMSize: ram, RSDPAddr: RSDPAddr,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Format != FormatPVH || res.Entry != 0x100040 || res.BootInfo != StartInfoAddr {
		t.Errorf("result %+v", res)
	}
	if res.KernelStart != 0x100000 || res.KernelEnd != 0x105000 {
		t.Errorf("kernel range [%#x,%#x)", res.KernelStart, res.KernelEnd)
	}
	wantInitrd := (ram - uint64(len(initrd))) &^ 0xFFF
	if res.InitrdAddr != wantInitrd || res.InitrdSize != uint64(len(initrd)) {
		t.Errorf("initrd at %#x+%#x, want %#x", res.InitrdAddr, res.InitrdSize, wantInitrd)
	}
	if !bytes.Equal(mustBytes(t, mem, res.InitrdAddr, res.InitrdSize), initrd) {
		t.Error("initrd contents differ")
	}
	if !bytes.Equal(mustBytes(t, mem, 0x100000, 0x3000), bytes.Repeat([]byte{0x90}, 0x3000)) {
		t.Error("kernel text not loaded")
	}
	if !bytes.Equal(mustBytes(t, mem, 0x103000, 0x2000), make([]byte, 0x2000)) {
		t.Error("bss not zeroed")
	}
	if b := mustBytes(t, mem, 0x105000, 1); b[0] != 0xAA {
		t.Error("loader wrote past the segment")
	}
	checkCmdline(t, mem, "console=ttyS0 quiet")
	checkGDT(t, mem)

	// struct hvm_start_info.
	si := uint64(StartInfoAddr)
	for _, f := range []struct {
		name      string
		off       uint64
		size      int
		want      uint64
		allowZero bool
	}{
		{"magic", 0x00, 4, StartInfoMagic, false},
		{"version", 0x04, 4, 1, false},
		{"flags", 0x08, 4, 0, true},
		{"nr_modules", 0x0C, 4, 1, false},
		{"modlist_paddr", 0x10, 8, modlistAddr, false},
		{"cmdline_paddr", 0x18, 8, CmdlineAddr, false},
		{"rsdp_paddr", 0x20, 8, RSDPAddr, false},
		{"memmap_paddr", 0x28, 8, memmapAddr, false},
		{"memmap_entries", 0x30, 4, 4, false},
		{"reserved", 0x34, 4, 0, true},
	} {
		var got uint64
		if f.size == 4 {
			got = uint64(mustU32(t, mem, si+f.off))
		} else {
			got = mustU64(t, mem, si+f.off)
		}
		if got != f.want {
			t.Errorf("start_info.%s = %#x, want %#x", f.name, got, f.want)
		}
	}
	if memmapAddr != 0x6060 || modlistAddr != 0x6040 {
		t.Errorf("layout moved: modlist %#x memmap %#x", modlistAddr, memmapAddr)
	}
	// hvm_modlist_entry.
	if a, s := mustU64(t, mem, modlistAddr), mustU64(t, mem, modlistAddr+8); a != res.InitrdAddr || s != res.InitrdSize {
		t.Errorf("modlist entry = %#x+%#x", a, s)
	}
	// hvm_memmap_table_entry array.
	for i, e := range res.E820 {
		base := uint64(memmapAddr + 24*i)
		got := E820Entry{mustU64(t, mem, base), mustU64(t, mem, base+8), mustU32(t, mem, base+16)}
		if got != e || mustU32(t, mem, base+20) != 0 {
			t.Errorf("memmap[%d] = %+v, want %+v", i, got, e)
		}
	}

	c := res.CPU
	if c.RIP != 0x100040 || c.RBX != StartInfoAddr || c.CR0 != CR0PE|CR0ET || c.CR3 != 0 || c.CR4 != 0 || c.EFER != 0 || c.RFLAGS != 2 {
		t.Errorf("PVH CPU state %+v", c)
	}
	if c.CS != code32Segment() || c.CS.L || !c.CS.DB || c.CS.Selector != 0x08 || c.DS.Selector != 0x18 || c.SS != c.DS {
		t.Errorf("PVH segments CS %+v DS %+v SS %+v", c.CS, c.DS, c.SS)
	}
	if c.GDT != (DescriptorTable{Base: GDTAddr, Limit: 0x2F}) || c.TR.Type != 0xB || !c.TR.Present || c.TR.Limit != 0x67 {
		t.Errorf("GDT %+v TR %+v", c.GDT, c.TR)
	}
}

func TestLoadPVHVariants(t *testing.T) {
	load := func(k []byte) (*Result, error) {
		return Load(newMem(t, 32*mib), Params{Kernel: bytes.NewReader(k), KernelSize: int64(len(k)), RAMSize: 32 * mib})
	}
	text := testSegment{typ: 1, paddr: 0x200000, data: []byte{1, 2, 3}}
	// 8-byte descriptor, as Linux emits it (_ASM_PTR).
	res, err := load(makeELF(text, testSegment{typ: 4, data: pvhNote(0x200000, 8)}))
	if err != nil || res.Entry != 0x200000 || res.InitrdAddr != 0 {
		t.Errorf("8-byte note: %v %+v", err, res)
	}
	if got := res.CPU.RBX; got != StartInfoAddr {
		t.Errorf("RBX %#x", got)
	}
	for _, tc := range []struct {
		name string
		k    []byte
		want error
	}{
		{"no note", makeELF(text, testSegment{typ: 4, data: elfNote("Xen", 17, 1, 4)}), ErrNoPVHNote},
		{"wrong name", makeELF(text, testSegment{typ: 4, data: elfNote("Xem", 18, 1, 4)}), ErrNoPVHNote},
		{"no notes", makeELF(text), ErrNoPVHNote},
		{"bad desc size", makeELF(text, testSegment{typ: 4, data: pvhNote(1, 2)}), ErrMalformed},
		{"entry above 4G", makeELF(text, testSegment{typ: 4, data: pvhNote(1<<32, 8)}), ErrMalformed},
		{"note overrun", makeELF(text, testSegment{typ: 4, data: pvhNote(1, 4)[:18]}), ErrMalformed},
		{"segment beyond RAM", makeELF(testSegment{typ: 1, paddr: 31 * mib, memsz: 2 * mib, data: []byte{1}}, testSegment{typ: 4, data: pvhNote(1, 4)}), ErrNoFit},
		{"segment over boot area", makeELF(testSegment{typ: 1, paddr: 0x7000, data: []byte{1}}, testSegment{typ: 4, data: pvhNote(1, 4)}), ErrNoFit},
		{"segment wraps", makeELF(testSegment{typ: 1, paddr: ^uint64(0) - 1, memsz: 16, data: []byte{1}}, testSegment{typ: 4, data: pvhNote(1, 4)}), ErrMalformed},
		{"no PT_LOAD", makeELF(testSegment{typ: 4, data: pvhNote(1, 4)}), ErrMalformed},
	} {
		if _, err := load(tc.k); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Wrong machine / class.
	k := makeELF(text, testSegment{typ: 4, data: pvhNote(1, 4)})
	k32 := slices.Clone(k)
	k32[4] = 1 // ELFCLASS32
	arm := slices.Clone(k)
	binary.LittleEndian.PutUint16(arm[18:], 183) // EM_AARCH64
	for name, k := range map[string][]byte{"class32": k32, "aarch64": arm} {
		if _, err := load(k); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: err = %v, want ErrUnsupported", name, err)
		}
	}
}

func TestLoadBzImage(t *testing.T) {
	kernelBytes := bytes.Repeat([]byte{0xC3, 0x90}, 0x1800)
	o := defaultBz()
	o.kernel = kernelBytes
	img := makeBzImage(o)
	initrd := bytes.Repeat([]byte{0x5A}, 10000)
	const ram = 64 * mib
	mem := newMem(t, ram)
	cmdline := "console=ttyS0 root=/dev/vda"
	res, err := Load(mem, Params{
		Kernel: bytes.NewReader(img), KernelSize: int64(len(img)),
		Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
		Cmdline: cmdline, RAMSize: ram, RSDPAddr: RSDPAddr,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Format != FormatBzImage || res.KernelStart != 0x100000 || res.Entry != 0x100200 || res.BootInfo != ZeroPageAddr {
		t.Errorf("result %+v", res)
	}
	// Not relocatable, no pref_address: runs where loaded with init_size 0x10000.
	if res.KernelEnd != 0x110000 {
		t.Errorf("KernelEnd %#x", res.KernelEnd)
	}
	if !bytes.Equal(mustBytes(t, mem, 0x100000, uint64(len(kernelBytes))), kernelBytes) {
		t.Error("protected-mode kernel not loaded at 0x100000")
	}
	if res.InitrdAddr != (ram-10000)&^0xFFF || !bytes.Equal(mustBytes(t, mem, res.InitrdAddr, 10000), initrd) {
		t.Errorf("initrd at %#x", res.InitrdAddr)
	}
	checkCmdline(t, mem, cmdline)
	checkGDT(t, mem)

	zp := mustBytes(t, mem, ZeroPageAddr, 0x1000)
	le := binary.LittleEndian
	// Setup header copied from 0x1F1 to its end (0x26C); fields overwritten below.
	if !bytes.Equal(zp[0x202:0x206], []byte("HdrS")) || le.Uint16(zp[0x206:]) != 0x020F || le.Uint32(zp[0x268:]) != 0x12345678 {
		t.Error("setup header not copied")
	}
	if !bytes.Equal(zp[0x26C:0x290], make([]byte, 0x290-0x26C)) {
		t.Error("bytes after the setup header not zero")
	}
	for _, f := range []struct {
		name string
		got  uint64
		want uint64
	}{
		{"setup_sects", uint64(zp[0x1F1]), 2},
		{"boot_flag", uint64(le.Uint16(zp[0x1FE:])), 0xAA55},
		{"type_of_loader", uint64(zp[0x210]), 0xFF},
		{"loadflags", uint64(zp[0x211]), 0x81},
		{"code32_start", uint64(le.Uint32(zp[0x214:])), 0x100000},
		{"ramdisk_image", uint64(le.Uint32(zp[0x218:])), res.InitrdAddr},
		{"ramdisk_size", uint64(le.Uint32(zp[0x21C:])), 10000},
		{"heap_end_ptr", uint64(le.Uint16(zp[0x224:])), 0xFC00},
		{"cmd_line_ptr", uint64(le.Uint32(zp[0x228:])), CmdlineAddr},
		{"ext_ramdisk_image", uint64(le.Uint32(zp[0x0C0:])), 0},
		{"ext_cmd_line_ptr", uint64(le.Uint32(zp[0x0C8:])), 0},
		{"acpi_rsdp_addr", le.Uint64(zp[0x070:]), RSDPAddr},
		{"e820_entries", uint64(zp[0x1E8]), 4},
	} {
		if f.got != f.want {
			t.Errorf("boot_params.%s = %#x, want %#x", f.name, f.got, f.want)
		}
	}
	for i, e := range res.E820 {
		off := 0x2D0 + 20*i
		got := E820Entry{le.Uint64(zp[off:]), le.Uint64(zp[off+8:]), le.Uint32(zp[off+16:])}
		if got != e {
			t.Errorf("e820_table[%d] = %+v, want %+v", i, got, e)
		}
	}
	if !bytes.Equal(zp[0x2D0+20*4:0x2D0+20*5], make([]byte, 20)) {
		t.Error("e820_table[4] not zero")
	}

	// Page tables: identity map of 1 GiB in 2 MiB pages.
	if v := mustU64(t, mem, PML4Addr); v != PDPTAddr|3 {
		t.Errorf("PML4[0] = %#x", v)
	}
	if v := mustU64(t, mem, PML4Addr+8); v != 0 {
		t.Errorf("PML4[1] = %#x", v)
	}
	if v := mustU64(t, mem, PDPTAddr); v != PDAddr|3 {
		t.Errorf("PDPT[0] = %#x", v)
	}
	if v := mustU64(t, mem, PDPTAddr+8); v != 0 {
		t.Errorf("PDPT[1] = %#x", v)
	}
	for _, i := range []uint64{0, 1, 255, 511} {
		if v := mustU64(t, mem, PDAddr+8*i); v != i<<21|0x83 {
			t.Errorf("PD[%d] = %#x", i, v)
		}
	}
	if b := mustBytes(t, mem, 0xC000, 1); b[0] != 0xAA {
		t.Error("wrote at 0xC000")
	}

	c := res.CPU
	if c.RIP != 0x100200 || c.RSI != ZeroPageAddr || c.CR3 != PML4Addr || c.CR0 != 0x80000011 || c.CR4 != 0x20 || c.EFER != 0x500 || c.RFLAGS != 2 {
		t.Errorf("long mode CPU state %+v", c)
	}
	if !c.CS.L || c.CS.DB || c.CS.Selector != 0x10 || c.DS.Selector != 0x18 || c.ES != c.DS || c.SS != c.DS {
		t.Errorf("long mode segments CS %+v DS %+v", c.CS, c.DS)
	}
}

func TestBzImagePlacement(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ram       uint64
		reloc     bool
		pref      uint64
		initSize  uint32
		load, end uint64
		err       error
	}{
		{name: "relocatable at pref", ram: 64 * mib, reloc: true, pref: 16 * mib, initSize: 8 * mib, load: 16 * mib, end: 24 * mib},
		{name: "pref does not fit", ram: 24 * mib, reloc: true, pref: 16 * mib, initSize: 16 * mib, err: ErrNoFit},
		{name: "not relocatable", ram: 64 * mib, pref: 16 * mib, initSize: 8 * mib, load: 0x100000, end: 24 * mib},
		{name: "pref below 1M ignored", ram: 64 * mib, reloc: true, pref: 0x1000, initSize: 1 * mib, load: 0x100000, end: 3 * mib},
		{name: "init_size too big", ram: 32 * mib, initSize: 64 * mib, err: ErrNoFit},
	} {
		o := defaultBz()
		o.relocatable, o.pref, o.initSize = tc.reloc, tc.pref, tc.initSize
		img := makeBzImage(o)
		res, err := Load(newMem(t, tc.ram), Params{Kernel: bytes.NewReader(img), KernelSize: int64(len(img)), RAMSize: tc.ram})
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: err = %v, want %v", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if res.KernelStart != tc.load || res.KernelEnd != tc.end || res.Entry != tc.load+0x200 {
			t.Errorf("%s: kernel [%#x,%#x) entry %#x, want [%#x,%#x)", tc.name, res.KernelStart, res.KernelEnd, res.Entry, tc.load, tc.end)
		}
	}
}

func TestBzImageErrors(t *testing.T) {
	load := func(o bzOpts, p Params) error {
		img := makeBzImage(o)
		p.Kernel, p.KernelSize = bytes.NewReader(img), int64(len(img))
		if p.RAMSize == 0 {
			p.RAMSize = 64 * mib
		}
		_, err := Load(newMem(t, p.RAMSize), p)
		return err
	}
	old := defaultBz()
	old.version = 0x020B
	no64 := defaultBz()
	no64.xloadflags = 0
	if err := load(old, Params{}); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "2.11") {
		t.Errorf("protocol 2.11: %v", err)
	}
	if err := load(no64, Params{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("no XLF_KERNEL_64: %v", err)
	}
	if err := load(defaultBz(), Params{Cmdline: strings.Repeat("x", 2048)}); !errors.Is(err, ErrCmdlineTooLong) {
		t.Errorf("cmdline over kernel limit: %v", err)
	}
	if err := load(defaultBz(), Params{Cmdline: strings.Repeat("x", 2047)}); err != nil {
		t.Errorf("cmdline at kernel limit: %v", err)
	}
	big := bytes.Repeat([]byte{1}, 40*mib)
	if err := load(defaultBz(), Params{RAMSize: 32 * mib, Initrd: bytes.NewReader(big), InitrdSize: int64(len(big))}); !errors.Is(err, ErrNoFit) {
		t.Errorf("initrd too big: %v", err)
	}
	// initrd_addr_max caps the initrd.
	o := defaultBz()
	o.initrdAddrMx = 16*mib - 1
	img := makeBzImage(o)
	res, err := Load(newMem(t, 64*mib), Params{Kernel: bytes.NewReader(img), KernelSize: int64(len(img)), RAMSize: 64 * mib,
		Initrd: bytes.NewReader([]byte{1, 2, 3}), InitrdSize: 3})
	if err != nil || res.InitrdAddr != 16*mib-0x1000 {
		t.Errorf("initrd_addr_max: %v, initrd at %#x", err, res.InitrdAddr)
	}
	// Header claims more setup sectors than the file has.
	o = defaultBz()
	img = makeBzImage(o)
	img[hdrSetupSects] = 200
	if _, err := Load(newMem(t, 64*mib), Params{Kernel: bytes.NewReader(img), KernelSize: int64(len(img)), RAMSize: 64 * mib}); !errors.Is(err, ErrTruncated) {
		t.Errorf("setup_sects past EOF: %v", err)
	}
	img = makeBzImage(o)
	img[hdrBootFlag] = 0
	if _, err := Load(newMem(t, 64*mib), Params{Kernel: bytes.NewReader(img), KernelSize: int64(len(img)), RAMSize: 64 * mib}); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad boot_flag: %v", err)
	}
}

func TestLoadParamErrors(t *testing.T) {
	k := pvhKernel()
	mem := newMem(t, 32*mib)
	good := Params{Kernel: bytes.NewReader(k), KernelSize: int64(len(k)), RAMSize: 32 * mib}
	if _, err := Load(mem, good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Params)
		want error
	}{
		{"cmdline 4096", func(p *Params) { p.Cmdline = strings.Repeat("a", 4096) }, ErrCmdlineTooLong},
		{"no kernel", func(p *Params) { p.Kernel = nil }, ErrBadParams},
		{"tiny RAM", func(p *Params) { p.RAMSize = 4096 }, ErrBadParams},
		{"initrd size without reader", func(p *Params) { p.InitrdSize = 5 }, ErrBadParams},
		{"initrd shorter than size", func(p *Params) { p.Initrd, p.InitrdSize = bytes.NewReader([]byte{1}), 5000 }, ErrTruncated},
	} {
		p := good
		tc.edit(&p)
		if _, err := Load(mem, p); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	p := good
	p.Cmdline = strings.Repeat("a", 4095)
	if _, err := Load(mem, p); err != nil {
		t.Errorf("4095-byte cmdline: %v", err)
	}
	checkCmdline(t, mem, p.Cmdline)
}

func TestDetectAndTruncated(t *testing.T) {
	pvh := pvhKernel()
	bz := makeBzImage(defaultBz())
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrUnknownFormat},
		{"garbage", bytes.Repeat([]byte("garbage!"), 200), ErrUnknownFormat},
		{"short garbage", []byte("MZ"), ErrUnknownFormat},
		{"gzip", []byte{0x1F, 0x8B, 8, 0, 0, 0, 0, 0}, ErrUnknownFormat},
		{"cut ELF magic", pvh[:3], ErrTruncated},
		{"ELF header cut", pvh[:40], ErrTruncated},
		{"ELF phdrs cut", pvh[:100], ErrTruncated},
		{"ELF segment cut", pvh[:0x1000], ErrTruncated},
		{"ELF note cut", pvh[:len(pvh)-10], ErrTruncated},
		{"bzImage header cut", bz[:0x250], ErrTruncated},
		{"bzImage setup cut", bz[:0x500], ErrTruncated},
		{"bzImage no kernel", bz[:0x600], ErrTruncated},
	} {
		_, err := Load(newMem(t, 32*mib), Params{Kernel: bytes.NewReader(tc.data), KernelSize: int64(len(tc.data)), RAMSize: 32 * mib})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Every prefix of both kernels fails cleanly or loads.
	small := newMem(t, 4*mib)
	for _, k := range [][]byte{pvh, bz} {
		for n := 0; n < len(k); n += 7 {
			if _, err := Load(small, Params{Kernel: bytes.NewReader(k[:n]), KernelSize: int64(n), RAMSize: 4 * mib}); err == nil && n < 0x300 {
				t.Errorf("%d-byte prefix loaded", n)
			}
		}
	}
	// A lying size is caught as truncation.
	if _, err := Load(newMem(t, 32*mib), Params{Kernel: bytes.NewReader(pvh), KernelSize: int64(len(pvh)) + 100, RAMSize: 32 * mib}); err != nil && !errors.Is(err, ErrTruncated) {
		t.Errorf("size larger than file: %v", err)
	}
	if f, err := DetectFormat(bytes.NewReader(bz), int64(len(bz))); f != FormatBzImage || err != nil || f.String() != "bzImage" {
		t.Errorf("DetectFormat(bzImage) = %v, %v", f, err)
	}
	if f, err := DetectFormat(bytes.NewReader(pvh), int64(len(pvh))); f != FormatPVH || err != nil || f.String() != "pvh" {
		t.Errorf("DetectFormat(pvh) = %v, %v", f, err)
	}
}

func TestValidateRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("garbage"), append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 200)...)} {
		if _, err := Validate(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Errorf("Validate(%q...) accepted", b[:min(len(b), 8)])
		}
	}
}
