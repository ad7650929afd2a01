// Package pci models a PCI root bus for the VMM: configuration mechanism #1
// (ports 0xCF8/0xCFC) with a host bridge at slot 0, a 256-byte type-0
// configuration space helper with per-byte write masks, memory BARs and a
// capability list, a BAR address allocator over the MMIO window, and MSI-X
// (capability, table and pending-bit array) delivering interrupts through an
// MSIRouter that the VMM implements, and legacy INTx: an INTxSource keeps a
// function's INTA# line, Interrupt Pin register, INTx-disable bit and
// Interrupt Status bit consistent, and Bus.Add connects INTxDevices to the
// line an INTxRouter (the VMM) names for their slot.
//
// Nothing here knows about KVM: the VMM learns where BARs are (Bus.Add,
// Bus.BARs), puts BARRegion adapters on its MMIO bus, and is told through a
// BARMoveHandler when the guest moves a BAR.
package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// Standard configuration space offsets and bits.
const (
	ConfigSize = 256

	RegVendorID      = 0x00
	RegDeviceID      = 0x02
	RegCommand       = 0x04
	RegStatus        = 0x06
	RegRevision      = 0x08
	RegClass         = 0x09 // 3 bytes: prog-if, subclass, class
	RegHeaderType    = 0x0E
	RegBAR0          = 0x10
	RegSubsysVendor  = 0x2C
	RegSubsysID      = 0x2E
	RegCapPointer    = 0x34
	RegInterruptLine = 0x3C
	RegInterruptPin  = 0x3D

	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandBusMaster   = 1 << 2
	CommandINTxDisable = 1 << 10

	StatusCapList = 1 << 4

	CapIDVendor = 0x09
	CapIDMSIX   = 0x11

	// NumBARs is the number of BAR registers in a type-0 header.
	NumBARs = 6
	// firstCapOffset is where the capability list starts.
	firstCapOffset = 0x40
)

// Sentinel errors.
var (
	ErrBadBAR       = errors.New("pci: invalid BAR")
	ErrNoSpace      = errors.New("pci: no space left")
	ErrSlotInUse    = errors.New("pci: slot in use")
	ErrBadSlot      = errors.New("pci: invalid slot")
	ErrBadVector    = errors.New("pci: MSI-X vector out of range")
	ErrMSIXDisabled = errors.New("pci: MSI-X disabled")
)

// Header holds the identity of a function, written into its config space.
type Header struct {
	VendorID, DeviceID uint16
	Revision           uint8
	Class              uint32 // 24 bits: class<<16 | subclass<<8 | prog-if
	SubsystemVendorID  uint16
	SubsystemID        uint16
}

// BAR describes one memory BAR. Index is the (lower) BAR register number; a
// 64-bit BAR occupies Index and Index+1. Addr is the address currently
// programmed in the register(s).
type BAR struct {
	Index        int
	Addr         uint64
	Size         uint64
	Is64         bool
	Prefetchable bool
}

type barSlot struct {
	used         bool
	upper        bool // register is the upper half of a 64-bit BAR
	size         uint64
	is64         bool
	prefetchable bool
}

// ConfigSpace is a 256-byte type-0 configuration space with per-byte write
// masks (bits set are guest-writable). It is safe for concurrent use.
// Registers not described by a mask are read-only; out-of-range accesses
// read as 0xFF and are ignored on write.
type ConfigSpace struct {
	mu      sync.Mutex
	data    [ConfigSize]byte
	wmask   [ConfigSize]byte
	bars    [NumBARs]barSlot
	lastCap int // offset of the last capability, 0 when none
	nextCap int // first free byte for a new capability
}

// NewConfigSpace returns a config space with the given identity; command
// bits memory, bus master and INTx-disable are writable.
func NewConfigSpace(h Header) *ConfigSpace {
	c := &ConfigSpace{nextCap: firstCapOffset}
	binary.LittleEndian.PutUint16(c.data[RegVendorID:], h.VendorID)
	binary.LittleEndian.PutUint16(c.data[RegDeviceID:], h.DeviceID)
	c.data[RegRevision] = h.Revision
	c.data[RegClass] = byte(h.Class)
	c.data[RegClass+1] = byte(h.Class >> 8)
	c.data[RegClass+2] = byte(h.Class >> 16)
	binary.LittleEndian.PutUint16(c.data[RegSubsysVendor:], h.SubsystemVendorID)
	binary.LittleEndian.PutUint16(c.data[RegSubsysID:], h.SubsystemID)
	binary.LittleEndian.PutUint16(c.wmask[RegCommand:], CommandMemory|CommandBusMaster|CommandINTxDisable)
	c.wmask[RegInterruptLine] = 0xFF
	return c
}

// Read fills data from offset; any width and alignment is accepted.
func (c *ConfigSpace) Read(offset int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset < 0 || offset > ConfigSize || len(data) > ConfigSize-offset {
		for i := range data {
			data[i] = 0xFF
		}
		return
	}
	copy(data, c.data[offset:])
}

// Write applies data at offset through the write masks.
func (c *ConfigSpace) Write(offset int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset < 0 || offset > ConfigSize || len(data) > ConfigSize-offset {
		return
	}
	for i, v := range data {
		o := offset + i
		m := c.wmask[o]
		c.data[o] = c.data[o]&^m | v&m
	}
}

// SetWritable sets the write mask of the bytes at offset.
func (c *ConfigSpace) SetWritable(offset int, mask []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset < 0 || offset > ConfigSize || len(mask) > ConfigSize-offset {
		return fmt.Errorf("pci: mask %d bytes at %#x outside config space", len(mask), offset)
	}
	copy(c.wmask[offset:], mask)
	return nil
}

// Uint16 returns the raw 16-bit register at offset (0 when out of range).
func (c *ConfigSpace) Uint16(offset int) uint16 {
	var b [2]byte
	c.Read(offset, b[:])
	if offset < 0 || offset > ConfigSize-2 {
		return 0
	}
	return binary.LittleEndian.Uint16(b[:])
}

// Uint32 returns the raw 32-bit register at offset (0 when out of range).
func (c *ConfigSpace) Uint32(offset int) uint32 {
	var b [4]byte
	c.Read(offset, b[:])
	if offset < 0 || offset > ConfigSize-4 {
		return 0
	}
	return binary.LittleEndian.Uint32(b[:])
}

// PutUint16 sets the 16-bit register at offset, bypassing the write mask
// (for the device model's own use).
func (c *ConfigSpace) PutUint16(offset int, v uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset >= 0 && offset <= ConfigSize-2 {
		binary.LittleEndian.PutUint16(c.data[offset:], v)
	}
}

// PutUint32 sets the 32-bit register at offset, bypassing the write mask.
func (c *ConfigSpace) PutUint32(offset int, v uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset >= 0 && offset <= ConfigSize-4 {
		binary.LittleEndian.PutUint32(c.data[offset:], v)
	}
}

// Command returns the command register.
func (c *ConfigSpace) Command() uint16 { return c.Uint16(RegCommand) }

// MemoryEnabled reports whether memory decode is on.
func (c *ConfigSpace) MemoryEnabled() bool { return c.Command()&CommandMemory != 0 }

// AddMemBAR declares a memory BAR at register index of the given size (a
// power of two, at least 16 bytes). A 64-bit BAR also uses index+1. The
// guest sizes it the usual way: writing all ones reads back ^(size-1) plus
// the flag bits.
func (c *ConfigSpace) AddMemBAR(index int, size uint64, is64, prefetchable bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if index < 0 || index >= NumBARs || (is64 && index+1 >= NumBARs) {
		return fmt.Errorf("%w: index %d", ErrBadBAR, index)
	}
	if size < 16 || size&(size-1) != 0 || (!is64 && size > 1<<31) {
		return fmt.Errorf("%w: size %#x", ErrBadBAR, size)
	}
	if c.bars[index].used || (is64 && c.bars[index+1].used) {
		return fmt.Errorf("%w: BAR %d already declared", ErrBadBAR, index)
	}
	c.bars[index] = barSlot{used: true, size: size, is64: is64, prefetchable: prefetchable}
	var flags uint32
	if is64 {
		flags |= 0x4
	}
	if prefetchable {
		flags |= 0x8
	}
	mask := ^(size - 1)
	off := RegBAR0 + 4*index
	binary.LittleEndian.PutUint32(c.data[off:], flags)
	binary.LittleEndian.PutUint32(c.wmask[off:], uint32(mask)&^0xF)
	if is64 {
		c.bars[index+1] = barSlot{used: true, upper: true}
		binary.LittleEndian.PutUint32(c.data[off+4:], 0)
		binary.LittleEndian.PutUint32(c.wmask[off+4:], uint32(mask>>32))
	}
	return nil
}

func (c *ConfigSpace) barAddrLocked(index int) uint64 {
	off := RegBAR0 + 4*index
	addr := uint64(binary.LittleEndian.Uint32(c.data[off:]) &^ 0xF)
	if c.bars[index].is64 {
		addr |= uint64(binary.LittleEndian.Uint32(c.data[off+4:])) << 32
	}
	return addr
}

// BARs returns the declared BARs with their current addresses, by index.
func (c *ConfigSpace) BARs() []BAR {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []BAR
	for i, b := range c.bars {
		if !b.used || b.upper {
			continue
		}
		out = append(out, BAR{Index: i, Addr: c.barAddrLocked(i), Size: b.size, Is64: b.is64, Prefetchable: b.prefetchable})
	}
	return out
}

// SetBARAddr programs the address of a declared BAR (as firmware would).
func (c *ConfigSpace) SetBARAddr(index int, addr uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if index < 0 || index >= NumBARs || !c.bars[index].used || c.bars[index].upper {
		return fmt.Errorf("%w: index %d", ErrBadBAR, index)
	}
	b := c.bars[index]
	if addr&(b.size-1) != 0 || (!b.is64 && addr>>32 != 0) {
		return fmt.Errorf("%w: address %#x for size %#x", ErrBadBAR, addr, b.size)
	}
	off := RegBAR0 + 4*index
	flags := binary.LittleEndian.Uint32(c.data[off:]) & 0xF
	binary.LittleEndian.PutUint32(c.data[off:], uint32(addr)&^0xF|flags)
	if b.is64 {
		binary.LittleEndian.PutUint32(c.data[off+4:], uint32(addr>>32))
	}
	return nil
}

// AddCapability appends a capability with the given ID; body is everything
// after the ID and next-pointer bytes and wmask (nil or len(body)) marks its
// guest-writable bits. It returns the capability's offset.
func (c *ConfigSpace) AddCapability(id byte, body, wmask []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if wmask != nil && len(wmask) != len(body) {
		return 0, fmt.Errorf("pci: capability mask length %d, body %d", len(wmask), len(body))
	}
	// Capabilities are dword aligned.
	off := (c.nextCap + 3) &^ 3
	if off+2+len(body) > ConfigSize {
		return 0, fmt.Errorf("%w: capability of %d bytes", ErrNoSpace, 2+len(body))
	}
	c.data[off] = id
	c.data[off+1] = 0
	copy(c.data[off+2:], body)
	if wmask != nil {
		copy(c.wmask[off+2:], wmask)
	}
	if c.lastCap == 0 {
		c.data[RegCapPointer] = byte(off)
		st := binary.LittleEndian.Uint16(c.data[RegStatus:]) | StatusCapList
		binary.LittleEndian.PutUint16(c.data[RegStatus:], st)
	} else {
		c.data[c.lastCap+1] = byte(off)
	}
	c.lastCap = off
	c.nextCap = off + 2 + len(body)
	return off, nil
}

// AddVendorCapability appends a vendor-specific capability (ID 0x09). body
// starts with the capability length byte as the PCI spec lays it out.
func (c *ConfigSpace) AddVendorCapability(body, wmask []byte) (int, error) {
	return c.AddCapability(CapIDVendor, body, wmask)
}
