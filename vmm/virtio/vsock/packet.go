package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Addresses.
const (
	// HostCID is the host's context ID (VMADDR_CID_HOST).
	HostCID uint64 = 2
	// MinGuestCID is the smallest CID a guest may have (0-2 are reserved).
	MinGuestCID uint64 = 3
	// MaxGuestCID bounds guest CIDs: the driver keeps 32 bits and -1 is
	// VMADDR_CID_ANY.
	MaxGuestCID uint64 = 1<<32 - 2
)

// HeaderLen is the size of struct virtio_vsock_hdr.
const HeaderLen = 44

// TypeStream is the only socket type offered (no SEQPACKET feature).
const TypeStream uint16 = 1

// Operations.
const (
	OpRequest       uint16 = 1
	OpResponse      uint16 = 2
	OpRST           uint16 = 3
	OpShutdown      uint16 = 4
	OpRW            uint16 = 5
	OpCreditUpdate  uint16 = 6
	OpCreditRequest uint16 = 7
)

// Shutdown flags.
const (
	ShutdownRcv  uint32 = 1 // the sender will receive no more
	ShutdownSend uint32 = 2 // the sender will send no more
)

// Header is a packet header (virtio_vsock_hdr, little endian).
type Header struct {
	SrcCID   uint64
	DstCID   uint64
	SrcPort  uint32
	DstPort  uint32
	Len      uint32
	Type     uint16
	Op       uint16
	Flags    uint32
	BufAlloc uint32
	FwdCnt   uint32
}

// ErrMalformed wraps every reason a guest packet is refused.
var ErrMalformed = errors.New("vsock: malformed packet")

// DecodeHeader reads a header from the first HeaderLen bytes of b.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("%w: %d bytes, a header has %d", ErrMalformed, len(b), HeaderLen)
	}
	le := binary.LittleEndian
	return Header{
		SrcCID:   le.Uint64(b[0:]),
		DstCID:   le.Uint64(b[8:]),
		SrcPort:  le.Uint32(b[16:]),
		DstPort:  le.Uint32(b[20:]),
		Len:      le.Uint32(b[24:]),
		Type:     le.Uint16(b[28:]),
		Op:       le.Uint16(b[30:]),
		Flags:    le.Uint32(b[32:]),
		BufAlloc: le.Uint32(b[36:]),
		FwdCnt:   le.Uint32(b[40:]),
	}, nil
}

// Encode writes h into the first HeaderLen bytes of b.
func (h Header) Encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}

// CheckGuest validates a header the guest with cid sent, with payload
// bytes after it in the descriptor chain: addresses, type, a known
// operation, a length within MaxPacket and within the chain, payload only
// on RW, flags only on SHUTDOWN.
func (h Header) CheckGuest(cid uint64, payload uint64) error {
	switch {
	case h.SrcCID != cid:
		return fmt.Errorf("%w: source CID %d, the guest is %d", ErrMalformed, h.SrcCID, cid)
	case h.DstCID != HostCID:
		return fmt.Errorf("%w: destination CID %d, only the host (%d) is reachable", ErrMalformed, h.DstCID, HostCID)
	case h.Type != TypeStream:
		return fmt.Errorf("%w: socket type %d, only stream (%d)", ErrMalformed, h.Type, TypeStream)
	case h.Op < OpRequest || h.Op > OpCreditRequest:
		return fmt.Errorf("%w: unknown operation %d", ErrMalformed, h.Op)
	case h.Len > MaxPacket:
		return fmt.Errorf("%w: length %d, at most %d", ErrMalformed, h.Len, MaxPacket)
	case uint64(h.Len) > payload:
		return fmt.Errorf("%w: length %d, the chain holds %d", ErrMalformed, h.Len, payload)
	case h.Op != OpRW && h.Len != 0:
		return fmt.Errorf("%w: operation %d with %d bytes of payload", ErrMalformed, h.Op, h.Len)
	case h.Op == OpShutdown && (h.Flags == 0 || h.Flags&^(ShutdownRcv|ShutdownSend) != 0):
		return fmt.Errorf("%w: shutdown flags %#x", ErrMalformed, h.Flags)
	case h.Op != OpShutdown && h.Flags != 0:
		return fmt.Errorf("%w: operation %d with flags %#x", ErrMalformed, h.Op, h.Flags)
	}
	return nil
}
