package loop

import (
	"encoding/binary"

	vnet "rainforest/vmm/virtio/net"
)

// completeChecksum finishes the partial checksum of pkt (a header and an
// Ethernet frame, NEEDS_CSUM set, no segmentation) for a guest that did
// not accept partial checksums, as a NIC would: the ones' complement sum
// of the frame from CsumStart on (the checksum field holds the
// pseudo-header's sum), folded and complemented, goes to
// CsumStart+CsumOffset (0 becomes 0xffff, which UDP needs), and the flag
// is cleared. It reports false, leaving pkt as it is, when the field lies
// outside the frame.
func completeChecksum(pkt []byte) bool {
	h := vnet.DecodeHeader(pkt)
	frame := pkt[vnet.HeaderLen:]
	start, at := int(h.CsumStart), int(h.CsumStart)+int(h.CsumOffset)
	if at+2 > len(frame) {
		return false
	}
	sum := onesSum(frame[start:])
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(frame[at:], c)
	h.Flags &^= vnet.HdrNeedsCsum
	h.Encode(pkt)
	return true
}

// onesSum is the folded 16-bit ones' complement sum of b (big-endian
// words, an odd last byte padded with zero).
func onesSum(b []byte) uint32 {
	var s uint64
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		s += v>>48 + v>>32&0xffff + v>>16&0xffff + v&0xffff
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint32(s)
}
