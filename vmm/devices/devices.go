// Package devices is the VMM's device manager: the Chassis holds PCI bus 0
// and the devices plugged into its slots, at boot or while the guest runs.
//
// A device plugs in through the Device interface: Plug gets the slot's
// Resources and returns the PCI function to put on the bus. Through
// Resources the device claims what it needs — an MSI-X vector group, its
// INTx line, ioeventfds and guest memory mappings at offsets inside its
// BARs, goroutines, and clean-up work — and the chassis does the rest:
// it places the BARs in the MMIO window and on the MMIO bus, registers the
// ioeventfds and memory slots at the BARs' addresses, follows the guest
// when it moves a BAR (re-registering all of them at the new address, then
// telling a device that implements BARMover), and when the device is
// removed undoes everything in reverse order: BAR mappings first, then the
// device's goroutines are stopped, then its clean-up runs last to first.
//
// The chassis never reaches into a device, and devices never reach into
// KVM: they get eventfds and interrupt handles, the chassis talks to the VM
// layer through VM.
package devices

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"rainforest/vmm/bus"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/interrupt"
	"rainforest/vmm/layout"
	"rainforest/vmm/pci"
)

// Errors callers branch on.
var (
	// ErrSlot means a slot that does not exist, is taken, or is empty.
	ErrSlot = errors.New("devices: bad slot")
	// ErrClosed means the chassis was closed.
	ErrClosed = errors.New("devices: chassis closed")
)

// VM is what the chassis needs of the VM layer (vmm/vm implements it).
type VM interface {
	interrupt.Chip
	MapMemory(gpa uint64, mem []byte, readOnly bool) (uint32, error)
	MoveMemory(slot uint32, gpa uint64) error
	UnmapMemory(slot uint32) error
	AddIOEventFD(fd int, addr uint64, n uint32, pio bool, match *uint64) error
	RemoveIOEventFD(fd int, addr uint64, n uint32, pio bool, match *uint64) error
}

// Device is something that plugs into a PCI slot.
type Device interface {
	// Plug claims what the device needs through r and returns its PCI
	// function. It runs before the function is on the bus: ioeventfds
	// and memory registered at BAR offsets take effect once the BARs are
	// placed. On error the chassis releases whatever r handed out.
	Plug(r *Resources) (pci.Device, error)
}

// BARMover is implemented by a device that keeps BAR-dependent state of
// its own, beyond what it registered through Resources (which the chassis
// moves itself). BARMoved runs on the vCPU thread that moved the BAR, after
// the chassis re-registered everything at the new address (to is 0 when
// the BAR was unmapped). An error leaves the BAR unmapped.
type BARMover interface {
	BARMoved(index int, from, to uint64) error
}

// Config is what a Chassis is built on.
type Config struct {
	VM     VM
	Memory *guestmem.Memory
	MMIO   *bus.Bus
	PIO    *bus.Bus
	Lines  *interrupt.Lines
	// INTxGSI maps a slot's interrupt pin to its IOAPIC input, as the
	// ACPI _PRT describes it.
	INTxGSI func(slot, pin int) (uint32, bool)
	// OnReset is called for byte writes to the reset control register,
	// which shares the configuration ports.
	OnReset func(value byte)
	Logger  *slog.Logger
}

// Chassis is PCI bus 0 with the devices in its slots. It is safe for
// concurrent use.
type Chassis struct {
	cfg   Config
	log   *slog.Logger
	bus   *pci.Bus
	mu    sync.Mutex // serializes Add, Remove and Close
	order []int      // occupied slots in plugging order
	slots [pci.NumSlots]atomic.Pointer[Resources]
	shut  bool
}

// New puts PCI bus 0 on the configuration ports of cfg.PIO.
func New(cfg Config) (*Chassis, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Chassis{cfg: cfg, log: cfg.Logger, bus: pci.NewBus()}
	if cfg.OnReset != nil {
		c.bus.SetResetHandler(cfg.OnReset)
	}
	c.bus.SetBARMoveHandler(c.moveBAR)
	c.bus.SetINTxRouter(c.routeINTx)
	if err := cfg.PIO.Insert(c.bus, pci.ConfigPortBase, pci.ConfigPortSize); err != nil {
		return nil, err
	}
	return c, nil
}

// Bus returns the PCI bus (for config-space access in tests and tools).
func (c *Chassis) Bus() *pci.Bus { return c.bus }

func (c *Chassis) routeINTx(slot, pin int) (pci.INTx, uint8, error) {
	gsi, ok := c.intxGSI(slot, pin)
	if !ok {
		return nil, 0, fmt.Errorf("no INTx route for slot %d pin %d", slot, pin)
	}
	return c.cfg.Lines.Line(gsi), uint8(gsi), nil
}

func (c *Chassis) intxGSI(slot, pin int) (uint32, bool) {
	if c.cfg.INTxGSI == nil {
		return 0, false
	}
	return c.cfg.INTxGSI(slot, pin)
}

// Add plugs dev into slot (1..31, or -1 for the first free one) and returns
// the slot. Everything dev claimed is released again when Add fails.
func (c *Chassis) Add(dev Device, slot int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shut {
		return 0, ErrClosed
	}
	if slot == -1 {
		for s := 1; s < pci.NumSlots; s++ {
			if c.slots[s].Load() == nil && c.bus.Device(s) == nil {
				slot = s
				break
			}
		}
		if slot == -1 {
			return 0, fmt.Errorf("%w: all %d slots are taken", ErrSlot, pci.NumSlots-1)
		}
	}
	if slot < 1 || slot >= pci.NumSlots {
		return 0, fmt.Errorf("%w: %d (1..%d)", ErrSlot, slot, pci.NumSlots-1)
	}
	if c.slots[slot].Load() != nil || c.bus.Device(slot) != nil {
		return 0, fmt.Errorf("%w: slot %d is taken", ErrSlot, slot)
	}
	r, err := newResources(c, slot, dev)
	if err != nil {
		return 0, err
	}
	fn, err := dev.Plug(r)
	if err != nil {
		return 0, errors.Join(err, r.release())
	}
	r.fn = fn
	c.slots[slot].Store(r)
	if _, _, err := c.bus.Add(slot, fn, r.place); err != nil {
		c.slots[slot].Store(nil)
		return 0, errors.Join(err, r.release())
	}
	c.order = append(c.order, slot)
	return slot, nil
}

// Remove unplugs the device at slot: the function leaves the bus, its BAR
// mappings go, its goroutines stop, and its clean-up runs in reverse. It
// returns the device.
func (c *Chassis) Remove(slot int) (Device, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeLocked(slot)
}

func (c *Chassis) removeLocked(slot int) (Device, error) {
	if slot < 1 || slot >= pci.NumSlots || c.slots[slot].Load() == nil {
		return nil, fmt.Errorf("%w: slot %d is empty", ErrSlot, slot)
	}
	r := c.slots[slot].Load()
	_, _, berr := c.bus.Remove(slot)
	c.slots[slot].Store(nil)
	for i, s := range c.order {
		if s == slot {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
	return r.dev, errors.Join(berr, r.release())
}

// Device returns the device at slot, or nil.
func (c *Chassis) Device(slot int) Device {
	if slot < 1 || slot >= pci.NumSlots {
		return nil
	}
	if r := c.slots[slot].Load(); r != nil {
		return r.dev
	}
	return nil
}

// Slots returns the occupied slots in plugging order.
func (c *Chassis) Slots() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.order...)
}

// Close removes every device, last plugged first. Later Adds fail.
func (c *Chassis) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shut = true
	var errs []error
	for len(c.order) > 0 {
		_, err := c.removeLocked(c.order[len(c.order)-1])
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// moveBAR is the bus's BARMoveHandler.
func (c *Chassis) moveBAR(slot int, dev pci.Device, bar pci.BAR, old uint64) error {
	r := c.slots[slot].Load()
	if r == nil || r.fn != dev {
		return fmt.Errorf("%w: BAR move for slot %d, which the chassis does not hold", ErrSlot, slot)
	}
	return r.moveBAR(bar, old)
}

// Resources is what one plugged device holds; the chassis gives it back
// when the device is removed. Its methods are safe for concurrent use.
type Resources struct {
	c    *Chassis
	slot int
	dev  Device
	fn   pci.Device
	line *interrupt.Line // pin A's input, for devices that drive it from eventfds

	mu       sync.Mutex
	released bool
	bars     map[int]placedBAR // by BAR index, once placed
	bells    []*bell
	maps     []*memMap
	undo     []func() error
	stop     *eventfd.EventFD
	wg       sync.WaitGroup
}

type placedBAR struct {
	addr, size uint64
	onBus      bool // BARRegion inserted on the MMIO bus at addr
}

// bell is an ioeventfd at an offset inside a BAR.
type bell struct {
	bar    int
	offset uint64
	n      uint32
	match  *uint64
	ev     *eventfd.EventFD
	at     uint64 // registered at this address; 0: not registered
}

// memMap is a memory slot at an offset inside a BAR.
type memMap struct {
	bar      int
	offset   uint64
	mem      []byte
	readOnly bool
	slot     uint32
	have     bool   // slot allocated
	at       uint64 // mapped at this address; 0: not mapped
}

func newResources(c *Chassis, slot int, dev Device) (*Resources, error) {
	stop, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	r := &Resources{c: c, slot: slot, dev: dev, stop: stop, bars: map[int]placedBAR{}}
	if gsi, ok := c.intxGSI(slot, pci.PinA); ok {
		r.line = c.cfg.Lines.Line(gsi)
	}
	return r, nil
}

// Slot returns the device's slot.
func (r *Resources) Slot() int { return r.slot }

// Memory returns guest RAM (for DMA: virtqueues, buffers).
func (r *Resources) Memory() *guestmem.Memory { return r.c.cfg.Memory }

// Logger returns the chassis's logger, naming the slot.
func (r *Resources) Logger() *slog.Logger { return r.c.log.With("slot", r.slot) }

// INTx returns the IOAPIC input of the slot's INTA# pin, for a device that
// drives it from eventfds (interrupt.MSIXGroup.SetINTx); nil when the
// slot has no INTx route. Devices whose model drives its INTx line get it
// through pci.INTxDevice instead.
func (r *Resources) INTx() *interrupt.Line { return r.line }

// MSIX makes the device's MSI-X vector group (see interrupt.NewMSIXGroup);
// it is closed when the device is removed.
func (r *Resources) MSIX(n int, incoming []*eventfd.EventFD) (*interrupt.MSIXGroup, error) {
	g, err := interrupt.NewMSIXGroup(r.c.cfg.VM, n, incoming)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		g.Close()
		return nil, ErrClosed
	}
	r.undo = append(r.undo, g.Close)
	return g, nil
}

// IOEventFD makes guest writes of n bytes (of exactly *match, when set) at
// offset inside BAR bar signal ev in the kernel, wherever the guest puts the
// BAR. The caller keeps ev open until the device is removed (close it in
// OnRemove: the ioeventfd is gone by then).
func (r *Resources) IOEventFD(bar int, offset uint64, n uint32, match *uint64, ev *eventfd.EventFD) error {
	b := &bell{bar: bar, offset: offset, n: n, ev: ev}
	if match != nil {
		v := *match
		b.match = &v
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return ErrClosed
	}
	if pb, ok := r.bars[bar]; ok && pb.addr != 0 {
		if offset+uint64(n) > pb.size {
			return fmt.Errorf("devices: ioeventfd at %#x+%d outside BAR %d (%#x bytes)", offset, n, bar, pb.size)
		}
		if err := r.c.cfg.VM.AddIOEventFD(ev.Fd(), pb.addr+offset, n, false, b.match); err != nil {
			return err
		}
		b.at = pb.addr + offset
	}
	r.bells = append(r.bells, b)
	return nil
}

// MapBAR maps host memory mem into the guest at offset inside BAR bar
// (read-only: guest writes trap to the device), wherever the guest puts the
// BAR. The caller keeps mem mapped until the device is removed.
func (r *Resources) MapBAR(bar int, offset uint64, mem []byte, readOnly bool) error {
	if len(mem) == 0 || len(mem)%4096 != 0 || offset%4096 != 0 {
		return fmt.Errorf("devices: memory at BAR %d offset %#x: %d bytes: must be non-empty and page-aligned", bar, offset, len(mem))
	}
	m := &memMap{bar: bar, offset: offset, mem: mem, readOnly: readOnly}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return ErrClosed
	}
	if pb, ok := r.bars[bar]; ok && pb.addr != 0 {
		if err := r.mapLocked(m, pb); err != nil {
			return err
		}
	}
	r.maps = append(r.maps, m)
	return nil
}

// Go runs f on a goroutine the device owns: f must return once stop is
// signalled, which happens when the device is removed (Remove waits).
func (r *Resources) Go(f func(stop *eventfd.EventFD)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f(r.stop)
	}()
}

// OnRemove registers clean-up run when the device is removed, after its
// mappings are gone and its goroutines stopped; the last registered runs
// first.
func (r *Resources) OnRemove(f func() error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.undo = append(r.undo, f)
}

// Wait waits on evs until one is signalled or the device is removed
// (eventfd.ErrStopped); for the device's goroutines.
func (r *Resources) Wait(evs []*eventfd.EventFD) ([]int, error) {
	return eventfd.Wait(r.stop, evs)
}

// place maps the BARs where the bus put them (bus.Add's place callback,
// run with config accesses held off).
func (r *Resources) place(_ int, bars []pci.BAR) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range bars {
		if err := r.mapBARLocked(b.Index, b.Addr, b.Size); err != nil {
			for _, p := range bars {
				r.unmapBARLocked(p.Index)
			}
			return fmt.Errorf("slot %d BAR %d at %#x: %w", r.slot, b.Index, b.Addr, err)
		}
	}
	return nil
}

// moveBAR follows a guest BAR move: everything at the old address goes,
// then comes back at the new one. On failure nothing is left mapped.
func (r *Resources) moveBAR(b pci.BAR, old uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return ErrClosed
	}
	r.unmapBARLocked(b.Index)
	var err error
	if b.Addr != 0 {
		err = r.mapBARLocked(b.Index, b.Addr, b.Size)
	}
	if err == nil {
		if m, ok := r.dev.(BARMover); ok {
			err = m.BARMoved(b.Index, old, b.Addr)
		}
	}
	if err != nil {
		r.unmapBARLocked(b.Index)
		r.c.log.Warn("guest moved a BAR where it cannot be mapped; it stays unmapped until moved again",
			"slot", r.slot, "bar", b.Index, "addr", fmt.Sprintf("%#x", b.Addr), "err", err)
	}
	return err
}

// mapBARLocked puts BAR index on the MMIO bus at addr with its ioeventfds
// and memory; on error what it did is undone by the caller's unmap.
func (r *Resources) mapBARLocked(index int, addr, size uint64) error {
	pb := placedBAR{addr: addr, size: size}
	if err := r.c.cfg.MMIO.Insert(pci.BARRegion(r.fn, index), addr, size); err != nil {
		r.bars[index] = pb
		return err
	}
	pb.onBus = true
	r.bars[index] = pb
	for _, b := range r.bells {
		if b.bar != index {
			continue
		}
		if b.offset+uint64(b.n) > size {
			return fmt.Errorf("ioeventfd at %#x+%d outside the BAR (%#x bytes)", b.offset, b.n, size)
		}
		if err := r.c.cfg.VM.AddIOEventFD(b.ev.Fd(), addr+b.offset, b.n, false, b.match); err != nil {
			return err
		}
		b.at = addr + b.offset
	}
	for _, m := range r.maps {
		if m.bar != index {
			continue
		}
		if err := r.mapLocked(m, pb); err != nil {
			return err
		}
	}
	return nil
}

func (r *Resources) mapLocked(m *memMap, pb placedBAR) error {
	if m.offset+uint64(len(m.mem)) > pb.size {
		return fmt.Errorf("memory at %#x+%#x outside the BAR (%#x bytes)", m.offset, len(m.mem), pb.size)
	}
	gpa := pb.addr + m.offset
	for _, reg := range r.c.cfg.Memory.Regions() {
		if gpa < reg.End() && reg.GPA < gpa+uint64(len(m.mem)) {
			return fmt.Errorf("memory at %#x+%#x overlaps guest RAM at %#x", gpa, len(m.mem), reg.GPA)
		}
	}
	if gpa+uint64(len(m.mem)) > layout.PCIMMIOEnd && gpa < layout.HighRAMStart {
		return fmt.Errorf("memory at %#x+%#x overlaps the platform's fixed ranges", gpa, len(m.mem))
	}
	if !m.have {
		slot, err := r.c.cfg.VM.MapMemory(gpa, m.mem, m.readOnly)
		if err != nil {
			return err
		}
		m.slot, m.have, m.at = slot, true, gpa
		return nil
	}
	if err := r.c.cfg.VM.MoveMemory(m.slot, gpa); err != nil {
		return err
	}
	m.at = gpa
	return nil
}

// unmapBARLocked takes BAR index off the MMIO bus with its ioeventfds and
// memory (memory slots stay allocated for a later move).
func (r *Resources) unmapBARLocked(index int) {
	pb, ok := r.bars[index]
	if !ok {
		return
	}
	if pb.onBus {
		r.c.cfg.MMIO.Remove(pb.addr)
	}
	delete(r.bars, index)
	for _, b := range r.bells {
		if b.bar != index || b.at == 0 {
			continue
		}
		if err := r.c.cfg.VM.RemoveIOEventFD(b.ev.Fd(), b.at, b.n, false, b.match); err != nil {
			r.c.log.Warn("remove ioeventfd", "slot", r.slot, "bar", index, "err", err)
		}
		b.at = 0
	}
	for _, m := range r.maps {
		if m.bar != index || m.at == 0 {
			continue
		}
		if err := r.c.cfg.VM.MoveMemory(m.slot, 0); err != nil {
			r.c.log.Warn("unmap BAR memory", "slot", r.slot, "bar", index, "err", err)
		}
		m.at = 0
	}
}

// release gives everything back: BAR mappings, then goroutines, then the
// memory slots, then vector groups and clean-up in reverse order of
// claiming.
func (r *Resources) release() error {
	r.mu.Lock()
	if r.released {
		r.mu.Unlock()
		return nil
	}
	r.released = true
	for index := range r.bars {
		r.unmapBARLocked(index)
	}
	r.mu.Unlock()
	_ = r.stop.Signal()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, m := range r.maps {
		if m.have {
			errs = append(errs, r.c.cfg.VM.UnmapMemory(m.slot))
			m.have = false
		}
	}
	for i := len(r.undo) - 1; i >= 0; i-- {
		errs = append(errs, r.undo[i]())
	}
	errs = append(errs, r.stop.Close())
	r.maps, r.bells, r.undo = nil, nil, nil
	return errors.Join(errs...)
}

// BARAddr returns where BAR index is mapped now, 0 when it is not.
func (r *Resources) BARAddr(index int) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bars[index].addr
}
