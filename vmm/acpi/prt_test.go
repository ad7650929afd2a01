package acpi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// amlInt decodes an AML integer constant at b, returning it and its size.
func amlInt(t *testing.T, b []byte) (uint64, int) {
	t.Helper()
	if len(b) == 0 {
		t.Fatal("integer past the end")
	}
	need := map[byte]int{amlZeroOp: 1, amlOneOp: 1, amlBytePrefix: 2, amlWordPrefix: 3, amlDWordPrefix: 5, amlQWordPrefix: 9}[b[0]]
	if need == 0 || len(b) < need {
		t.Fatalf("not an integer constant: % x", b[:min(len(b), 9)])
	}
	switch b[0] {
	case amlZeroOp:
		return 0, 1
	case amlOneOp:
		return 1, 1
	case amlBytePrefix:
		return uint64(b[1]), 2
	case amlWordPrefix:
		return uint64(binary.LittleEndian.Uint16(b[1:])), 3
	case amlDWordPrefix:
		return uint64(binary.LittleEndian.Uint32(b[1:])), 5
	default:
		return binary.LittleEndian.Uint64(b[1:]), 9
	}
}

// amlPackage decodes a Package at b: its elements' bytes and its total
// size.
func amlPackage(t *testing.T, b []byte) (count int, body []byte, size int) {
	t.Helper()
	if len(b) < 3 || b[0] != amlPackageOp {
		t.Fatalf("not a package: % x", b[:min(len(b), 4)])
	}
	n, used := decodePkgLength(t, b[1:])
	if 1+n > len(b) {
		t.Fatalf("package length %d runs past %d bytes", n, len(b)-1)
	}
	return int(b[1+used]), b[2+used : 1+n], 1 + n
}

func TestPCIINTxGSI(t *testing.T) {
	for _, c := range []struct {
		slot, pin int
		gsi       uint32
		ok        bool
	}{
		{0, 1, 16, true}, {1, 1, 17, true}, {7, 1, 23, true}, {8, 1, 16, true},
		{9, 1, 17, true}, {1, 2, 18, true}, {1, 4, 20, true}, {7, 2, 16, true},
		{31, 4, 18, true}, {32, 1, 0, false}, {-1, 1, 0, false}, {1, 0, 0, false}, {1, 5, 0, false},
	} {
		gsi, ok := PCIINTxGSI(c.slot, c.pin)
		if gsi != c.gsi || ok != c.ok {
			t.Errorf("PCIINTxGSI(%d, %d) = %d, %v; want %d, %v", c.slot, c.pin, gsi, ok, c.gsi, c.ok)
		}
	}
}

func TestPRT(t *testing.T) {
	d := build(t, 2).dsdt
	body := d[tableHeaderSize:]
	i := bytes.Index(body, []byte{amlNameOp, '_', 'P', 'R', 'T'})
	if i < 0 {
		t.Fatal("DSDT has no Name(_PRT, ...)")
	}
	// _PRT must be inside PCI0: after its name, before COM1.
	if pci, com := bytes.Index(body, []byte("PCI0")), bytes.Index(body, []byte("COM1")); !(pci < i && i < com) {
		t.Errorf("_PRT at %d not between PCI0 (%d) and COM1 (%d)", i, pci, com)
	}
	count, elems, _ := amlPackage(t, body[i+5:])
	if count != PCISlots*4 {
		t.Fatalf("_PRT has %d entries, want %d", count, PCISlots*4)
	}
	seen := map[[2]uint64]bool{}
	for k := 0; k < count; k++ {
		n, entry, size := amlPackage(t, elems)
		elems = elems[size:]
		if n != 4 {
			t.Fatalf("entry %d has %d elements", k, n)
		}
		var v [4]uint64
		for j := range v {
			var used int
			v[j], used = amlInt(t, entry)
			entry = entry[used:]
		}
		if len(entry) != 0 {
			t.Fatalf("entry %d: %d trailing bytes", k, len(entry))
		}
		addr, pin, src, gsi := v[0], v[1], v[2], v[3]
		slot := int(addr >> 16)
		if addr&0xFFFF != 0xFFFF || slot >= PCISlots || pin > 3 || src != 0 {
			t.Fatalf("entry %d: {%#x, %d, %d, %d}", k, addr, pin, src, gsi)
		}
		want, _ := PCIINTxGSI(slot, int(pin)+1)
		if gsi != uint64(want) || gsi < 16 || gsi > 23 {
			t.Errorf("slot %d pin %d -> GSI %d, want %d", slot, pin, gsi, want)
		}
		seen[[2]uint64{uint64(slot), pin}] = true
	}
	if len(elems) != 0 {
		t.Errorf("%d bytes after the last _PRT entry", len(elems))
	}
	if len(seen) != PCISlots*4 {
		t.Errorf("%d distinct (slot, pin) entries, want %d", len(seen), PCISlots*4)
	}
	// The exact encoding of slot 1's INTA# entry: Package(4){0x1FFFF, 0, 0, 17}.
	want := []byte{amlPackageOp, 0x0B, 0x04, amlDWordPrefix, 0xFF, 0xFF, 0x01, 0x00, amlZeroOp, amlZeroOp, amlBytePrefix, 17}
	if !bytes.Contains(body, want) {
		t.Errorf("DSDT lacks slot 1 INTA# entry % x", want)
	}
}
