package devices

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"rainforest/vmm/bus"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/interrupt"
	"rainforest/vmm/pci"
	"rainforest/vmm/vm"
	"rainforest/vmm/vm/vmtest"
)

// function is a PCI function with a 64 KiB MMIO BAR 0 (MSI-X table at
// 0x8000) and a 64 KiB memory BAR 2.
type function struct {
	cfg  *pci.ConfigSpace
	msix *pci.MSIX
}

func newFunction(t *testing.T, r pci.MSIRouter) *function {
	t.Helper()
	cfg := pci.NewConfigSpace(pci.Header{VendorID: 0x1234, DeviceID: 0x5678, Class: 0xFF0000})
	if err := cfg.AddMemBAR(0, 0x10000, false, false); err != nil {
		t.Fatal(err)
	}
	if err := cfg.AddMemBAR(2, 0x10000, true, true); err != nil {
		t.Fatal(err)
	}
	m, err := pci.NewMSIX(cfg, 2, 0, 0x8000, 0x9000, r)
	if err != nil {
		t.Fatal(err)
	}
	return &function{cfg: cfg, msix: m}
}

func (f *function) ReadConfig(off int, data []byte) { f.cfg.Read(off, data) }
func (f *function) WriteConfig(off int, data []byte) {
	f.cfg.Write(off, data)
	_ = f.msix.ControlWritten()
}
func (f *function) BARs() []pci.BAR { return f.cfg.BARs() }
func (f *function) ReadBAR(bar int, off uint64, data []byte) {
	clear(data)
}
func (f *function) WriteBAR(bar int, off uint64, data []byte) {}

// device claims one of each resource and records what happens to it.
type device struct {
	t       *testing.T
	fail    error // Plug fails with it after claiming
	mem     []byte
	bell    *eventfd.EventFD
	log     *[]string
	mu      sync.Mutex
	moves   [][3]uint64
	stopped bool
}

func (d *device) note(s string) { *d.log = append(*d.log, s) }

func (d *device) Plug(r *Resources) (pci.Device, error) {
	g, err := r.MSIX(2, nil)
	if err != nil {
		return nil, err
	}
	r.OnRemove(func() error { d.note("first clean-up"); return nil })
	if d.bell, err = eventfd.New(); err != nil {
		return nil, err
	}
	r.OnRemove(func() error { d.note("close bell"); return d.bell.Close() })
	match := uint64(7)
	if err := r.IOEventFD(0, 0x100, 4, &match, d.bell); err != nil {
		return nil, err
	}
	if err := r.MapBAR(2, 0x1000, d.mem, true); err != nil {
		return nil, err
	}
	r.Go(func(stop *eventfd.EventFD) {
		_, _ = r.Wait(nil)
		d.mu.Lock()
		d.stopped = true
		d.mu.Unlock()
	})
	if d.fail != nil {
		return nil, d.fail
	}
	return newFunction(d.t, g), nil
}

func (d *device) BARMoved(index int, from, to uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.moves = append(d.moves, [3]uint64{uint64(index), from, to})
	return nil
}

type rig struct {
	vm      *vmtest.VM
	mmio    bus.Bus
	pio     bus.Bus
	chassis *Chassis
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{vm: vmtest.New()}
	ram := make([]byte, 1<<20)
	mem, err := guestmem.New(guestmem.Region{GPA: 0, Data: ram})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r.chassis, err = New(Config{VM: r.vm, Memory: mem, MMIO: &r.mmio, PIO: &r.pio, Lines: interrupt.NewLines(r.vm, quiet),
		INTxGSI: func(slot, pin int) (uint32, bool) { return uint32(16 + slot%8), true }, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) configWrite(slot, reg int, v uint32) {
	var a, d [4]byte
	binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(slot)<<11|uint32(reg))
	binary.LittleEndian.PutUint32(d[:], v)
	r.pio.Write(pci.ConfigPortBase, a[:])
	r.pio.Write(pci.ConfigPortBase+4, d[:])
}

func (r *rig) bells() []vmtest.Bell { return r.vm.Bells() }

func mappedAt(r *rig, size uint64) []uint64 {
	var out []uint64
	for _, m := range r.vm.Memory() {
		if m.Size == size && m.GPA != 0 {
			out = append(out, m.GPA)
		}
	}
	return out
}

// Add places the BARs and registers the device's ioeventfd and memory at
// them; a guest move re-registers both and tells the device; Remove gives
// everything back, goroutines stopped first and clean-up last to first.
func TestAddMoveRemove(t *testing.T) {
	r := newRig(t)
	var log []string
	d := &device{t: t, mem: make([]byte, 0x2000), log: &log}
	slot, err := r.chassis.Add(d, -1)
	if err != nil {
		t.Fatal(err)
	}
	bars := r.chassis.Bus().BARs(slot)
	bar0, bar2 := bars[0].Addr, bars[1].Addr
	if bs := r.bells(); len(bs) != 1 || bs[0].Addr != bar0+0x100 || !bs[0].Match || bs[0].Value != 7 {
		t.Fatalf("ioeventfds %+v, want one at BAR 0 %#x + 0x100", bs, bar0)
	}
	if got := mappedAt(r, 0x2000); len(got) != 1 || got[0] != bar2+0x1000 {
		t.Fatalf("memory at %#x, want BAR 2 %#x + 0x1000", got, bar2)
	}
	if !r.mmio.Write(bar0+0x10, []byte{1, 2, 3, 4}) {
		t.Fatal("BAR 0 not on the MMIO bus")
	}
	if u := r.vm.Usage(); u.GSIs != 2 || u.Slots != 1 || u.IOEventFDs != 1 {
		t.Fatalf("usage %+v", u)
	}

	// The guest moves BAR 0 and BAR 2.
	r.configWrite(slot, pci.RegBAR0, 0xD000_0000)
	r.configWrite(slot, pci.RegBAR0+8, 0xD100_0000|0xC)
	if bs := r.bells(); len(bs) != 1 || bs[0].Addr != 0xD000_0100 {
		t.Fatalf("ioeventfd after the move: %+v", bs)
	}
	if got := mappedAt(r, 0x2000); len(got) != 1 || got[0] != 0xD100_1000 {
		t.Fatalf("memory after the move at %#x", got)
	}
	if r.mmio.Write(bar0+0x10, []byte{1, 2, 3, 4}) || !r.mmio.Write(0xD000_0010, []byte{1, 2, 3, 4}) {
		t.Fatal("MMIO bus did not follow BAR 0")
	}
	d.mu.Lock()
	if len(d.moves) != 2 || d.moves[0] != [3]uint64{0, bar0, 0xD000_0000} || d.moves[1] != [3]uint64{2, bar2, 0xD100_0000} {
		t.Errorf("BARMoved calls %x", d.moves)
	}
	d.mu.Unlock()

	if _, err := r.chassis.Remove(slot); err != nil {
		t.Fatal(err)
	}
	if u := r.vm.Usage(); u != (vm.Usage{}) {
		t.Fatalf("after Remove: %+v, want nothing held", u)
	}
	if r.mmio.Write(0xD000_0010, []byte{1, 2, 3, 4}) {
		t.Fatal("BAR 0 still on the MMIO bus")
	}
	d.mu.Lock()
	stopped := d.stopped
	d.mu.Unlock()
	if !stopped || strings.Join(log, ",") != "close bell,first clean-up" {
		t.Fatalf("goroutine stopped %v, clean-up order %q", stopped, log)
	}
	if _, err := r.chassis.Remove(slot); !errors.Is(err, ErrSlot) {
		t.Fatalf("second Remove: %v", err)
	}
}

// A BAR moved where it cannot be mapped (onto another device, onto RAM)
// is left unmapped, with nothing registered; the next good move maps it.
func TestFailedMoveLeavesBARUnmapped(t *testing.T) {
	r := newRig(t)
	var log []string
	a := &device{t: t, mem: make([]byte, 0x2000), log: &log}
	b := &device{t: t, mem: make([]byte, 0x2000), log: &log}
	sa, err := r.chassis.Add(a, -1)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := r.chassis.Add(b, -1)
	if err != nil {
		t.Fatal(err)
	}
	bBar0 := r.chassis.Bus().BARs(sb)[0].Addr
	// a's BAR 0 onto b's BAR 0: refused, b keeps its range.
	r.configWrite(sa, pci.RegBAR0, uint32(bBar0))
	if got := r.chassis.Bus().BARs(sa)[0].Addr; got != 0 {
		t.Fatalf("a's BAR 0 recorded at %#x after a refused move", got)
	}
	if bs := r.bells(); len(bs) != 1 || bs[0].Addr != bBar0+0x100 {
		t.Fatalf("ioeventfds %+v, want only b's", bs)
	}
	if !r.mmio.Write(bBar0+0x10, []byte{1, 2, 3, 4}) {
		t.Fatal("b's BAR 0 lost its MMIO range")
	}
	// a's memory BAR onto RAM: refused.
	r.configWrite(sa, pci.RegBAR0+8, 0x8000|0xC)
	if got := r.chassis.Bus().BARs(sa)[1].Addr; got != 0 {
		t.Fatalf("a's BAR 2 recorded at %#x after a move onto RAM", got)
	}
	if got := mappedAt(r, 0x2000); len(got) != 1 {
		t.Fatalf("memory mapped at %#x, want only b's", got)
	}
	// A good move maps a's BAR 0 again.
	r.configWrite(sa, pci.RegBAR0, 0xD800_0000)
	if bs := r.bells(); len(bs) != 2 {
		t.Fatalf("ioeventfds %+v after a good move", bs)
	}
	if err := r.chassis.Close(); err != nil {
		t.Fatal(err)
	}
	if u := r.vm.Usage(); u != (vm.Usage{}) {
		t.Fatalf("after Close: %+v", u)
	}
	if _, err := r.chassis.Add(a, -1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
}

// A device whose Plug fails leaves nothing behind; so does one the bus
// refuses; taken and bad slots are refused by name.
func TestAddFailures(t *testing.T) {
	r := newRig(t)
	var log []string
	d := &device{t: t, mem: make([]byte, 0x2000), log: &log, fail: fmt.Errorf("model says no")}
	if _, err := r.chassis.Add(d, 3); err == nil || !strings.Contains(err.Error(), "model says no") {
		t.Fatalf("Add = %v", err)
	}
	if u := r.vm.Usage(); u != (vm.Usage{}) || len(r.chassis.Slots()) != 0 {
		t.Fatalf("a failed Plug left %+v, slots %v", u, r.chassis.Slots())
	}
	good := &device{t: t, mem: make([]byte, 0x2000), log: &log}
	if _, err := r.chassis.Add(good, 3); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []int{0, 3, 32} {
		if _, err := r.chassis.Add(&device{t: t, mem: make([]byte, 0x2000), log: &log}, slot); !errors.Is(err, ErrSlot) {
			t.Errorf("Add to slot %d: %v", slot, err)
		}
	}
	// Memory that is not page-sized is refused at claim time.
	bad := &device{t: t, mem: make([]byte, 100), log: &log}
	if _, err := r.chassis.Add(bad, -1); err == nil {
		t.Fatal("unaligned memory accepted")
	}
	if got := r.chassis.Slots(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("slots %v", got)
	}
	if r.chassis.Device(3) != Device(good) || r.chassis.Device(4) != nil {
		t.Fatal("Device lookup")
	}
}
