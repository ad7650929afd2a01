// Package shmem is the inter-subOS shared-memory PCI device, in the spirit of
// ivshmem v2 (Jailhouse): a register BAR (identity, peer count, interrupt
// control, doorbell, state), an MSI-X BAR, and a memory BAR holding a
// read-only state table, an optional shared read-write section, and one
// output section per peer, writable only by its owner.
//
// The model holds no memory and knows nothing of KVM: the VMM maps the
// memory BAR's sections into the guest (this peer's output section
// read-write, the state table and the other peers' sections read-only) and
// wires the doorbell register to the targets' interrupts (ioeventfd to
// irqfd), so a doorbell normally never reaches this model. Writes that do
// reach it (no ioeventfd matched: an unknown peer or vector) go to the
// Doorbell interface, which drops what it cannot deliver.
//
// Register BAR (BAR 0, 4 KiB), all 32-bit:
//
//	0x00 ID          read-only: this peer's id
//	0x04 MAX_PEERS   read-only: number of peers
//	0x08 INT_CONTROL bit 0: interrupts enabled
//	0x0C DOORBELL    write-only: bits 31:16 target peer, 15:0 vector
//	0x10 STATE       this peer's state; mirrored into the state table
//	0x14 INT_STATUS  read-only: bit 0 set while the function's INTx
//	                 condition is pending (as the PCI Status register's
//	                 Interrupt Status bit); an extension of ivshmem v2
//
// Interrupts: MSI-X when the guest enables it, otherwise INTA#, both
// driven by the VMM from the vectors' eventfds (the model raises nothing
// itself). In INTx mode the line is level-triggered: asserted while a
// vector was signalled and the guest has not acknowledged it. The guest
// acknowledges by setting the Command register's INTx-disable bit (as
// Linux's uio_pci_generic does) and re-enables after draining its queues;
// doorbells that arrive meanwhile are held and raise INTx on re-enable.
// INT_CONTROL bit 0 gates INTx delivery (MSI-X is gated by the vector's
// mask alone).
//
// Memory BAR (BAR 2) layout, each part page-aligned (see Layout):
// state table (one uint32 per peer), read-write section, output sections of
// peers 0..N-1. The sizes are also in a vendor-specific capability: u32
// state table size at +4, u64 read-write section size at +8, u64 output
// section size at +16 from the capability's offset, then u32 flags at +24
// (bit 0: the read-write section is read-only for this peer) and the
// region's name at +28 (32 bytes, NUL-padded).
package shmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

	"rainforest/vmm/pci"
)

// PCI identity: the ivshmem v2 IDs, so that drivers written for that layout
// recognise the device, with the protocol in the class code's low byte.
const (
	VendorID = 0x110A
	DeviceID = 0x4106
	// ClassUndefined is class "other", subclass 0; the low byte names the
	// protocol spoken over the memory (ProtocolFICM here).
	ClassOther   = 0xFF0000
	ProtocolFICM = 0x01
	// ProtocolSegment is a shared segment: only the read-write section is
	// used, by the programs the supervisor granted it to.
	ProtocolSegment = 0x02
)

// BARs.
const (
	RegBAR  = 0
	MSIXBAR = 1
	MemBAR  = 2
	regSize = 0x1000
)

// Register offsets in the register BAR.
const (
	RegID         = 0x00
	RegMaxPeers   = 0x04
	RegIntControl = 0x08
	RegDoorbell   = 0x0C
	RegState      = 0x10
	RegIntStatus  = 0x14
)

// MaxPeers bounds the number of peers (doorbell target field is 16 bits).
const MaxPeers = 1 << 12

// Vendor capability layout (offsets from the capability's start).
const (
	CapStateTableSize = 4  // u32
	CapRWSize         = 8  // u64
	CapOutputSize     = 16 // u64
	CapFlags          = 24 // u32, CapFlag*
	CapName           = 28 // [NameSize]byte, NUL-padded
	CapLength         = CapName + NameSize
	// CapFlagRWReadOnly: this peer may only read the read-write section.
	CapFlagRWReadOnly = 1 << 0
	// NameSize bounds a region's name.
	NameSize = 32
)

const pageSize = 4096

// ErrLayout means a Layout cannot be built.
var ErrLayout = errors.New("bad shared-memory layout")

// Layout sizes the memory BAR.
type Layout struct {
	Peers      int
	RWSize     uint64 // shared read-write section, may be 0
	OutputSize uint64 // per peer
}

func alignUp(v uint64) uint64 { return (v + pageSize - 1) &^ (pageSize - 1) }

// Validate checks the layout.
func (l Layout) Validate() error {
	switch {
	case l.Peers < 1 || l.Peers > MaxPeers:
		return fmt.Errorf("%w: %d peers (1..%d)", ErrLayout, l.Peers, MaxPeers)
	case l.OutputSize == 0 || l.OutputSize%pageSize != 0 || l.RWSize%pageSize != 0:
		return fmt.Errorf("%w: sections must be page multiples (output %d, rw %d)", ErrLayout, l.OutputSize, l.RWSize)
	case l.OutputSize > 1<<40 || l.RWSize > 1<<40:
		return fmt.Errorf("%w: sections larger than 1 TiB", ErrLayout)
	}
	return nil
}

// StateTableSize is the size of the state table part.
func (l Layout) StateTableSize() uint64 { return alignUp(uint64(l.Peers) * 4) }

// RWOffset is the offset of the read-write section in the memory BAR.
func (l Layout) RWOffset() uint64 { return l.StateTableSize() }

// OutputOffset is the offset of peer's output section.
func (l Layout) OutputOffset(peer int) uint64 {
	return l.RWOffset() + l.RWSize + uint64(peer)*l.OutputSize
}

// Size is the bytes used in the memory BAR.
func (l Layout) Size() uint64 { return l.OutputOffset(l.Peers) }

// BARSize is the memory BAR's size: Size rounded up to a power of two.
func (l Layout) BARSize() uint64 {
	s := uint64(pageSize)
	for s < l.Size() {
		s <<= 1
	}
	return s
}

// Doorbell is the VMM's side of the device: doorbells that reach the model,
// state changes, and the interrupt state the model reports to the guest.
type Doorbell interface {
	// Ring signals vector of peer; it fails (and the doorbell is dropped)
	// for a peer or vector that does not exist.
	Ring(peer, vector int) error
	// StateChanged tells that this peer's state register changed to a new
	// value (the VMM notifies the other peers).
	StateChanged(state uint32)
	// InterruptModeChanged tells that the way the guest takes interrupts
	// may have changed: a write to INT_CONTROL or to config space (MSI-X
	// enable, INTx disable).
	InterruptModeChanged()
	// INTxPending reports whether the function's INTx condition is
	// pending (the guest sees it in the PCI Status register and
	// INT_STATUS while MSI-X is off).
	INTxPending() bool
}

// Device is one peer's shared-memory PCI function.
type Device struct {
	id     int
	layout Layout
	cfg    *pci.ConfigSpace
	msix   *pci.MSIX
	bell   Doorbell
	state  []byte // the state table (host memory shared by all peers)

	mu         sync.Mutex
	intEnabled bool
	myState    uint32
	dropped    uint64 // doorbells that could not be delivered
	roWrites   uint64 // guest writes to read-only memory that trapped
}

// Identity is what a function tells the guest about its region besides the
// layout.
type Identity struct {
	Protocol   uint8  // class code low byte (ProtocolFICM when 0)
	Name       string // up to NameSize bytes, no NUL
	RWReadOnly bool   // the read-write section is mapped read-only for this peer
}

// New builds peer id's device for a FICM group (see NewWithIdentity).
func New(id int, layout Layout, vectors int, stateTable []byte, router pci.MSIRouter, bell Doorbell) (*Device, error) {
	return NewWithIdentity(id, layout, vectors, stateTable, router, bell, Identity{})
}

// NewWithIdentity builds peer id's device. stateTable is the shared state
// table memory (at least layout.StateTableSize() bytes); the model writes
// this peer's entry in it. vectors is the number of MSI-X vectors.
func NewWithIdentity(id int, layout Layout, vectors int, stateTable []byte, router pci.MSIRouter, bell Doorbell, ident Identity) (*Device, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	if id < 0 || id >= layout.Peers {
		return nil, fmt.Errorf("%w: peer id %d of %d peers", ErrLayout, id, layout.Peers)
	}
	if uint64(len(stateTable)) < layout.StateTableSize() {
		return nil, fmt.Errorf("%w: state table of %d bytes, need %d", ErrLayout, len(stateTable), layout.StateTableSize())
	}
	if vectors < 1 || vectors > 64 {
		return nil, fmt.Errorf("%w: %d MSI-X vectors (1..64)", ErrLayout, vectors)
	}
	if len(ident.Name) > NameSize || strings.IndexByte(ident.Name, 0) >= 0 {
		return nil, fmt.Errorf("%w: region name %q (at most %d bytes, no NUL)", ErrLayout, ident.Name, NameSize)
	}
	if ident.Protocol == 0 {
		ident.Protocol = ProtocolFICM
	}
	cfg := pci.NewConfigSpace(pci.Header{VendorID: VendorID, DeviceID: DeviceID, Class: ClassOther | uint32(ident.Protocol),
		SubsystemVendorID: VendorID, SubsystemID: DeviceID, Revision: 2})
	if err := cfg.AddMemBAR(RegBAR, regSize, false, false); err != nil {
		return nil, err
	}
	if err := cfg.AddMemBAR(MSIXBAR, regSize, false, false); err != nil {
		return nil, err
	}
	if err := cfg.AddMemBAR(MemBAR, layout.BARSize(), true, true); err != nil {
		return nil, err
	}
	// Vendor capability: id, next, length, reserved, then the fields at
	// the Cap* offsets (see the package documentation); body starts after the ID and next-pointer bytes.
	body := make([]byte, CapLength-2)
	body[0] = CapLength
	binary.LittleEndian.PutUint32(body[CapStateTableSize-2:], uint32(layout.StateTableSize()))
	binary.LittleEndian.PutUint64(body[CapRWSize-2:], layout.RWSize)
	binary.LittleEndian.PutUint64(body[CapOutputSize-2:], layout.OutputSize)
	if ident.RWReadOnly {
		binary.LittleEndian.PutUint32(body[CapFlags-2:], CapFlagRWReadOnly)
	}
	copy(body[CapName-2:], ident.Name)
	if _, err := cfg.AddVendorCapability(body, make([]byte, len(body))); err != nil {
		return nil, err
	}
	msix, err := pci.NewMSIX(cfg, vectors, MSIXBAR, 0, regSize/2, router)
	if err != nil {
		return nil, err
	}
	if err := cfg.SetInterruptPin(pci.PinA); err != nil {
		return nil, err
	}
	return &Device{id: id, layout: layout, cfg: cfg, msix: msix, bell: bell, state: stateTable}, nil
}

// Layout returns the memory layout.
func (d *Device) Layout() Layout { return d.layout }

// ID returns this peer's id.
func (d *Device) ID() int { return d.id }

// Vectors returns the number of MSI-X vectors.
func (d *Device) Vectors() int { return d.msix.Vectors() }

// InterruptsEnabled reports INT_CONTROL bit 0.
func (d *Device) InterruptsEnabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.intEnabled
}

// MSIXEnabled reports whether the guest enabled MSI-X.
func (d *Device) MSIXEnabled() bool { return d.msix.Enabled() }

// INTxDisabled reports the Command register's INTx-disable bit.
func (d *Device) INTxDisabled() bool { return d.cfg.INTxDisabled() }

// intxPending is the INTx condition the guest sees while MSI-X is off.
func (d *Device) intxPending() bool { return !d.msix.Enabled() && d.bell.INTxPending() }

// Stats returns the dropped doorbells and trapped read-only writes.
func (d *Device) Stats() (dropped, roWrites uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped, d.roWrites
}

// ReadConfig implements pci.Device. The Status register's Interrupt
// Status bit is the VMM's view of the INTx condition at the time of the
// read.
func (d *Device) ReadConfig(offset int, data []byte) {
	if offset < pci.RegStatus+2 && offset+len(data) > pci.RegStatus {
		d.cfg.SetInterruptStatus(d.intxPending())
	}
	d.cfg.Read(offset, data)
}

// WriteConfig implements pci.Device.
func (d *Device) WriteConfig(offset int, data []byte) {
	d.cfg.Write(offset, data)
	_ = d.msix.ControlWritten() // a router error leaves a vector unrouted; nothing to tell the guest
	d.bell.InterruptModeChanged()
}

// BARs implements pci.Device.
func (d *Device) BARs() []pci.BAR { return d.cfg.BARs() }

// ReadBAR implements pci.Device.
func (d *Device) ReadBAR(bar int, offset uint64, data []byte) {
	clear(data)
	switch bar {
	case RegBAR:
		if len(data) != 4 || offset%4 != 0 {
			return
		}
		var v uint32
		d.mu.Lock()
		switch offset {
		case RegID:
			v = uint32(d.id)
		case RegMaxPeers:
			v = uint32(d.layout.Peers)
		case RegIntControl:
			if d.intEnabled {
				v = 1
			}
		case RegState:
			v = d.myState
		}
		d.mu.Unlock()
		if offset == RegIntStatus && d.intxPending() {
			v = 1
		}
		binary.LittleEndian.PutUint32(data, v)
	case MSIXBAR:
		if offset < regSize/2 {
			d.msix.ReadTable(offset, data)
		} else {
			d.msix.ReadPBA(offset-regSize/2, data)
		}
	case MemBAR:
		// Mapped as memory by the VMM; a read that traps is outside the
		// used part of the BAR.
		for i := range data {
			data[i] = 0xFF
		}
	}
}

// WriteBAR implements pci.Device.
func (d *Device) WriteBAR(bar int, offset uint64, data []byte) {
	switch bar {
	case RegBAR:
		if len(data) != 4 || offset%4 != 0 {
			return
		}
		v := binary.LittleEndian.Uint32(data)
		switch offset {
		case RegIntControl:
			d.mu.Lock()
			d.intEnabled = v&1 != 0
			d.mu.Unlock()
			d.bell.InterruptModeChanged()
		case RegDoorbell:
			peer, vector := int(v>>16), int(v&0xFFFF)
			if err := d.bell.Ring(peer, vector); err != nil {
				d.mu.Lock()
				d.dropped++
				d.mu.Unlock()
			}
		case RegState:
			d.mu.Lock()
			changed := d.myState != v
			d.myState = v
			binary.LittleEndian.PutUint32(d.state[4*d.id:], v)
			d.mu.Unlock()
			if changed {
				d.bell.StateChanged(v)
			}
		}
	case MSIXBAR:
		if offset < regSize/2 {
			_ = d.msix.WriteTable(offset, data)
		} else {
			d.msix.WritePBA(offset-regSize/2, data)
		}
	case MemBAR:
		// A write to a read-only section (another peer's output, the state
		// table) traps here: drop it.
		d.mu.Lock()
		d.roWrites++
		d.mu.Unlock()
	}
}

var _ pci.Device = (*Device)(nil)
