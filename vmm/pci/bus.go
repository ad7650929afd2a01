package pci

import (
	"fmt"
	"sync"

	"rainforest/vmm/bus"
	"rainforest/vmm/layout"
)

// Guest physical window for BARs (vmm/layout) and the config mechanism #1
// ports.
const (
	MMIOWindowBase = layout.PCIMMIOStart
	MMIOWindowEnd  = layout.PCIMMIOEnd // exclusive

	// ConfigPortBase is where Bus is inserted on the port I/O bus;
	// ConfigPortSize covers 0xCF8..0xCFF (address at 0xCF8, data at
	// 0xCFC..0xCFF, and the reset control byte at 0xCF9).
	ConfigPortBase = layout.PCIConfigPort
	ConfigPortSize = layout.PCIConfigLen

	// NumSlots is the number of device slots on bus 0.
	NumSlots = 32

	// HostBridgeVendorID and HostBridgeDeviceID identify the host bridge
	// at slot 0.
	HostBridgeVendorID = 0x8086
	HostBridgeDeviceID = 0x0d57
)

// Device is a PCI function (function 0 of a slot on bus 0). Offsets passed
// to the config methods are 0..255; widths 1, 2 or 4. Implementations must
// tolerate any offset and width.
type Device interface {
	ReadConfig(offset int, data []byte)
	WriteConfig(offset int, data []byte)
	// BARs returns the memory BARs with their currently programmed
	// addresses.
	BARs() []BAR
	// ReadBAR and WriteBAR access offset bytes into BAR bar.
	ReadBAR(bar int, offset uint64, data []byte)
	WriteBAR(bar int, offset uint64, data []byte)
}

// BARMoveHandler is told that the guest moved BAR bar.Index of dev (at
// slot) from oldAddr (0: it was not mapped) to bar.Addr while memory decode
// is on. It runs on the vCPU thread doing the config write, with config
// accesses serialized; it may call Bus.Device and Bus.BARs but not
// Bus.Read/Write/Add/Remove. When it fails, the BAR counts as unmapped
// (Bus.BARs reports address 0 for it) until the guest moves it again: the
// handler must then have left nothing mapped at either address.
type BARMoveHandler func(slot int, dev Device, bar BAR, oldAddr uint64) error

// Bus is PCI bus 0 behind configuration mechanism #1. It is a bus.Device
// for ports ConfigPortBase..+ConfigPortSize. Slot 0 holds a host bridge.
// Only function 0 of each slot exists; other functions, other buses and
// empty slots read as all ones.
type Bus struct {
	mu      sync.Mutex // serializes config transactions; guards addr and handlers
	addr    uint32
	onMove  BARMoveHandler
	onReset func(value byte)
	intx    INTxRouter
	// window is where Add places BARs: the first free naturally aligned
	// range, free meaning not overlapping any BAR mapped now.
	windowBase, windowEnd uint64

	devMu  sync.RWMutex // guards devs and mapped
	devs   [NumSlots]Device
	mapped [NumSlots][NumBARs]uint64
}

var _ bus.Device = (*Bus)(nil)

// NewBus returns a root bus with a host bridge at slot 0 that places BARs
// in the standard MMIO window.
func NewBus() *Bus { return NewBusWindow(MMIOWindowBase, MMIOWindowEnd) }

// NewBusWindow returns a root bus placing BARs in [base, end).
func NewBusWindow(base, end uint64) *Bus {
	b := &Bus{windowBase: base, windowEnd: end}
	b.devs[0] = NewHostBridge()
	return b
}

// SetBARMoveHandler installs the handler told about guest BAR moves.
func (b *Bus) SetBARMoveHandler(h BARMoveHandler) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onMove = h
}

// SetResetHandler installs the handler for byte writes to port 0xCF9 (the
// reset control register; 0x06 requests a reset).
func (b *Bus) SetResetHandler(h func(value byte)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onReset = h
}

// SetINTxRouter installs the router that Add asks for the legacy interrupt
// line of every INTxDevice whose Interrupt Pin register is non-zero.
// Without one such devices stay unconnected (their INTx never reaches the
// guest).
func (b *Bus) SetINTxRouter(r INTxRouter) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.intx = r
}

// Add places dev at slot (1..31, or -1 for the first free slot), assigns
// each of its BARs the first free naturally aligned range of the window,
// programs the BARs and turns memory decode on, as firmware would. An
// INTxDevice with an interrupt pin is connected to the line the INTx router
// gives and its Interrupt Line register set to the router's IRQ. It returns
// the slot and the BARs; the VMM puts BARRegion(dev, bar.Index) on its MMIO
// bus at each bar.Addr for bar.Size bytes. When place is given it does that
// before the function becomes visible, with config accesses held off (so
// no guest BAR move can interleave); if it fails, Add fails and leaves the
// slot empty.
func (b *Bus) Add(slot int, dev Device, place func(slot int, bars []BAR) error) (int, []BAR, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.devMu.Lock()
	defer b.devMu.Unlock()
	if slot == -1 {
		for s := 1; s < NumSlots; s++ {
			if b.devs[s] == nil {
				slot = s
				break
			}
		}
		if slot == -1 {
			return 0, nil, fmt.Errorf("%w: no free slot", ErrNoSpace)
		}
	}
	if slot < 1 || slot >= NumSlots {
		return 0, nil, fmt.Errorf("%w: %d", ErrBadSlot, slot)
	}
	if b.devs[slot] != nil {
		return 0, nil, fmt.Errorf("%w: %d", ErrSlotInUse, slot)
	}
	bars := dev.BARs()
	var placed []BAR
	for i := range bars {
		addr, err := b.placeLocked(bars[i].Size, !bars[i].Is64, placed)
		if err != nil {
			return 0, nil, fmt.Errorf("pci: slot %d BAR %d: %w", slot, bars[i].Index, err)
		}
		bars[i].Addr = addr
		placed = append(placed, bars[i])
	}
	for _, bar := range bars {
		var lo [4]byte
		putLE32(lo[:], uint32(bar.Addr))
		dev.WriteConfig(RegBAR0+4*bar.Index, lo[:])
		if bar.Is64 {
			var hi [4]byte
			putLE32(hi[:], uint32(bar.Addr>>32))
			dev.WriteConfig(RegBAR0+4*bar.Index+4, hi[:])
		}
	}
	if err := b.connectINTxLocked(slot, dev); err != nil {
		return 0, nil, err
	}
	var cmd [2]byte
	dev.ReadConfig(RegCommand, cmd[:])
	cmd[0] |= CommandMemory
	dev.WriteConfig(RegCommand, cmd[:])
	cur := dev.BARs()
	if place != nil {
		if err := place(slot, cur); err != nil {
			if idev, ok := dev.(INTxDevice); ok && b.intx != nil {
				idev.ConnectINTx(nil)
			}
			return 0, nil, err
		}
	}
	b.devs[slot] = dev
	b.mapped[slot] = [NumBARs]uint64{}
	for _, bar := range cur {
		if bar.Index >= 0 && bar.Index < NumBARs {
			b.mapped[slot][bar.Index] = bar.Addr
		}
	}
	return slot, cur, nil
}

// placeLocked returns the lowest naturally aligned address in the window
// for size bytes that overlaps no mapped BAR nor one of also (below 4 GiB
// when low).
func (b *Bus) placeLocked(size uint64, low bool, also []BAR) (uint64, error) {
	if size == 0 || size&(size-1) != 0 {
		return 0, fmt.Errorf("%w: size %#x not a power of two", ErrBadBAR, size)
	}
	var used [][2]uint64
	for s := range b.devs {
		if b.devs[s] == nil {
			continue
		}
		for _, bar := range b.devs[s].BARs() {
			if bar.Index >= 0 && bar.Index < NumBARs && b.mapped[s][bar.Index] != 0 {
				a := b.mapped[s][bar.Index]
				used = append(used, [2]uint64{a, a + bar.Size})
			}
		}
	}
	for _, bar := range also {
		used = append(used, [2]uint64{bar.Addr, bar.Addr + bar.Size})
	}
	addr := (b.windowBase + size - 1) &^ (size - 1)
	for addr >= b.windowBase && addr+size > addr && addr+size <= b.windowEnd {
		if low && addr+size > 1<<32 {
			break
		}
		clash := false
		for _, u := range used {
			if addr < u[1] && u[0] < addr+size {
				// Skip past the range in the way, realigned.
				addr = (u[1] + size - 1) &^ (size - 1)
				clash = true
				break
			}
		}
		if !clash {
			return addr, nil
		}
	}
	return 0, fmt.Errorf("%w: %#x bytes in MMIO window", ErrNoSpace, size)
}

// Remove takes the function at slot off the bus (hot-unplug) and returns
// it with its BARs as they were mapped (address 0: not mapped). Its INTx
// line is disconnected; nothing else of the function is touched.
func (b *Bus) Remove(slot int) (Device, []BAR, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.devMu.Lock()
	defer b.devMu.Unlock()
	if slot < 1 || slot >= NumSlots {
		return nil, nil, fmt.Errorf("%w: %d", ErrBadSlot, slot)
	}
	dev := b.devs[slot]
	if dev == nil {
		return nil, nil, fmt.Errorf("%w: slot %d is empty", ErrBadSlot, slot)
	}
	bars := dev.BARs()
	for i := range bars {
		if bars[i].Index >= 0 && bars[i].Index < NumBARs {
			bars[i].Addr = b.mapped[slot][bars[i].Index]
		}
	}
	if idev, ok := dev.(INTxDevice); ok {
		idev.ConnectINTx(nil)
	}
	b.devs[slot] = nil
	b.mapped[slot] = [NumBARs]uint64{}
	return dev, bars, nil
}

// connectINTxLocked routes dev's interrupt pin, if it has one: the
// Interrupt Line register gets the router's IRQ, as firmware would write
// it, and an INTxDevice is connected to the line (other functions drive
// their INTx some other way).
func (b *Bus) connectINTxLocked(slot int, dev Device) error {
	if b.intx == nil {
		return nil
	}
	var p [1]byte
	dev.ReadConfig(RegInterruptPin, p[:])
	pin := int(p[0])
	if pin == PinNone {
		return nil
	}
	if pin > PinD {
		return fmt.Errorf("pci: slot %d: %w: %d", slot, ErrBadPin, pin)
	}
	line, irq, err := b.intx(slot, pin)
	if err != nil {
		return fmt.Errorf("pci: slot %d INTx: %w", slot, err)
	}
	if idev, ok := dev.(INTxDevice); ok {
		idev.ConnectINTx(line)
	}
	dev.WriteConfig(RegInterruptLine, []byte{irq})
	return nil
}

// Device returns the function at slot, or nil.
func (b *Bus) Device(slot int) Device {
	b.devMu.RLock()
	defer b.devMu.RUnlock()
	if slot < 0 || slot >= NumSlots {
		return nil
	}
	return b.devs[slot]
}

// BARs returns the BARs of the function at slot as the VMM has them
// mapped (the addresses last reported by Add or the move handler).
func (b *Bus) BARs(slot int) []BAR {
	b.devMu.RLock()
	defer b.devMu.RUnlock()
	if slot < 0 || slot >= NumSlots || b.devs[slot] == nil {
		return nil
	}
	bars := b.devs[slot].BARs()
	for i := range bars {
		if bars[i].Index >= 0 && bars[i].Index < NumBARs {
			bars[i].Addr = b.mapped[slot][bars[i].Index]
		}
	}
	return bars
}

func putLE32(p []byte, v uint32) {
	p[0], p[1], p[2], p[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func le32(p []byte) uint32 {
	return uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
}

// target decodes the address register; ok is false when it selects
// nothing that exists.
func (b *Bus) targetLocked() (Device, int, int, bool) {
	a := b.addr
	if a&(1<<31) == 0 {
		return nil, 0, 0, false
	}
	busNo := (a >> 16) & 0xFF
	slot := int((a >> 11) & 0x1F)
	fn := (a >> 8) & 0x7
	reg := int(a & 0xFC)
	ext := (a >> 24) & 0xF // AMD extended register bits: no extended space here
	dev := b.Device(slot)
	if ext != 0 || busNo != 0 || fn != 0 || dev == nil {
		return nil, 0, 0, false
	}
	return dev, slot, reg, true
}

// Read handles a port read at offset from ConfigPortBase.
func (b *Bus) Read(offset uint64, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range data {
		data[i] = 0xFF
	}
	switch {
	case offset == 1 && len(data) == 1: // reset control register
		data[0] = 0
	case offset < 4:
		var a [4]byte
		putLE32(a[:], b.addr)
		for i := range data {
			if o := offset + uint64(i); o < 4 {
				data[i] = a[o]
			}
		}
	case offset < 8:
		k := int(offset - 4)
		if k+len(data) > 4 {
			return
		}
		dev, _, reg, ok := b.targetLocked()
		if !ok {
			return
		}
		dev.ReadConfig(reg+k, data)
	}
}

// Write handles a port write at offset from ConfigPortBase.
func (b *Bus) Write(offset uint64, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case offset == 0 && len(data) == 4:
		b.addr = le32(data) & 0x8FFF_FFFC
	case offset == 1 && len(data) == 1:
		if b.onReset != nil {
			b.onReset(data[0])
		}
	case offset >= 4 && offset < 8:
		k := int(offset - 4)
		if k+len(data) > 4 {
			return
		}
		dev, slot, reg, ok := b.targetLocked()
		if !ok {
			return
		}
		dev.WriteConfig(reg+k, data)
		b.checkMovesLocked(slot, dev)
	}
}

// checkMovesLocked reports BARs whose programmed address differs from the
// mapped one while memory decode is on. A BAR whose move failed counts as
// unmapped.
func (b *Bus) checkMovesLocked(slot int, dev Device) {
	var cmd [2]byte
	dev.ReadConfig(RegCommand, cmd[:])
	if cmd[0]&CommandMemory == 0 {
		return
	}
	for _, bar := range dev.BARs() {
		if bar.Index < 0 || bar.Index >= NumBARs {
			continue
		}
		b.devMu.RLock()
		old := b.mapped[slot][bar.Index]
		b.devMu.RUnlock()
		if bar.Addr == old {
			continue
		}
		now := bar.Addr
		if b.onMove != nil {
			if err := b.onMove(slot, dev, bar, old); err != nil {
				now = 0
			}
		}
		b.devMu.Lock()
		b.mapped[slot][bar.Index] = now
		b.devMu.Unlock()
	}
}

// HostBridge is the host bridge function at slot 0: identity only.
type HostBridge struct {
	cfg *ConfigSpace
}

// NewHostBridge returns a host bridge (class 0x060000).
func NewHostBridge() *HostBridge {
	return &HostBridge{cfg: NewConfigSpace(Header{
		VendorID: HostBridgeVendorID,
		DeviceID: HostBridgeDeviceID,
		Class:    0x060000,
	})}
}

// ReadConfig implements Device.
func (h *HostBridge) ReadConfig(offset int, data []byte) { h.cfg.Read(offset, data) }

// WriteConfig implements Device.
func (h *HostBridge) WriteConfig(offset int, data []byte) { h.cfg.Write(offset, data) }

// BARs implements Device: the host bridge has none.
func (h *HostBridge) BARs() []BAR { return nil }

// ReadBAR implements Device.
func (h *HostBridge) ReadBAR(bar int, offset uint64, data []byte) {
	for i := range data {
		data[i] = 0xFF
	}
}

// WriteBAR implements Device.
func (h *HostBridge) WriteBAR(bar int, offset uint64, data []byte) {}

// BARRegion adapts BAR bar of dev to a bus.Device for the VMM's MMIO bus.
func BARRegion(dev Device, bar int) bus.Device {
	return barRegion{dev: dev, bar: bar}
}

type barRegion struct {
	dev Device
	bar int
}

func (r barRegion) Read(offset uint64, data []byte)  { r.dev.ReadBAR(r.bar, offset, data) }
func (r barRegion) Write(offset uint64, data []byte) { r.dev.WriteBAR(r.bar, offset, data) }
