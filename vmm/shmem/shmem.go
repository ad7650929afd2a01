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
// Interrupts: MSI-X when the guest enables it, otherwise INTA# (level,
// pending while INT_STATUS is non-zero). Signal raises a vector either way.
package shmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

	"rainforest/vmm/pci"
	"rainforest/vmm/shmem/abi"
)

// Doorbell delivers doorbells that reach the model and state changes.
type Doorbell interface {
	// Ring signals vector of peer; it fails (and the doorbell is dropped)
	// for a peer or vector that does not exist.
	Ring(peer, vector int) error
	// StateChanged tells that this peer's state register changed (the VMM
	// notifies the other peers).
	StateChanged(state uint32)
}

// ModeNotifier is optionally implemented by a Doorbell that wants to know
// when the way the guest takes interrupts may have changed: a write to
// INT_CONTROL or to config space (MSI-X enable, INTx disable).
type ModeNotifier interface {
	InterruptModeChanged()
}

func (d *Device) modeChanged() {
	if n, ok := d.bell.(ModeNotifier); ok {
		n.InterruptModeChanged()
	}
}

// Device is one peer's shared-memory PCI function.
type Device struct {
	id     int
	layout abi.Layout
	cfg    *pci.ConfigSpace
	msix   *pci.MSIX
	intx   *pci.INTxSource
	bell   Doorbell
	state  []byte // the state table (host memory shared by all peers)

	mu         sync.Mutex
	intEnabled bool
	myState    uint32
	intStatus  uint32 // INT_STATUS: vectors signalled through INTx
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
	return &Device{id: id, layout: layout, cfg: cfg, msix: msix, intx: pci.NewINTxSource(cfg, msix), bell: bell, state: stateTable}, nil
}

// Layout returns the memory layout.
func (d *Device) Layout() abi.Layout { return d.layout }

// ID returns this peer's id.
func (d *Device) ID() int { return d.id }

// Signal raises vector in this guest (the VMM's fallback path when a peer's
// doorbell reached userspace); it respects INT_CONTROL. With MSI-X enabled
// the vector's message is sent (or latched in the PBA while masked);
// otherwise the vector's INT_STATUS bit is set and INTA# asserted.
func (d *Device) Signal(vector int) error {
	if vector < 0 || vector >= d.msix.Vectors() {
		return fmt.Errorf("%w: %d of %d", pci.ErrBadVector, vector, d.msix.Vectors())
	}
	d.mu.Lock()
	on := d.intEnabled
	d.mu.Unlock()
	if !on {
		return nil
	}
	err := d.msix.Signal(vector)
	if !errors.Is(err, pci.ErrMSIXDisabled) {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.intStatus |= 1 << min(vector, abi.IntStatusLastBit)
	d.intx.SetPending(true)
	return nil
}

// ConnectINTx implements pci.INTxDevice.
func (d *Device) ConnectINTx(line pci.INTx) { d.intx.Connect(line) }

// InterruptsEnabled reports INT_CONTROL bit 0.
func (d *Device) InterruptsEnabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.intEnabled
}

// INTxActive reports whether the function signals through INTx now (MSI-X
// disabled).
func (d *Device) INTxActive() bool { return d.intx.Active() }

// INTxAsserted reports whether INTA# is driven high.
func (d *Device) INTxAsserted() bool { return d.intx.Asserted() }

// Stats returns the dropped doorbells and trapped read-only writes.
func (d *Device) Stats() (dropped, roWrites uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped, d.roWrites
}

// ReadConfig implements pci.Device.
func (d *Device) ReadConfig(offset int, data []byte) { d.cfg.Read(offset, data) }

// WriteConfig implements pci.Device.
func (d *Device) WriteConfig(offset int, data []byte) {
	d.cfg.Write(offset, data)
	_ = d.msix.ControlWritten() // a router error leaves a vector unrouted; nothing to tell the guest
	d.intx.Update()
	d.modeChanged()
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
		case abi.RegIntStatus:
			v = d.intStatus
			d.intStatus = 0
			d.intx.SetPending(false)
		}
		d.mu.Unlock()
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
			d.modeChanged()
		case abi.RegDoorbell:
			peer, vector := int(v>>abi.DoorbellPeerShift), int(v&abi.DoorbellVectorMask)
			if err := d.bell.Ring(peer, vector); err != nil {
				d.mu.Lock()
				d.dropped++
				d.mu.Unlock()
			}
		case abi.RegState:
			d.mu.Lock()
			d.myState = v
			binary.LittleEndian.PutUint32(d.state[abi.StateEntryOffset(d.id):], v)
			d.mu.Unlock()
			d.bell.StateChanged(v)
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

var _ pci.INTxDevice = (*Device)(nil)
