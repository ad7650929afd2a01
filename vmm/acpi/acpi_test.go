package acpi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func sum(b []byte) byte {
	var s byte
	for _, x := range b {
		s += x
	}
	return s
}

// table returns the table at gpa in blob (built at base), checking its
// signature, length bounds and checksum.
func table(t *testing.T, blob []byte, base, gpa uint64, sig string) []byte {
	t.Helper()
	if gpa < base || gpa-base+8 > uint64(len(blob)) {
		t.Fatalf("%s pointer %#x outside blob [%#x,+%#x)", sig, gpa, base, len(blob))
	}
	off := gpa - base
	if got := string(blob[off : off+4]); got != sig {
		t.Fatalf("table at %#x is %q, want %q", gpa, got, sig)
	}
	n := uint64(binary.LittleEndian.Uint32(blob[off+4:]))
	if off+n > uint64(len(blob)) {
		t.Fatalf("%s length %d runs past blob", sig, n)
	}
	tb := blob[off : off+n]
	if sig != "FACS" && sum(tb) != 0 {
		t.Errorf("%s checksum: bytes sum to %#x", sig, sum(tb))
	}
	return tb
}

type parsed struct {
	blob                   []byte
	rsdp                   []byte
	xsdt, fadt, madt, dsdt []byte
	facs                   []byte
}

func build(t *testing.T, n int) parsed {
	t.Helper()
	blob, rsdpGPA, err := Build(Config{NumCPUs: n}, DefaultBase)
	if err != nil {
		t.Fatalf("Build(%d): %v", n, err)
	}
	if rsdpGPA != DefaultBase {
		t.Fatalf("rsdp at %#x, want %#x", rsdpGPA, DefaultBase)
	}
	if len(blob) > MaxSize {
		t.Fatalf("blob %d bytes > MaxSize", len(blob))
	}
	var p parsed
	p.blob = blob
	p.rsdp = blob[:rsdpLen]
	if string(p.rsdp[:8]) != "RSD PTR " {
		t.Fatalf("RSDP signature %q", p.rsdp[:8])
	}
	if sum(p.rsdp[:20]) != 0 || sum(p.rsdp) != 0 {
		t.Errorf("RSDP checksums: v1 %#x, extended %#x", sum(p.rsdp[:20]), sum(p.rsdp))
	}
	if p.rsdp[rsdpRevisionOff] != 2 || binary.LittleEndian.Uint32(p.rsdp[rsdpLengthOff:]) != rsdpLen {
		t.Errorf("RSDP revision %d length %d", p.rsdp[rsdpRevisionOff], binary.LittleEndian.Uint32(p.rsdp[rsdpLengthOff:]))
	}
	p.xsdt = table(t, blob, DefaultBase, binary.LittleEndian.Uint64(p.rsdp[rsdpXSDTOff:]), "XSDT")
	if n := (len(p.xsdt) - tableHeaderSize) / 8; n != 2 {
		t.Fatalf("XSDT has %d entries, want 2", n)
	}
	p.fadt = table(t, blob, DefaultBase, binary.LittleEndian.Uint64(p.xsdt[36:]), "FACP")
	p.madt = table(t, blob, DefaultBase, binary.LittleEndian.Uint64(p.xsdt[44:]), "APIC")
	p.dsdt = table(t, blob, DefaultBase, binary.LittleEndian.Uint64(p.fadt[fadtXDSDT:]), "DSDT")
	p.facs = table(t, blob, DefaultBase, uint64(binary.LittleEndian.Uint32(p.fadt[fadtFirmwareCtrl:])), "FACS")
	return p
}

func TestPointersAndChecksums(t *testing.T) {
	for _, n := range []int{1, 2, 8, MaxCPUs} {
		p := build(t, n)
		if got, want := uint64(binary.LittleEndian.Uint32(p.fadt[fadtDSDT:])), binary.LittleEndian.Uint64(p.fadt[fadtXDSDT:]); got != want {
			t.Errorf("DSDT %#x != X_DSDT %#x", got, want)
		}
		facs := binary.LittleEndian.Uint32(p.fadt[fadtFirmwareCtrl:])
		if x := binary.LittleEndian.Uint64(p.fadt[fadtXFirmwareCtrl:]); x != 0 || facs%64 != 0 {
			t.Errorf("FACS pointer %#x not 64-byte aligned, or X_FIRMWARE_CTRL %#x set too", facs, x)
		}
		if len(p.facs) != 64 {
			t.Errorf("FACS length %d", len(p.facs))
		}
	}
}

func TestFADTFields(t *testing.T) {
	f := build(t, 2).fadt
	if len(f) != 276 || f[8] != 6 {
		t.Fatalf("FADT length %d revision %d, want 276 and 6", len(f), f[8])
	}
	u16 := func(off int) uint16 { return binary.LittleEndian.Uint16(f[off:]) }
	u32 := func(off int) uint32 { return binary.LittleEndian.Uint32(f[off:]) }
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"SCI_INT", uint64(u16(46)), 9},
		{"SMI_CMD", uint64(u32(48)), 0},
		{"PM1a_EVT_BLK", uint64(u32(56)), 0x600},
		{"PM1a_CNT_BLK", uint64(u32(64)), 0x604},
		{"PM_TMR_BLK", uint64(u32(76)), 0x608},
		{"GPE0_BLK", uint64(u32(80)), 0},
		{"PM1_EVT_LEN", uint64(f[88]), 4},
		{"PM1_CNT_LEN", uint64(f[89]), 2},
		{"PM_TMR_LEN", uint64(f[91]), 4},
		{"IAPC_BOOT_ARCH", uint64(u16(109)), 1<<2 | 1<<5},
		{"RESET_VALUE", uint64(f[128]), 6},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	flags := u32(112)
	for _, bit := range []uint32{0, 2, 4, 5, 8, 10} {
		if flags&(1<<bit) == 0 {
			t.Errorf("flags %#x lacks bit %d", flags, bit)
		}
	}
	if flags&(1<<20) != 0 {
		t.Errorf("flags %#x: HW_REDUCED_ACPI set", flags)
	}
	gas := func(off int, space, width, access byte, addr uint64) {
		t.Helper()
		g := f[off : off+12]
		if g[0] != space || g[1] != width || g[2] != 0 || g[3] != access || binary.LittleEndian.Uint64(g[4:]) != addr {
			t.Errorf("GAS at %d = % x, want space %d width %d access %d addr %#x", off, g, space, width, access, addr)
		}
	}
	gas(116, 1, 8, 1, 0xCF9)  // RESET_REG
	gas(148, 1, 32, 0, 0x600) // X_PM1a_EVT_BLK
	gas(172, 1, 16, 0, 0x604) // X_PM1a_CNT_BLK
	gas(208, 1, 32, 0, 0x608) // X_PM_TMR_BLK
}

func TestMADT(t *testing.T) {
	for _, n := range []int{1, 4, MaxCPUs} {
		m := build(t, n).madt
		if binary.LittleEndian.Uint32(m[36:]) != 0xFEE00000 || binary.LittleEndian.Uint32(m[40:])&1 != 1 {
			t.Fatalf("n=%d: LAPIC addr %#x flags %#x", n, binary.LittleEndian.Uint32(m[36:]), binary.LittleEndian.Uint32(m[40:]))
		}
		counts := map[byte]int{}
		var overrides [][3]uint32
		for off := 44; off < len(m); {
			if off+2 > len(m) || m[off+1] < 2 || off+int(m[off+1]) > len(m) {
				t.Fatalf("n=%d: bad entry at %d", n, off)
			}
			e := m[off : off+int(m[off+1])]
			switch e[0] {
			case 0:
				i := counts[0]
				if len(e) != 8 || int(e[2]) != i || int(e[3]) != i || binary.LittleEndian.Uint32(e[4:]) != 1 {
					t.Errorf("n=%d: LAPIC entry %d = % x", n, i, e)
				}
			case 1:
				if len(e) != 12 || int(e[2]) != n || binary.LittleEndian.Uint32(e[4:]) != 0xFEC00000 || binary.LittleEndian.Uint32(e[8:]) != 0 {
					t.Errorf("n=%d: IOAPIC entry % x", n, e)
				}
			case 2:
				if len(e) != 10 || e[2] != 0 {
					t.Errorf("n=%d: override entry % x", n, e)
				}
				overrides = append(overrides, [3]uint32{uint32(e[3]), binary.LittleEndian.Uint32(e[4:]), uint32(binary.LittleEndian.Uint16(e[8:]))})
			case 4:
				if len(e) != 6 || e[2] != 0xFF || e[5] != 1 {
					t.Errorf("n=%d: LAPIC NMI entry % x", n, e)
				}
			default:
				t.Errorf("n=%d: unexpected entry type %d", n, e[0])
			}
			counts[e[0]]++
			off += len(e)
		}
		if counts[0] != n || counts[1] != 1 || counts[2] != 2 || counts[4] != 1 {
			t.Errorf("n=%d: entry counts %v", n, counts)
		}
		want := [][3]uint32{{0, 2, 0}, {9, 9, 0x0D}}
		if len(overrides) != 2 || overrides[0] != want[0] || overrides[1] != want[1] {
			t.Errorf("n=%d: overrides %v, want %v", n, overrides, want)
		}
	}
}

func TestDSDT(t *testing.T) {
	d := build(t, 3).dsdt
	if d[8] != 2 {
		t.Errorf("DSDT revision %d", d[8])
	}
	body := d[tableHeaderSize:]
	wantS5 := []byte{0x08, '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00}
	if !bytes.HasPrefix(body, wantS5) {
		t.Errorf("DSDT body starts % x, want _S5 % x", body[:len(wantS5)], wantS5)
	}
	// The \_SB scope must span exactly the rest of the table.
	rest := body[len(wantS5):]
	if rest[0] != 0x10 {
		t.Fatalf("expected ScopeOp, got %#x", rest[0])
	}
	n, used := decodePkgLength(t, rest[1:])
	if n != len(rest)-1 {
		t.Errorf("scope PkgLength %d (%d bytes), want %d", n, used, len(rest)-1)
	}
	for _, want := range [][]byte{
		[]byte("PCI0"), []byte("COM1"), []byte("C002"), []byte("ACPI0007\x00"),
		{0x0C, 0x41, 0xD0, 0x0A, 0x08}, // EisaId("PNP0A08")
		{0x0C, 0x41, 0xD0, 0x0A, 0x03}, // EisaId("PNP0A03")
		{0x0C, 0x41, 0xD0, 0x05, 0x01}, // EisaId("PNP0501")
		resIO(0x3F8, 0x3F8, 1, 8), resIRQNoFlags(4),
		resIO(0xCF8, 0xCF8, 1, 8), resWordBusNumber(0, 0),
		resWordIO(0, 0xCF7), resWordIO(0xD00, 0xFFFF), resDWordMemory(0xC0000000, 0xDFFFFFFF),
	} {
		if !bytes.Contains(body, want) {
			t.Errorf("DSDT lacks % x", want)
		}
	}
	if bytes.Contains(body, []byte("C003")) {
		t.Errorf("DSDT has a processor device for a 4th CPU")
	}
}

func decodePkgLength(t *testing.T, b []byte) (value, used int) {
	t.Helper()
	extra := int(b[0] >> 6)
	if extra == 0 {
		return int(b[0] & 0x3F), 1
	}
	v := int(b[0] & 0x0F)
	for i := 1; i <= extra; i++ {
		v |= int(b[i]) << (4 + 8*(i-1))
	}
	return v, extra + 1
}

func TestPkgLength(t *testing.T) {
	cases := []struct {
		body int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3F}},
		{63, []byte{0x41, 0x04}},            // 65 total
		{0x0FFD, []byte{0x4F, 0xFF}},        // 0xFFF total: largest 2-byte
		{0x0FFE, []byte{0x81, 0x00, 0x01}},  // 0x1001 total
		{0xFFFFC, []byte{0x8F, 0xFF, 0xFF}}, // 0xFFFFF total: largest 3-byte
		{0xFFFFD, []byte{0xC1, 0x00, 0x00, 0x01}},
	}
	for _, c := range cases {
		got, err := encodePkgLength(c.body)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("encodePkgLength(%#x) = % x, %v; want % x", c.body, got, err, c.want)
			continue
		}
		if v, used := decodePkgLength(t, got); v != c.body+len(got) || used != len(got) {
			t.Errorf("decode(% x) = %d/%d", got, v, used)
		}
	}
	if _, err := encodePkgLength(maxPkgLength); !errors.Is(err, ErrAML) {
		t.Errorf("huge length: err %v", err)
	}
}

func TestAMLPrimitives(t *testing.T) {
	var e amlEncoder
	cases := []struct {
		got, want []byte
	}{
		{e.integer(0), []byte{0x00}},
		{e.integer(1), []byte{0x01}},
		{e.integer(5), []byte{0x0A, 5}},
		{e.integer(0x1234), []byte{0x0B, 0x34, 0x12}},
		{e.integer(0x12345678), []byte{0x0C, 0x78, 0x56, 0x34, 0x12}},
		{e.integer(1 << 32), []byte{0x0E, 0, 0, 0, 0, 1, 0, 0, 0}},
		{e.str("AB"), []byte{0x0D, 'A', 'B', 0}},
		{e.nameString("_HID"), []byte("_HID")},
		{e.nameString("PCI"), []byte("PCI_")},
		{e.nameString(`\_SB`), []byte(`\_SB_`)},
		{e.nameString(`\_SB.PCI0`), []byte("\\\x2e_SB_PCI0")},
		{e.nameString("A.B.C"), []byte("\x2f\x03A___B___C___")},
		{e.pack(e.integer(1), e.integer(2)), []byte{0x12, 0x05, 0x02, 0x01, 0x0A, 0x02}},
		{e.buffer([]byte{9, 8}), []byte{0x11, 0x05, 0x0A, 0x02, 9, 8}},
		{e.device("DEV", e.name("_UID", e.integer(0))), []byte("\x5b\x82\x0bDEV_\x08_UID\x00")},
		{e.resourceTemplate(resIRQNoFlags(4)), []byte{0x11, 0x08, 0x0A, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00}},
	}
	for i, c := range cases {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("case %d: % x, want % x", i, c.got, c.want)
		}
	}
	if e.err != nil {
		t.Fatalf("unexpected error: %v", e.err)
	}
	for _, bad := range []string{"TOOLONG", "", "a", "1AB"} {
		var e2 amlEncoder
		e2.nameSeg(bad)
		if !errors.Is(e2.err, ErrAML) {
			t.Errorf("nameSeg(%q): err %v", bad, e2.err)
		}
	}
	for id, want := range map[string]uint32{"PNP0A08": 0x080AD041, "PNP0501": 0x0105D041} {
		if got, err := eisaID(id); err != nil || got != want {
			t.Errorf("eisaID(%s) = %#x, %v; want %#x", id, got, err, want)
		}
	}
	for _, bad := range []string{"PNP0A0", "pNP0A08", "PNP0A0G"} {
		if _, err := eisaID(bad); !errors.Is(err, ErrAML) {
			t.Errorf("eisaID(%q): err %v", bad, err)
		}
	}
}

func TestBuildRejects(t *testing.T) {
	for _, n := range []int{0, -1, MaxCPUs + 1} {
		if _, _, err := Build(Config{NumCPUs: n}, DefaultBase); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NumCPUs %d: err %v", n, err)
		}
	}
	if _, _, err := Build(Config{NumCPUs: 1}, DefaultBase+4); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("unaligned base: err %v", err)
	}
	if _, _, err := Build(Config{NumCPUs: 1}, 1<<32-0x100); !errors.Is(err, ErrTooLarge) {
		t.Errorf("base near 4 GiB: err %v", err)
	}
}
