package loop

import (
	"encoding/binary"

	"rainforest/ficm/ring"
	vnet "rainforest/vmm/virtio/net"
)

// recordSlots is the slot count of the record of a packet of n bytes.
func recordSlots(n int) int { return 1 + (n+ring.SlotSize-1)/ring.SlotSize }

// putRecordHeader writes the header slot of a record of an n-byte packet.
func putRecordHeader(s *[ring.SlotSize]byte, n int) {
	binary.NativeEndian.PutUint32(s[0:], RecordMagic)
	binary.NativeEndian.PutUint32(s[4:], uint32(n))
	clear(s[8:])
}

// recordLength reads a record's header slot (the peer's memory: copied
// once) and returns its packet's length, or -1 when the magic or the
// length is wrong.
func recordLength(s *[ring.SlotSize]byte) int {
	var h [8]byte
	copy(h[:], s[:8])
	n := binary.NativeEndian.Uint32(h[4:])
	if binary.NativeEndian.Uint32(h[0:]) != RecordMagic || n < minPacket || n > vnet.MaxPacket {
		return -1
	}
	return int(n)
}

// put copies b into the data slots of p's reservation (after the header
// slot), from byte off of the packet on.
func put(p *ring.Producer, off int, b []byte) {
	for len(b) > 0 {
		n := copy(p.Span(1 + off/ring.SlotSize)[off%ring.SlotSize:], b)
		b, off = b[n:], off+n
	}
}

// putFrom copies the bytes of the scatter list bufs from byte skip on
// into p's reservation, from packet byte skip on.
func putFrom(p *ring.Producer, bufs [][]byte, skip int) {
	off := skip
	for _, b := range bufs {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		put(p, off, b[skip:])
		off += len(b) - skip
		skip = 0
	}
}

// copyRecord copies the n-byte packet of src's reservation into dst's
// (both this member's memory: src was written and checked already).
func copyRecord(dst, src *ring.Producer, n int) {
	for off := 0; off < n; {
		s := src.Span(1 + off/ring.SlotSize)[off%ring.SlotSize:]
		s = s[:min(len(s), n-off)]
		put(dst, off, s)
		off += len(s)
	}
}

// take copies the packet of c's peeked record into dst (len(dst) bytes).
func take(c *ring.Consumer, dst []byte) {
	for off := 0; off < len(dst); {
		off += copy(dst[off:], c.Span(1 + off/ring.SlotSize)[off%ring.SlotSize:])
	}
}

// gather copies the first len(dst) bytes of the scatter list bufs into
// dst.
func gather(bufs [][]byte, dst []byte) {
	off := 0
	for _, b := range bufs {
		if off == len(dst) {
			return
		}
		off += copy(dst[off:], b)
	}
}
