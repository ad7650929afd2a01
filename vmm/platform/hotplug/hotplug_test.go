package hotplug

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"rainforest/vmm/acpi"
	"rainforest/vmm/bus"
	"rainforest/vmm/platform"
)

var (
	_ bus.Device = (*Controller)(nil)
	_ GPEBlock   = (*platform.GPEBlock)(nil)
)

// The register block must be the one the DSDT describes.
func TestMatchesACPITables(t *testing.T) {
	if RegistersLen != acpi.PCIHotplugLen || GPEBit != acpi.PCIHotplugGPE || NumSlots != acpi.PCISlots {
		t.Fatalf("hotplug: len %d GPE %d slots %d; acpi: len %d GPE %d slots %d",
			RegistersLen, GPEBit, NumSlots, acpi.PCIHotplugLen, acpi.PCIHotplugGPE, acpi.PCISlots)
	}
	if acpi.GPE0Len != platform.GPEBlockLen {
		t.Fatalf("GPE0 length: acpi %d, platform %d", acpi.GPE0Len, platform.GPEBlockLen)
	}
}

// countingGPE counts the events raised.
type countingGPE struct {
	mu     sync.Mutex
	raised int
}

func (g *countingGPE) SetStatus(bits uint16) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if bits == 1<<GPEBit {
		g.raised++
	}
}

func (g *countingGPE) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.raised
}

func read32(d bus.Device, off uint64) uint32 {
	b := make([]byte, 4)
	d.Read(off, b)
	return binary.LittleEndian.Uint32(b)
}

func write32(d bus.Device, off uint64, v uint32) {
	d.Write(off, binary.LittleEndian.AppendUint32(nil, v))
}

func TestPlugAndDeviceCheck(t *testing.T) {
	var gpe countingGPE
	c := New(&gpe, nil)
	if err := c.Plug(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Plug(5); err != nil {
		t.Fatal(err)
	}
	if gpe.count() != 2 {
		t.Fatalf("%d GPEs raised, want 2", gpe.count())
	}
	if err := c.Plug(3); !errors.Is(err, ErrSlotOccupied) {
		t.Errorf("second Plug(3): %v", err)
	}
	for _, s := range []int{0, -1, 32, 1000} {
		if err := c.Plug(s); !errors.Is(err, ErrInvalidSlot) {
			t.Errorf("Plug(%d): %v", s, err)
		}
	}
	// PCIU is read-to-clear.
	if got := read32(c, RegUp); got != 1<<3|1<<5 {
		t.Fatalf("up %#x", got)
	}
	if got := read32(c, RegUp); got != 0 {
		t.Fatalf("up %#x after reading it", got)
	}
	occ, up, down := c.Slots()
	if occ != 1<<3|1<<5 || up != 0 || down != 0 {
		t.Errorf("slots %#x/%#x/%#x", occ, up, down)
	}
	// A byte read clears only the byte read.
	if err := c.Plug(9); err != nil {
		t.Fatal(err)
	}
	if err := c.Plug(1); err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	c.Read(RegUp+1, b)
	if b[0] != 1<<(9-8) {
		t.Errorf("up byte 1 = %#x", b[0])
	}
	if got := read32(c, RegUp); got != 1<<1 {
		t.Errorf("up %#x after byte read", got)
	}
	// Writes to up and down change nothing.
	if err := c.Plug(2); err != nil {
		t.Fatal(err)
	}
	write32(c, RegUp, 0xFFFFFFFF)
	write32(c, RegDown, 0xFFFFFFFF)
	if _, up, down := c.Slots(); up != 1<<2 || down != 0 {
		t.Errorf("up %#x down %#x after writes", up, down)
	}
}

func TestEjectRequestAndEject(t *testing.T) {
	var gpe countingGPE
	var mu sync.Mutex
	var ejected []int
	var c *Controller
	c = New(&gpe, func(slot int) {
		// Called without the lock: the controller is usable, and the
		// slot is still occupied until the callback returns.
		if err := c.Plug(slot); !errors.Is(err, ErrSlotOccupied) {
			t.Errorf("Plug(%d) during its eject callback: %v", slot, err)
		}
		mu.Lock()
		ejected = append(ejected, slot)
		mu.Unlock()
	})
	if err := c.RequestEject(4); !errors.Is(err, ErrSlotEmpty) {
		t.Errorf("RequestEject of an empty slot: %v", err)
	}
	if err := c.RequestEject(0); !errors.Is(err, ErrInvalidSlot) {
		t.Errorf("RequestEject(0): %v", err)
	}
	for _, s := range []int{4, 7, 31} {
		if err := c.SetPresent(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SetPresent(4); !errors.Is(err, ErrSlotOccupied) {
		t.Errorf("SetPresent twice: %v", err)
	}
	if gpe.count() != 0 {
		t.Fatal("SetPresent raised a GPE")
	}
	if err := c.RequestEject(4); err != nil {
		t.Fatal(err)
	}
	if err := c.RequestEject(31); err != nil {
		t.Fatal(err)
	}
	if gpe.count() != 2 {
		t.Fatalf("%d GPEs raised", gpe.count())
	}
	// PCID is not cleared by reading.
	for i := 0; i < 2; i++ {
		if got := read32(c, RegDown); got != 1<<4|1<<31 {
			t.Fatalf("down %#x (read %d)", got, i)
		}
	}
	// The guest ejects slot 31, and slot 7 on its own; plus junk: slot 0
	// and the empty slot 9.
	write32(c, RegEject, 1<<31|1<<7|1<<0|1<<9)
	if len(ejected) != 2 || ejected[0] != 7 || ejected[1] != 31 {
		t.Fatalf("ejected %v, want [7 31]", ejected)
	}
	if n := c.IgnoredEjects(); n != 2 {
		t.Errorf("ignored %d, want 2", n)
	}
	occ, _, down := c.Slots()
	if occ != 1<<4 || down != 1<<4 {
		t.Errorf("occupied %#x down %#x", occ, down)
	}
	// Ejecting it again is ignored; the slot can be plugged again.
	write32(c, RegEject, 1<<31)
	if len(ejected) != 2 || c.IgnoredEjects() != 3 {
		t.Errorf("re-eject: ejected %v ignored %d", ejected, c.IgnoredEjects())
	}
	if err := c.Plug(31); err != nil {
		t.Errorf("Plug after eject: %v", err)
	}
	// The eject register reads as 0.
	if got := read32(c, RegEject); got != 0 {
		t.Errorf("eject reads %#x", got)
	}
	// CancelEject withdraws a pending request only.
	if !c.CancelEject(4) || c.CancelEject(4) || c.CancelEject(0) || c.CancelEject(99) {
		t.Error("CancelEject results")
	}
	if _, _, down := c.Slots(); down != 0 {
		t.Errorf("down %#x after cancel", down)
	}
	// A byte write at offset 0xB ejects slots 24..31.
	c.Write(RegEject+3, []byte{0x80})
	if len(ejected) != 3 || ejected[2] != 31 {
		t.Errorf("byte eject: %v", ejected)
	}
	// An eject also drops a pending device check.
	if err := c.Plug(6); err != nil {
		t.Fatal(err)
	}
	write32(c, RegEject, 1<<6)
	if _, up, _ := c.Slots(); up != 0 {
		t.Errorf("up %#x after ejecting a plugged slot", up)
	}
}

func TestOddAccesses(t *testing.T) {
	c := New(nil, nil) // no GPE, no callback: no panic
	if err := c.Plug(8); err != nil {
		t.Fatal(err)
	}
	if err := c.RequestEject(8); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	c.Read(8, b)
	if want := []byte{0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF}; string(b) != string(want) {
		t.Errorf("read at 8: % x", b)
	}
	// A read straddling down and eject.
	c.Read(5, b[:4])
	if b[0] != 1 || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		t.Errorf("read at 5: % x", b[:4])
	}
	c.Read(^uint64(0), b)
	for _, x := range b {
		if x != 0xFF {
			t.Fatalf("read at the top: % x", b)
		}
	}
	c.Write(^uint64(0)-2, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	c.Write(12, []byte{0xFF})
	c.Write(6, []byte{0xFF, 0xFF, 0x00, 0x01}) // down (ignored), eject slot 8
	occ, up, down := c.Slots()
	if occ != 0 || up != 0 || down != 0 {
		t.Errorf("slots %#x/%#x/%#x after straddling eject", occ, up, down)
	}
}

func TestConcurrent(t *testing.T) {
	gpe := platform.NewGPEBlock(nil)
	c := New(gpe, func(int) {})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				s := 1 + (i*7+w)%31
				_ = c.Plug(s)
				_ = c.RequestEject(s)
				read32(c, RegUp)
				read32(c, RegDown)
				write32(c, RegEject, 1<<s)
				c.CancelEject(s)
			}
		}(w)
	}
	wg.Wait()
	occ, up, down := c.Slots()
	if down&^occ != 0 || up&^occ != 0 {
		t.Errorf("pending events for empty slots: occupied %#x up %#x down %#x", occ, up, down)
	}
}
