package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"rainforest/vmm/bus"
)

// fakeRouter records Route and Fire calls.
type fakeRouter struct {
	mu     sync.Mutex
	routes []string
	state  map[int]routed
	fired  []int
}

func (r *fakeRouter) Route(v int, msg MSIMessage, masked bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == nil {
		r.state = map[int]routed{}
	}
	r.state[v] = routed{msg, masked}
	r.routes = append(r.routes, fmt.Sprintf("%d:%#x/%#x/%v", v, msg.Addr, msg.Data, masked))
	return nil
}

func (r *fakeRouter) Fire(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, v)
	return nil
}

func (r *fakeRouter) take() ([]string, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, b := r.routes, r.fired
	r.routes, r.fired = nil, nil
	return a, b
}

// testDev is a function with a 64-bit BAR 0 (MSI-X table at 0, PBA at
// 0x800) and a 32-bit BAR 2.
type testDev struct {
	cfg  *ConfigSpace
	msix *MSIX
}

func newTestDev(t *testing.T, r MSIRouter, vectors int) *testDev {
	t.Helper()
	cfg := NewConfigSpace(Header{VendorID: 0x1234, DeviceID: 0x5678, Revision: 2, Class: 0xFF0000, SubsystemVendorID: 0x1AF4, SubsystemID: 7})
	if err := cfg.AddMemBAR(0, 0x1000, true, false); err != nil {
		t.Fatal(err)
	}
	if err := cfg.AddMemBAR(2, 0x100, false, true); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.AddVendorCapability([]byte{4, 0xAA}, nil); err != nil {
		t.Fatal(err)
	}
	m, err := NewMSIX(cfg, vectors, 0, 0, 0x800, r)
	if err != nil {
		t.Fatal(err)
	}
	return &testDev{cfg: cfg, msix: m}
}

func (d *testDev) ReadConfig(off int, data []byte) { d.cfg.Read(off, data) }
func (d *testDev) WriteConfig(off int, data []byte) {
	d.cfg.Write(off, data)
	_ = d.msix.ControlWritten()
}
func (d *testDev) BARs() []BAR { return d.cfg.BARs() }
func (d *testDev) ReadBAR(bar int, off uint64, data []byte) {
	if off >= 0x800 {
		d.msix.ReadPBA(off-0x800, data)
		return
	}
	d.msix.ReadTable(off, data)
}
func (d *testDev) WriteBAR(bar int, off uint64, data []byte) {
	if off < 0x800 {
		_ = d.msix.WriteTable(off, data)
	}
}

func cfgRead32(d Device, off int) uint32 {
	var b [4]byte
	d.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func cfgWrite32(d Device, off int, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.WriteConfig(off, b[:])
}

func TestConfigHeaderAndMasks(t *testing.T) {
	d := newTestDev(t, &fakeRouter{}, 4)
	if got := cfgRead32(d, 0); got != 0x5678_1234 {
		t.Fatalf("id = %#x", got)
	}
	if got := cfgRead32(d, 8); got != 0xFF00_0002 {
		t.Fatalf("class/rev = %#x", got)
	}
	if got := cfgRead32(d, RegSubsysVendor); got != 0x0007_1AF4 {
		t.Fatalf("subsystem = %#x", got)
	}
	cfgWrite32(d, 0, 0xFFFF_FFFF) // read-only
	if got := cfgRead32(d, 0); got != 0x5678_1234 {
		t.Fatalf("vendor id writable: %#x", got)
	}
	cfgWrite32(d, RegCommand, 0xFFFF_FFFF)
	if got := d.cfg.Command(); got != CommandMemory|CommandBusMaster|CommandINTxDisable {
		t.Fatalf("command = %#x", got)
	}
	if st := cfgRead32(d, RegCommand) >> 16; st != StatusCapList {
		t.Fatalf("status = %#x", st)
	}
	// Out-of-range accesses.
	var b [4]byte
	d.ReadConfig(254, b[:])
	if b != [4]byte{0xFF, 0xFF, 0xFF, 0xFF} {
		t.Fatalf("read past end = %x", b)
	}
	d.WriteConfig(-1, b[:])
	d.ReadConfig(300, b[:1])
}

func TestBARSizing(t *testing.T) {
	d := newTestDev(t, &fakeRouter{}, 4)
	// 64-bit BAR 0, size 0x1000.
	cfgWrite32(d, RegBAR0, 0xFFFF_FFFF)
	cfgWrite32(d, RegBAR0+4, 0xFFFF_FFFF)
	if lo, hi := cfgRead32(d, RegBAR0), cfgRead32(d, RegBAR0+4); lo != 0xFFFF_F004 || hi != 0xFFFF_FFFF {
		t.Fatalf("64-bit BAR sizing = %#x %#x", hi, lo)
	}
	// 32-bit prefetchable BAR 2, size 0x100.
	cfgWrite32(d, RegBAR0+8, 0xFFFF_FFFF)
	if got := cfgRead32(d, RegBAR0+8); got != 0xFFFF_FF08 {
		t.Fatalf("32-bit BAR sizing = %#x", got)
	}
	// Unused BARs and the ROM BAR read 0.
	for _, off := range []int{RegBAR0 + 12, RegBAR0 + 16, RegBAR0 + 20, 0x30} {
		cfgWrite32(d, off, 0xFFFF_FFFF)
		if got := cfgRead32(d, off); got != 0 {
			t.Fatalf("BAR at %#x = %#x", off, got)
		}
	}
	cfgWrite32(d, RegBAR0, 0xC000_1000)
	cfgWrite32(d, RegBAR0+4, 0x1)
	bars := d.BARs()
	if len(bars) != 2 || bars[0] != (BAR{Index: 0, Addr: 0x1_C000_1000, Size: 0x1000, Is64: true}) ||
		bars[1].Index != 2 || !bars[1].Prefetchable || bars[1].Is64 {
		t.Fatalf("BARs = %+v", bars)
	}
	// Invalid declarations.
	c := NewConfigSpace(Header{})
	for _, tc := range []struct {
		i    int
		size uint64
		is64 bool
	}{{-1, 16, false}, {6, 16, false}, {5, 16, true}, {0, 8, false}, {0, 24, false}, {0, 1 << 32, false}} {
		if err := c.AddMemBAR(tc.i, tc.size, tc.is64, false); !errors.Is(err, ErrBadBAR) {
			t.Errorf("AddMemBAR(%d,%#x,%v) = %v", tc.i, tc.size, tc.is64, err)
		}
	}
	if err := c.AddMemBAR(0, 1<<33, true, true); err != nil {
		t.Fatal(err)
	}
	if err := c.AddMemBAR(1, 16, false, false); !errors.Is(err, ErrBadBAR) {
		t.Fatalf("overlapping BAR accepted: %v", err)
	}
	c.Write(RegBAR0, []byte{0xFF, 0xFF, 0xFF, 0xFF})
	c.Write(RegBAR0+4, []byte{0xFF, 0xFF, 0xFF, 0xFF})
	if lo, hi := c.Uint32(RegBAR0), c.Uint32(RegBAR0+4); lo != 0xC || hi != 0xFFFF_FFFE {
		t.Fatalf("8 GiB BAR sizing = %#x %#x", hi, lo)
	}
}

func TestCapabilityWalk(t *testing.T) {
	d := newTestDev(t, &fakeRouter{}, 4)
	var ids []byte
	var b [1]byte
	d.ReadConfig(RegCapPointer, b[:])
	ptr := int(b[0])
	for seen := 0; ptr != 0; seen++ {
		if seen > 48 || ptr < 0x40 || ptr&3 != 0 {
			t.Fatalf("bad capability pointer %#x", ptr)
		}
		var h [2]byte
		d.ReadConfig(ptr, h[:])
		ids = append(ids, h[0])
		ptr = int(h[1])
	}
	if string(ids) != string([]byte{CapIDVendor, CapIDMSIX}) {
		t.Fatalf("capability IDs = %x", ids)
	}
	off := d.msix.CapOffset()
	if ctrl := d.cfg.Uint16(off + 2); ctrl != 3 {
		t.Fatalf("MSI-X table size field = %#x", ctrl)
	}
	if tbl, pba := cfgRead32(d, off+4), cfgRead32(d, off+8); tbl != 0 || pba != 0x800 {
		t.Fatalf("table %#x pba %#x", tbl, pba)
	}
	// Capability bodies are read-only unless masked writable.
	cfgWrite32(d, off+4, 0xFFFF_FFFF)
	if cfgRead32(d, off+4) != 0 {
		t.Fatal("MSI-X table offset writable")
	}
	// Capability space runs out instead of overflowing.
	c := NewConfigSpace(Header{})
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c.AddVendorCapability(make([]byte, 14), nil)
	}
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("AddCapability overflow = %v", err)
	}
}

func writeBAR32(d Device, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.WriteBAR(0, off, b[:])
}

func TestMSIX(t *testing.T) {
	r := &fakeRouter{}
	d := newTestDev(t, r, 3)
	ctrlOff := d.msix.CapOffset() + 2
	// Entries start masked.
	var b [4]byte
	d.ReadBAR(0, 12, b[:])
	if b[0] != 1 {
		t.Fatalf("vector control = %x", b)
	}
	if err := d.msix.Signal(0); !errors.Is(err, ErrMSIXDisabled) {
		t.Fatalf("Signal while disabled = %v", err)
	}
	// Program vector 1 while MSI-X is off: Route sees masked.
	writeBAR32(d, 16+0, 0xFEE0_0000)
	writeBAR32(d, 16+4, 0)
	writeBAR32(d, 16+8, 0x41)
	writeBAR32(d, 16+12, 0) // unmask entry
	routes, _ := r.take()
	if len(routes) == 0 || routes[len(routes)-1] != "1:0xfee00000/0x41/true" {
		t.Fatalf("routes = %v", routes)
	}
	// Enable MSI-X with function mask, then clear the function mask.
	d.WriteConfig(ctrlOff, []byte{0, 0xC0})
	if routes, _ := r.take(); len(routes) != 0 {
		t.Fatalf("routes under function mask = %v", routes)
	}
	if err := d.msix.Signal(1); err != nil {
		t.Fatal(err)
	}
	if !d.msix.Pending(1) {
		t.Fatal("not pending under function mask")
	}
	var p [8]byte
	d.ReadBAR(0, 0x800, p[:])
	if p[0] != 2 {
		t.Fatalf("PBA = %x", p)
	}
	d.WriteConfig(ctrlOff, []byte{0, 0x80})
	routes, fired := r.take()
	if len(routes) != 1 || routes[0] != "1:0xfee00000/0x41/false" || len(fired) != 1 || fired[0] != 1 {
		t.Fatalf("after function unmask: routes %v fired %v", routes, fired)
	}
	if d.msix.Pending(1) {
		t.Fatal("still pending")
	}
	// Deliverable: fires directly.
	if err := d.msix.Signal(1); err != nil {
		t.Fatal(err)
	}
	if _, fired := r.take(); len(fired) != 1 {
		t.Fatalf("fired = %v", fired)
	}
	// Entry mask: pending, then unmask delivers.
	writeBAR32(d, 16+12, 1)
	if routes, _ := r.take(); len(routes) != 1 || routes[0] != "1:0xfee00000/0x41/true" {
		t.Fatalf("routes = %v", routes)
	}
	_ = d.msix.Signal(1)
	if _, fired := r.take(); len(fired) != 0 || !d.msix.Pending(1) {
		t.Fatalf("masked vector fired %v", fired)
	}
	writeBAR32(d, 16+12, 0)
	if _, fired := r.take(); len(fired) != 1 || fired[0] != 1 {
		t.Fatalf("unmask fired %v", fired)
	}
	// Vector 0 is still masked; vector 2 never programmed.
	_ = d.msix.Signal(0)
	if _, fired := r.take(); len(fired) != 0 {
		t.Fatal("masked vector 0 fired")
	}
	// Out-of-range vectors are errors, not panics.
	for _, v := range []int{-1, 3, 1 << 20} {
		if err := d.msix.Signal(v); !errors.Is(err, ErrBadVector) {
			t.Fatalf("Signal(%d) = %v", v, err)
		}
	}
	// Reserved vector-control bits read 0; writes past the table are dropped.
	writeBAR32(d, 16+12, 0xFFFF_FFFE)
	d.ReadBAR(0, 16+12, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 0 {
		t.Fatalf("vector control = %x", b)
	}
	writeBAR32(d, 3*16, 0x1234)
	d.WriteBAR(0, 3*16-2, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	var big [16]byte
	d.ReadBAR(0, 3*16-8, big[:])
	// Disabling routes everything masked.
	d.WriteConfig(ctrlOff, []byte{0, 0})
	routes, _ = r.take()
	if len(routes) != 1 || routes[0] != "1:0xfee00000/0x41/true" {
		t.Fatalf("routes on disable = %v", routes)
	}
	// Reset masks everything.
	if err := d.msix.Reset(); err != nil {
		t.Fatal(err)
	}
	if d.msix.Enabled() {
		t.Fatal("enabled after reset")
	}
}

func TestMSIXArgs(t *testing.T) {
	c := NewConfigSpace(Header{})
	if _, err := NewMSIX(c, 0, 0, 0, 0, &fakeRouter{}); !errors.Is(err, ErrBadVector) {
		t.Fatal(err)
	}
	if _, err := NewMSIX(c, 1, 7, 0, 0, &fakeRouter{}); !errors.Is(err, ErrBadBAR) {
		t.Fatal(err)
	}
	if _, err := NewMSIX(c, 1, 0, 4, 0, &fakeRouter{}); !errors.Is(err, ErrBadBAR) {
		t.Fatal(err)
	}
}

func cf8(slot, reg int) []byte {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 1<<31|uint32(slot)<<11|uint32(reg))
	return b[:]
}

func portRead(io *bus.Bus, port uint64, n int) uint64 {
	b := make([]byte, n)
	io.Read(port, b)
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func portWrite(io *bus.Bus, port uint64, n int, v uint64) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	io.Write(port, b)
}

func TestHostBridgeConfigPorts(t *testing.T) {
	pb := NewBus()
	var io bus.Bus
	if err := io.Insert(pb, ConfigPortBase, ConfigPortSize); err != nil {
		t.Fatal(err)
	}
	// Linux's type-1 probe: address register reads back.
	portWrite(&io, 0xCF8, 4, 0x8000_0000)
	if got := portRead(&io, 0xCF8, 4); got != 0x8000_0000 {
		t.Fatalf("CF8 = %#x", got)
	}
	io.Write(0xCF8, cf8(0, 0))
	if got := portRead(&io, 0xCFC, 4); got != uint64(HostBridgeDeviceID)<<16|HostBridgeVendorID {
		t.Fatalf("host bridge id = %#x", got)
	}
	if got := portRead(&io, 0xCFE, 2); got != HostBridgeDeviceID {
		t.Fatalf("device id via CFE = %#x", got)
	}
	io.Write(0xCF8, cf8(0, 8))
	if got := portRead(&io, 0xCFC, 4) >> 8; got != 0x060000 {
		t.Fatalf("class = %#x", got)
	}
	if got := portRead(&io, 0xCFF, 1); got != 0x06 {
		t.Fatalf("base class via CFF = %#x", got)
	}
	// Empty slot, other function, other bus, enable bit clear.
	for _, a := range []uint32{1<<31 | 5<<11, 1<<31 | 1<<8, 1<<31 | 1<<16, 1<<31 | 1<<24, 0} {
		portWrite(&io, 0xCF8, 4, uint64(a))
		if got := portRead(&io, 0xCFC, 4); got != 0xFFFF_FFFF {
			t.Fatalf("address %#x reads %#x", a, got)
		}
		portWrite(&io, 0xCFC, 4, 0) // ignored
	}
	// Accesses straddling the data port are ignored.
	io.Write(0xCF8, cf8(0, 0))
	if got := portRead(&io, 0xCFE, 4); got != 0xFFFF_FFFF {
		t.Fatalf("straddling read = %#x", got)
	}
	// 0xCF9 is the reset control register.
	var reset []byte
	pb.SetResetHandler(func(v byte) { reset = append(reset, v) })
	portWrite(&io, 0xCF9, 1, 0x06)
	if len(reset) != 1 || reset[0] != 6 {
		t.Fatalf("reset = %v", reset)
	}
	// Byte writes to CF8 do not change the address register.
	portWrite(&io, 0xCFB, 1, 0x01)
	if got := portRead(&io, 0xCF8, 4); got != uint64(le32(cf8(0, 0))) {
		t.Fatalf("CF8 after byte write = %#x", got)
	}
}

type move struct {
	slot, bar int
	old, new  uint64
}

func TestBusAddAndBARMove(t *testing.T) {
	pb := NewBus()
	var moves []move
	pb.SetBARMoveHandler(func(slot int, dev Device, bar BAR, old uint64) error {
		if pb.Device(slot) != dev {
			t.Error("handler got another device")
		}
		moves = append(moves, move{slot, bar.Index, old, bar.Addr})
		return nil
	})
	r := &fakeRouter{}
	d := newTestDev(t, r, 2)
	slot, bars, err := pb.Add(-1, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if slot != 1 || len(bars) != 2 {
		t.Fatalf("slot %d bars %+v", slot, bars)
	}
	for _, b := range bars {
		if b.Addr < MMIOWindowBase || b.Addr+b.Size > MMIOWindowEnd || b.Addr%b.Size != 0 {
			t.Fatalf("BAR %+v outside window or misaligned", b)
		}
	}
	if bars[0].Addr == bars[1].Addr {
		t.Fatal("BARs overlap")
	}
	if !d.cfg.MemoryEnabled() {
		t.Fatal("memory decode off after Add")
	}
	if _, _, err := pb.Add(1, d, nil); !errors.Is(err, ErrSlotInUse) {
		t.Fatalf("Add to used slot = %v", err)
	}
	for _, s := range []int{0, 32, -2} {
		if _, _, err := pb.Add(s, d, nil); !errors.Is(err, ErrBadSlot) && !errors.Is(err, ErrSlotInUse) {
			t.Fatalf("Add(%d) = %v", s, err)
		}
	}
	var io bus.Bus
	_ = io.Insert(pb, ConfigPortBase, ConfigPortSize)
	// Linux-style sizing with decode off reports nothing.
	io.Write(0xCF8, cf8(1, RegCommand))
	portWrite(&io, 0xCFC, 2, 0)
	for _, reg := range []int{RegBAR0, RegBAR0 + 4} {
		io.Write(0xCF8, cf8(1, reg))
		orig := portRead(&io, 0xCFC, 4)
		portWrite(&io, 0xCFC, 4, 0xFFFF_FFFF)
		portWrite(&io, 0xCFC, 4, orig)
	}
	io.Write(0xCF8, cf8(1, RegCommand))
	portWrite(&io, 0xCFC, 2, CommandMemory|CommandBusMaster)
	if len(moves) != 0 {
		t.Fatalf("moves after sizing = %+v", moves)
	}
	// Move BAR 2 with decode on.
	io.Write(0xCF8, cf8(1, RegBAR0+8))
	portWrite(&io, 0xCFC, 4, 0xD000_0000)
	want := move{1, 2, bars[1].Addr, 0xD000_0000}
	if len(moves) != 1 || moves[0] != want {
		t.Fatalf("moves = %+v, want %+v", moves, want)
	}
	if got := pb.BARs(1); got[1].Addr != 0xD000_0000 {
		t.Fatalf("Bus.BARs = %+v", got)
	}
	// Move BAR 0 with decode off, then turn decode on: one move.
	moves = nil
	io.Write(0xCF8, cf8(1, RegCommand))
	portWrite(&io, 0xCFC, 2, 0)
	io.Write(0xCF8, cf8(1, RegBAR0))
	portWrite(&io, 0xCFC, 4, 0xD100_0000)
	io.Write(0xCF8, cf8(1, RegCommand))
	portWrite(&io, 0xCFC, 2, CommandMemory)
	if len(moves) != 1 || moves[0] != (move{1, 0, bars[0].Addr, 0xD100_0000}) {
		t.Fatalf("moves = %+v", moves)
	}
	// MMIO dispatch through BARRegion reaches the MSI-X table.
	var mmio bus.Bus
	if err := mmio.Insert(BARRegion(d, 0), 0xD100_0000, 0x1000); err != nil {
		t.Fatal(err)
	}
	portWrite2 := func(addr uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		mmio.Write(addr, b[:])
	}
	portWrite2(0xD100_0008, 0x99)
	var b [4]byte
	mmio.Read(0xD100_0008, b[:])
	if b[0] != 0x99 {
		t.Fatalf("MSI-X data via MMIO = %x", b)
	}
	if pb.Device(1) != Device(d) || pb.Device(7) != nil || pb.Device(99) != nil || pb.BARs(7) != nil {
		t.Fatal("Device lookup")
	}
}

// Add places BARs in the first free aligned ranges of the window, around
// BARs the guest moved, and reuses the room of a removed function.
func TestBusPlacement(t *testing.T) {
	pb := NewBusWindow(0xC000_0000, 0xC001_0000)
	d1 := newTestDev(t, &fakeRouter{}, 1)
	_, bars1, err := pb.Add(1, d1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pb.Add(2, newTestDev(t, &fakeRouter{}, 1), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := NewBusWindow(MMIOWindowBase, MMIOWindowBase+0x100).Add(3, newTestDev(t, &fakeRouter{}, 1), nil); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Add without space = %v", err)
	}
	// Remove slot 1: its room is free again, and a new function gets it.
	dev, gone, err := pb.Remove(1)
	if err != nil || dev != Device(d1) || len(gone) != len(bars1) || gone[0].Addr != bars1[0].Addr {
		t.Fatalf("Remove = %v %+v %v", dev, gone, err)
	}
	if pb.Device(1) != nil {
		t.Fatal("slot 1 still holds a device")
	}
	if _, _, err := pb.Remove(1); !errors.Is(err, ErrBadSlot) {
		t.Fatalf("second Remove = %v", err)
	}
	_, bars3, err := pb.Add(-1, newTestDev(t, &fakeRouter{}, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if bars3[0].Addr != bars1[0].Addr {
		t.Errorf("new function at %#x, want the freed %#x", bars3[0].Addr, bars1[0].Addr)
	}
}

// A BAR whose move the handler refused counts as unmapped: the next move
// reports old address 0, and Bus.BARs says 0 meanwhile.
func TestBusFailedMoveUnmaps(t *testing.T) {
	pb := NewBus()
	var olds []uint64
	refuse := true
	pb.SetBARMoveHandler(func(slot int, dev Device, bar BAR, old uint64) error {
		olds = append(olds, old)
		if refuse {
			return ErrNoSpace
		}
		return nil
	})
	d := newTestDev(t, &fakeRouter{}, 1)
	slot, bars, err := pb.Add(-1, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	var io bus.Bus
	_ = io.Insert(pb, ConfigPortBase, ConfigPortSize)
	io.Write(0xCF8, cf8(slot, RegBAR0))
	portWrite(&io, 0xCFC, 4, 0xD000_0000)
	if got := pb.BARs(slot); got[0].Addr != 0 {
		t.Fatalf("BAR after a refused move at %#x, want 0 (unmapped)", got[0].Addr)
	}
	refuse = false
	portWrite(&io, 0xCFC, 4, 0xD100_0000)
	if len(olds) != 2 || olds[0] != bars[0].Addr || olds[1] != 0 {
		t.Fatalf("old addresses %#x", olds)
	}
	if got := pb.BARs(slot); got[0].Addr != 0xD100_0000 {
		t.Fatalf("BAR at %#x after the accepted move", got[0].Addr)
	}
}
