package acpi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

func buildHotplug(t *testing.T, slots uint32) parsed {
	t.Helper()
	blob, _, err := Build(Config{NumCPUs: 2, HotplugSlots: slots}, DefaultBase)
	if err != nil {
		t.Fatalf("Build(slots %#x): %v", slots, err)
	}
	var p parsed
	xsdt := binary.LittleEndian.Uint64(blob[rsdpXSDTOff:])
	p.xsdt = table(t, blob, DefaultBase, xsdt, "XSDT")
	p.fadt = table(t, blob, DefaultBase, binary.LittleEndian.Uint64(p.xsdt[36:]), "FACP")
	p.dsdt = table(t, blob, DefaultBase, binary.LittleEndian.Uint64(p.fadt[fadtXDSDT:]), "DSDT")
	return p
}

func TestHotplugFADT(t *testing.T) {
	f := buildHotplug(t, AllHotplugSlots).fadt
	if got := binary.LittleEndian.Uint32(f[80:]); got != 0x610 {
		t.Errorf("GPE0_BLK %#x", got)
	}
	if f[92] != 4 || f[93] != 0 || binary.LittleEndian.Uint32(f[84:]) != 0 {
		t.Errorf("GPE0_BLK_LEN %d, GPE1_BLK_LEN %d, GPE1_BLK %#x", f[92], f[93], binary.LittleEndian.Uint32(f[84:]))
	}
	if g := f[220:232]; !bytes.Equal(g, []byte{1, 32, 0, 0, 0x10, 0x06, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("X_GPE0_BLK % x", g)
	}
	// Without hotplug slots there is no GPE block.
	f = build(t, 2).fadt
	if binary.LittleEndian.Uint32(f[80:]) != 0 || f[92] != 0 || !bytes.Equal(f[220:232], make([]byte, 12)) {
		t.Errorf("GPE0 described without hotplug: % x / %d / % x", f[80:84], f[92], f[220:232])
	}
}

// slotDevice is the hand-assembled Device(Sxx){Name(_ADR, slot<<16)
// Name(_SUN, slot) Method(_EJ0, 1){Store(1<<slot, PCEJ)}}.
func slotDevice(slot int) []byte {
	name := []byte(fmt.Sprintf("S%02X_", slot))
	var adr []byte
	if slot == 1 {
		adr = []byte{0x0C, 0x00, 0x00, 0x01, 0x00}
	} else {
		adr = binary.LittleEndian.AppendUint32([]byte{0x0C}, uint32(slot)<<16)
	}
	sun := []byte{0x0A, byte(slot)}
	if slot == 1 {
		sun = []byte{0x01}
	}
	ej0Body := append(append([]byte{'_', 'E', 'J', '0', 0x01, 0x70}, slotMask(slot)...), "PCEJ"...)
	ej0 := append([]byte{0x14, byte(len(ej0Body) + 1)}, ej0Body...)
	body := append([]byte{}, name...)
	body = append(body, 0x08, '_', 'A', 'D', 'R')
	body = append(body, adr...)
	body = append(body, 0x08, '_', 'S', 'U', 'N')
	body = append(body, sun...)
	body = append(body, ej0...)
	return append([]byte{0x5B, 0x82, byte(len(body) + 1)}, body...)
}

func TestHotplugDSDT(t *testing.T) {
	full := buildHotplug(t, AllHotplugSlots).dsdt
	plain := build(t, 2).dsdt
	wants := [][]byte{
		// OperationRegion(PCHP, SystemIO, 0x620, 0x0C)
		{0x5B, 0x80, 'P', 'C', 'H', 'P', 0x01, 0x0B, 0x20, 0x06, 0x0A, 0x0C},
		// Field(PCHP, DWordAcc, NoLock, WriteAsZeros){PCIU, 32, PCID, 32, PCEJ, 32}
		append([]byte{0x5B, 0x81, 0x15, 'P', 'C', 'H', 'P', 0x43}, "PCIU\x20PCID\x20PCEJ\x20"...),
		// PNP0C02 reserving the register block.
		append([]byte{0x5B, 0x82, 0x2E}, []byte("PHPR\x08_HID\x0c\x41\xd0\x0c\x02"+
			"\x08_UID\x0dPCIHP\x00\x08_CRS\x11\x0d\x0a\x0a\x47\x01\x20\x06\x20\x06\x01\x0c\x79\x00")...),
		// Method(PCNT, 0, Serialized){Store(PCIU, Local0) Store(PCID,
		// Local1) DVNT(Local0, One) DVNT(Local1, 3)}
		[]byte("\x14\x1f\x50\x43\x4e\x54\x08\x70PCIU\x60\x70PCID\x61DVNT\x60\x01DVNT\x61\x0a\x03"),
		// Scope(\_GPE){Method(_E01){\_SB.PCI0.PCNT()}}
		[]byte("\x10\x1c\\_GPE\x14\x15_E01\x00\\\x2f\x03_SB_PCI0PCNT"),
	}
	for slot := 1; slot < 32; slot++ {
		wants = append(wants, slotDevice(slot))
	}
	for i, w := range wants {
		if !bytes.Contains(full, w) {
			t.Errorf("DSDT lacks object %d: % x", i, w)
		}
		if bytes.Contains(plain, w) {
			t.Errorf("DSDT without hotplug has object %d", i)
		}
	}
	// The \_GPE scope ends the table.
	if !bytes.HasSuffix(full, wants[4]) {
		t.Error("DSDT does not end with the \\_GPE scope")
	}
	// DVNT: one If per slot, in order.
	i := bytes.Index(full, []byte("DVNT\x02"))
	if i < 3 || full[i-3] != amlMethodOp {
		t.Fatal("no Method(DVNT, 2) with a 2-byte PkgLength")
	}
	n, used := decodePkgLength(t, full[i-2:])
	if used != 2 || i-2+n > len(full) {
		t.Fatalf("DVNT PkgLength % x", full[i-2:i])
	}
	body := full[i+5 : i-2+n]
	for slot := 1; slot < 32; slot++ {
		mask := slotMask(slot)
		want := append(append([]byte{0x7B, 0x68}, mask...), 0x00, 0x86, 'S', fmt.Sprintf("%02X", slot)[0], fmt.Sprintf("%02X", slot)[1], '_', 0x69)
		want = append([]byte{0xA0, byte(len(want) + 1)}, want...)
		if !bytes.HasPrefix(body, want) {
			t.Fatalf("slot %d: If % x, want % x", slot, body[:min(len(body), len(want))], want)
		}
		body = body[len(want):]
	}
	if len(body) != 0 {
		t.Errorf("DVNT has %d more bytes", len(body))
	}
	// Only the slots asked for are described.
	some := buildHotplug(t, 1<<3|1<<31).dsdt
	for slot := 1; slot < 32; slot++ {
		has := bytes.Contains(some, slotDevice(slot))
		if has != (slot == 3 || slot == 31) {
			t.Errorf("slots 3 and 31: slot %d described %v", slot, has)
		}
	}
	// Everything that was there without hotplug is still there.
	if !bytes.Contains(full, plain[tableHeaderSize:tableHeaderSize+14]) || !bytes.Contains(full, []byte("ACPI0007\x00")) {
		t.Error("DSDT lost its _S5 or processor devices")
	}
}

// slotMask is the AML integer 1<<slot.
func slotMask(slot int) []byte {
	v := uint32(1) << slot
	switch {
	case v <= 0xFF:
		return []byte{0x0A, byte(v)}
	case v <= 0xFFFF:
		return binary.LittleEndian.AppendUint16([]byte{0x0B}, uint16(v))
	default:
		return binary.LittleEndian.AppendUint32([]byte{0x0C}, v)
	}
}

func TestHotplugRejectsSlot0(t *testing.T) {
	for _, slots := range []uint32{1, 0xFFFFFFFF} {
		if _, _, err := Build(Config{NumCPUs: 1, HotplugSlots: slots}, DefaultBase); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("HotplugSlots %#x: err %v", slots, err)
		}
	}
}
