package net

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderLen is the size of struct virtio_net_hdr_v1, which precedes every
// frame both ways under VERSION_1 (num_buffers included, whether or not
// MRG_RXBUF is negotiated).
const HeaderLen = 12

// Frame bounds. A frame is the Ethernet frame after the header.
const (
	// EthHeaderLen is an Ethernet header: destination, source, type.
	EthHeaderLen = 14
	// MaxFrame is the largest frame either way: a 64 KiB GSO packet and
	// its Ethernet header, with a little room (what Linux sends with
	// TSO at most).
	MaxFrame = 65550
	// MaxPacket is MaxFrame with its header: the most bytes one
	// transmit chain or one received frame may hold.
	MaxPacket = HeaderLen + MaxFrame
)

// Header flags (virtio_net_hdr.flags).
const (
	// HdrNeedsCsum: the checksum at CsumStart+CsumOffset is partial (the
	// receiver completes it).
	HdrNeedsCsum = 1
	// HdrDataValid: the checksum was checked (towards the guest only).
	HdrDataValid = 2
)

// GSO types (virtio_net_hdr.gso_type).
const (
	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3
	GSOTCPv6 = 4
	// GSOECN is or-ed into a TCP type: the packet has CWR set.
	GSOECN = 0x80
)

// ErrBadHeader means a frame's header asks for something the two sides
// did not negotiate, or points outside the frame.
var ErrBadHeader = errors.New("virtio-net: bad frame header")

// Header is struct virtio_net_hdr_v1 (little endian on the wire).
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16
}

// DecodeHeader reads a header from the first HeaderLen bytes of b (which
// must hold them).
func DecodeHeader(b []byte) Header {
	le := binary.LittleEndian
	return Header{
		Flags: b[0], GSOType: b[1],
		HdrLen: le.Uint16(b[2:]), GSOSize: le.Uint16(b[4:]),
		CsumStart: le.Uint16(b[6:]), CsumOffset: le.Uint16(b[8:]),
		NumBuffers: le.Uint16(b[10:]),
	}
}

// Encode writes h into the first HeaderLen bytes of b.
func (h Header) Encode(b []byte) {
	le := binary.LittleEndian
	b[0], b[1] = h.Flags, h.GSOType
	le.PutUint16(b[2:], h.HdrLen)
	le.PutUint16(b[4:], h.GSOSize)
	le.PutUint16(b[6:], h.CsumStart)
	le.PutUint16(b[8:], h.CsumOffset)
	le.PutUint16(b[10:], h.NumBuffers)
}

// offloadBits are the feature bits one direction's header may use: the
// checksum offload, TSO over IPv4 and IPv6, and ECN.
type offloadBits struct{ csum, tso4, tso6, ecn uint64 }

var (
	// fromGuest: what a transmitted frame may ask of the device.
	fromGuest = offloadBits{FeatureCsum, FeatureHostTSO4, FeatureHostTSO6, FeatureHostECN}
	// toGuest: what a received frame may ask of the driver.
	toGuest = offloadBits{FeatureGuestCsum, FeatureGuestTSO4, FeatureGuestTSO6, FeatureGuestECN}
)

// CheckTx checks the header of a frame the guest transmits, of frameLen
// bytes after the header, against the negotiated features: only
// NEEDS_CSUM among the flags (and only with CSUM), the checksum field
// inside the frame, and TCP segmentation of a type negotiated (HOST_TSO4,
// HOST_TSO6, HOST_ECN for the ECN bit) with a checksum to complete and a
// segment size. num_buffers is not looked at.
func (h Header) CheckTx(features uint64, frameLen int) error {
	return h.check(features, frameLen, fromGuest, HdrNeedsCsum)
}

// CheckRx checks the header of a frame for the guest the same way,
// against what the driver accepted (GUEST_CSUM, GUEST_TSO4, GUEST_TSO6,
// GUEST_ECN); DATA_VALID is allowed too, with GUEST_CSUM.
func (h Header) CheckRx(features uint64, frameLen int) error {
	return h.check(features, frameLen, toGuest, HdrNeedsCsum|HdrDataValid)
}

func (h Header) check(features uint64, frameLen int, bits offloadBits, flags uint8) error {
	if h.Flags&^flags != 0 {
		return fmt.Errorf("%w: flags %#x", ErrBadHeader, h.Flags)
	}
	if h.Flags != 0 && features&bits.csum == 0 {
		return fmt.Errorf("%w: checksum flags %#x without checksum offload", ErrBadHeader, h.Flags)
	}
	if h.Flags&HdrNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
		return fmt.Errorf("%w: checksum at %d+%d outside a %d-byte frame", ErrBadHeader, h.CsumStart, h.CsumOffset, frameLen)
	}
	gso := h.GSOType &^ GSOECN
	var need uint64
	switch gso {
	case GSONone:
		if h.GSOType&GSOECN != 0 {
			return fmt.Errorf("%w: ECN without segmentation", ErrBadHeader)
		}
		return nil
	case GSOTCPv4:
		need = bits.tso4
	case GSOTCPv6:
		need = bits.tso6
	default:
		return fmt.Errorf("%w: gso_type %#x", ErrBadHeader, h.GSOType)
	}
	if h.GSOType&GSOECN != 0 {
		need |= bits.ecn
	}
	switch {
	case features&need != need:
		return fmt.Errorf("%w: gso_type %#x not negotiated", ErrBadHeader, h.GSOType)
	case h.Flags&HdrNeedsCsum == 0:
		return fmt.Errorf("%w: segmentation without a partial checksum", ErrBadHeader)
	case h.GSOSize == 0:
		return fmt.Errorf("%w: segmentation with gso_size 0", ErrBadHeader)
	case int(h.HdrLen) > frameLen:
		return fmt.Errorf("%w: hdr_len %d beyond a %d-byte frame", ErrBadHeader, h.HdrLen, frameLen)
	}
	return nil
}
