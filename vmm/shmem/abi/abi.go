// Package abi is the binary interface of RainForest's inter-subOS
// shared-memory PCI device, a function in the ivshmem v2 layout (as in
// Jailhouse): its PCI identity, BARs, registers, vendor capability, memory
// layout, state table and interrupts. It holds definitions and layout
// arithmetic only and imports nothing of the VMM, so that the device model
// (vmm/shmem), the supervisor (rfm/region) and the guest side (rfcom/device)
// all use this one copy, and a guest program links nothing of the host.
// rfcom/include/rfcom.h names the same values for C; rfcom/header_test.go
// checks them against this package.
//
// # PCI identity
//
// Vendor VendorID, device DeviceID (the ivshmem v2 IDs), revision Revision,
// class code ClassOther | protocol: the class code's low byte names the
// protocol spoken over the memory (ProtocolFICM, ProtocolSegment).
//
// # Register BAR
//
// BAR RegBAR, RegBARSize bytes, 32-bit registers accessed with single
// 32-bit loads and stores:
//
//	0x00 ID          read-only: this peer's id
//	0x04 MAX_PEERS   read-only: number of peers
//	0x08 INT_CONTROL bit 0 (IntControlEnabled): interrupts enabled
//	0x0C DOORBELL    write-only: target peer << 16 | vector (Doorbell)
//	0x10 STATE       this peer's state, mirrored into the state table
//	0x14 INT_STATUS  read-to-clear: bit v set when vector v (bit 31 for
//	                 v >= 31) was signalled through INTx; reading returns
//	                 and clears the bits and lowers INTx
//
// Interrupts are MSI-X (table and PBA in BAR MSIXBAR) when the guest enables
// it, otherwise INTA#, pending while INT_STATUS is non-zero.
//
// # Vendor capability
//
// A vendor-specific PCI capability (capability ID 0x09) in config space
// gives the memory layout and the region's identity, at offsets from the
// capability's start: u8 length at CapLengthOffset (at least CapLength),
// u32 state table size at CapStateTableSize, u64 read-write section size at
// CapRWSize, u64 output section size at CapOutputSize, u32 flags at CapFlags
// (CapFlagRWReadOnly) and the region's name, NameSize bytes NUL-padded, at
// CapName. Multi-byte fields are little-endian.
//
// # Memory BAR
//
// BAR MemBAR (64-bit, prefetchable, Layout.BARSize bytes) holds, each part
// a multiple of PageSize and back to back from offset 0 (see Layout): the
// state table, the read-write section (possibly empty; a segment's whole
// content) and one output section per peer, writable only by its owner
// (the VMM maps the others, and the state table, read-only).
//
// # State table and the state-change interrupt
//
// The state table holds one little-endian u32 per peer, peer p's at
// StateEntryOffset(p). An entry of 0 means the peer is absent (reset, or
// not connected); other values belong to the protocol (the FICM group uses
// bit 0, StateAlive). Guests only read it.
//
// As in the ivshmem v2 specification, writing the STATE register with a
// value different from the previous one updates the writer's entry and
// raises vector StateChangeVector (0) on every other peer (that enabled
// interrupts); a peer that is reset or disconnected gets its entry zeroed
// with the same interrupt. In RainForest the writer's VMM signals the
// other peers' vector-0 doorbells when its guest writes STATE, and the
// supervisor, which writes the entries of the FICM group itself (it is
// peer 0 there), signals them when it changes its own entry or zeroes the
// entry of a subOS that left. A guest therefore learns of every change of
// the state table through an interrupt and never needs to poll it; a
// protocol whose doorbells also use vector 0 (FICM does) wakes up for both
// in the same sleep.
package abi

import (
	"errors"
	"fmt"
)

// PCI identity: the ivshmem v2 IDs, so that drivers written for that layout
// recognise the device, with the protocol in the class code's low byte.
const (
	VendorID = 0x110A
	DeviceID = 0x4106
	// Revision is the PCI revision ID (ivshmem v2).
	Revision = 2
	// ClassOther is class "other", subclass 0; the class code's low byte
	// names the protocol spoken over the memory.
	ClassOther = 0xFF0000
	// ProtocolFICM is the machine-wide FICM group ("ficm").
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
	// RegBARSize is the size of the register BAR.
	RegBARSize = 0x1000
	// MSIXBARSize is the size of the MSI-X BAR: the table at 0, the
	// pending-bit array at MSIXPBAOffset.
	MSIXBARSize   = 0x1000
	MSIXPBAOffset = MSIXBARSize / 2
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

// Register fields.
const (
	// IntControlEnabled is INT_CONTROL's interrupt enable bit.
	IntControlEnabled = 1 << 0
	// DoorbellPeerShift is the position of the target peer in DOORBELL.
	DoorbellPeerShift = 16
	// DoorbellVectorMask selects the vector in DOORBELL.
	DoorbellVectorMask = 0xFFFF
	// IntStatusLastBit is the INT_STATUS bit that stands for every vector
	// from 31 up.
	IntStatusLastBit = 31
)

// Limits.
const (
	// MaxPeers bounds the number of peers (MAX_PEERS).
	MaxPeers = 1 << 12
	// MaxVector is the largest vector a DOORBELL write can name.
	MaxVector = DoorbellVectorMask
	// MaxVectors is the largest number of MSI-X vectors of a function.
	MaxVectors = 64
	// NameSize bounds a region's name.
	NameSize = 32
	// PageSize is the granule of the memory BAR's parts.
	PageSize = 4096
)

// Vendor capability layout (offsets from the capability's start).
const (
	CapLengthOffset   = 2  // u8, the capability's length (>= CapLength)
	CapStateTableSize = 4  // u32
	CapRWSize         = 8  // u64
	CapOutputSize     = 16 // u64
	CapFlags          = 24 // u32, CapFlag*
	CapName           = 28 // [NameSize]byte, NUL-padded
	// CapLength is the length of the capability.
	CapLength = CapName + NameSize
	// CapFlagRWReadOnly: this peer may only read the read-write section.
	CapFlagRWReadOnly = 1 << 0
)

// State table.
const (
	// StateEntrySize is the size of one peer's entry.
	StateEntrySize = 4
	// StateAbsent is the entry of a peer that is reset or not connected.
	StateAbsent = 0
	// StateAlive is the FICM group's STATE bit of a peer whose endpoint is
	// open.
	StateAlive = 1 << 0
	// StateChangeVector is the vector raised on the other peers when a
	// peer's state table entry changes.
	StateChangeVector = 0
)

// Doorbell returns the DOORBELL value that rings vector of peer.
func Doorbell(peer, vector int) uint32 {
	return uint32(peer)<<DoorbellPeerShift | uint32(vector)&DoorbellVectorMask
}

// StateEntryOffset is the offset of peer's entry in the state table.
func StateEntryOffset(peer int) int { return peer * StateEntrySize }

// ErrLayout means a Layout is not valid.
var ErrLayout = errors.New("bad shared-memory layout")

// Layout sizes the memory BAR.
type Layout struct {
	Peers      int
	RWSize     uint64 // shared read-write section, may be 0
	OutputSize uint64 // per peer
}

// maxSection bounds each section, so that the layout's arithmetic cannot
// overflow.
const maxSection = 1 << 40

func alignUp(v uint64) uint64 { return (v + PageSize - 1) &^ (PageSize - 1) }

// Validate checks the layout. Errors wrap ErrLayout.
func (l Layout) Validate() error {
	switch {
	case l.Peers < 1 || l.Peers > MaxPeers:
		return fmt.Errorf("%w: %d peers (1..%d)", ErrLayout, l.Peers, MaxPeers)
	case l.OutputSize == 0 || l.OutputSize%PageSize != 0 || l.RWSize%PageSize != 0:
		return fmt.Errorf("%w: sections must be page multiples (output %d, rw %d)", ErrLayout, l.OutputSize, l.RWSize)
	case l.OutputSize > maxSection || l.RWSize > maxSection:
		return fmt.Errorf("%w: sections larger than 1 TiB", ErrLayout)
	}
	return nil
}

// StateTableSize is the size of the state table part (the capability's
// state table size).
func (l Layout) StateTableSize() uint64 { return alignUp(uint64(l.Peers) * StateEntrySize) }

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
	s := uint64(PageSize)
	for s < l.Size() {
		s <<= 1
	}
	return s
}
