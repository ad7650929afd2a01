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
// The registers, the vendor capability, the memory BAR's layout (abi.Layout)
// and the state table are the ABI in rainforest/vmm/shmem/abi, which the
// guest side shares.
//
// Interrupts: MSI-X when the guest enables it, otherwise INTA#, both
// driven by the VMM from the vectors' eventfds (the model raises nothing
// itself). In INTx mode the line is level-triggered: asserted while a
// vector was signalled and the guest has not acknowledged it. The guest
// acknowledges by setting the Command register's INTx-disable bit (as
// Linux's uio_pci_generic does) and re-enables after draining its queues;
// doorbells that arrive meanwhile are held and raise INTx on re-enable.
// INT_CONTROL bit 0 gates INTx delivery (MSI-X is gated by the vector's
// mask alone). INT_STATUS (an extension of ivshmem v2) reads 1 while the
// INTx condition is pending, like the PCI Status register's Interrupt
// Status bit.
package shmem

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"

	"rainforest/vmm/pci"
	"rainforest/vmm/shmem/abi"
)

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
	layout abi.Layout
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
	Protocol   uint8  // class code low byte (abi.ProtocolFICM when 0)
	Name       string // up to abi.NameSize bytes, no NUL
	RWReadOnly bool   // the read-write section is mapped read-only for this peer
}

// New builds peer id's device for a FICM group (see NewWithIdentity).
func New(id int, layout abi.Layout, vectors int, stateTable []byte, router pci.MSIRouter, bell Doorbell) (*Device, error) {
	return NewWithIdentity(id, layout, vectors, stateTable, router, bell, Identity{})
}

// NewWithIdentity builds peer id's device. stateTable is the shared state
// table memory (at least layout.StateTableSize() bytes); the model writes
// this peer's entry in it. vectors is the number of MSI-X vectors.
func NewWithIdentity(id int, layout abi.Layout, vectors int, stateTable []byte, router pci.MSIRouter, bell Doorbell, ident Identity) (*Device, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	if id < 0 || id >= layout.Peers {
		return nil, fmt.Errorf("%w: peer id %d of %d peers", abi.ErrLayout, id, layout.Peers)
	}
	if uint64(len(stateTable)) < layout.StateTableSize() {
		return nil, fmt.Errorf("%w: state table of %d bytes, need %d", abi.ErrLayout, len(stateTable), layout.StateTableSize())
	}
	if vectors < 1 || vectors > abi.MaxVectors {
		return nil, fmt.Errorf("%w: %d MSI-X vectors (1..%d)", abi.ErrLayout, vectors, abi.MaxVectors)
	}
	if len(ident.Name) > abi.NameSize || strings.IndexByte(ident.Name, 0) >= 0 {
		return nil, fmt.Errorf("%w: region name %q (at most %d bytes, no NUL)", abi.ErrLayout, ident.Name, abi.NameSize)
	}
	if ident.Protocol == 0 {
		ident.Protocol = abi.ProtocolFICM
	}
	cfg := pci.NewConfigSpace(pci.Header{VendorID: abi.VendorID, DeviceID: abi.DeviceID, Class: abi.ClassOther | uint32(ident.Protocol),
		SubsystemVendorID: abi.VendorID, SubsystemID: abi.DeviceID, Revision: abi.Revision})
	if err := cfg.AddMemBAR(abi.RegBAR, abi.RegBARSize, false, false); err != nil {
		return nil, err
	}
	if err := cfg.AddMemBAR(abi.MSIXBAR, abi.MSIXBARSize, false, false); err != nil {
		return nil, err
	}
	if err := cfg.AddMemBAR(abi.MemBAR, layout.BARSize(), true, true); err != nil {
		return nil, err
	}
	// Vendor capability: id, next, length, reserved, then the fields at
	// the Cap* offsets (see the package documentation); body starts after the ID and next-pointer bytes.
	body := make([]byte, abi.CapLength-2)
	body[abi.CapLengthOffset-2] = abi.CapLength
	binary.LittleEndian.PutUint32(body[abi.CapStateTableSize-2:], uint32(layout.StateTableSize()))
	binary.LittleEndian.PutUint64(body[abi.CapRWSize-2:], layout.RWSize)
	binary.LittleEndian.PutUint64(body[abi.CapOutputSize-2:], layout.OutputSize)
	if ident.RWReadOnly {
		binary.LittleEndian.PutUint32(body[abi.CapFlags-2:], abi.CapFlagRWReadOnly)
	}
	copy(body[abi.CapName-2:], ident.Name)
	if _, err := cfg.AddVendorCapability(body, make([]byte, len(body))); err != nil {
		return nil, err
	}
	msix, err := pci.NewMSIX(cfg, vectors, abi.MSIXBAR, 0, abi.MSIXPBAOffset, router)
	if err != nil {
		return nil, err
	}
	if err := cfg.SetInterruptPin(pci.PinA); err != nil {
		return nil, err
	}
	return &Device{id: id, layout: layout, cfg: cfg, msix: msix, bell: bell, state: stateTable}, nil
}

// Layout returns the memory layout.
func (d *Device) Layout() abi.Layout { return d.layout }

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
	case abi.RegBAR:
		if len(data) != 4 || offset%4 != 0 {
			return
		}
		var v uint32
		d.mu.Lock()
		switch offset {
		case abi.RegID:
			v = uint32(d.id)
		case abi.RegMaxPeers:
			v = uint32(d.layout.Peers)
		case abi.RegIntControl:
			if d.intEnabled {
				v = abi.IntControlEnabled
			}
		case abi.RegState:
			v = d.myState
		}
		d.mu.Unlock()
		if offset == abi.RegIntStatus && d.intxPending() {
			v = 1
		}
		binary.LittleEndian.PutUint32(data, v)
	case abi.MSIXBAR:
		if offset < abi.MSIXPBAOffset {
			d.msix.ReadTable(offset, data)
		} else {
			d.msix.ReadPBA(offset-abi.MSIXPBAOffset, data)
		}
	case abi.MemBAR:
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
	case abi.RegBAR:
		if len(data) != 4 || offset%4 != 0 {
			return
		}
		v := binary.LittleEndian.Uint32(data)
		switch offset {
		case abi.RegIntControl:
			d.mu.Lock()
			d.intEnabled = v&abi.IntControlEnabled != 0
			d.mu.Unlock()
			d.bell.InterruptModeChanged()
		case abi.RegDoorbell:
			peer, vector := int(v>>abi.DoorbellPeerShift), int(v&abi.DoorbellVectorMask)
			if err := d.bell.Ring(peer, vector); err != nil {
				d.mu.Lock()
				d.dropped++
				d.mu.Unlock()
			}
		case abi.RegState:
			d.mu.Lock()
			changed := d.myState != v
			d.myState = v
			binary.LittleEndian.PutUint32(d.state[abi.StateEntryOffset(d.id):], v)
			d.mu.Unlock()
			if changed {
				d.bell.StateChanged(v)
			}
		}
	case abi.MSIXBAR:
		if offset < abi.MSIXPBAOffset {
			_ = d.msix.WriteTable(offset, data)
		} else {
			d.msix.WritePBA(offset-abi.MSIXPBAOffset, data)
		}
	case abi.MemBAR:
		// A write to a read-only section (another peer's output, the state
		// table) traps here: drop it.
		d.mu.Lock()
		d.roWrites++
		d.mu.Unlock()
	}
}

var _ pci.Device = (*Device)(nil)
