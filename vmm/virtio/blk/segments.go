package blk

import "encoding/binary"

// segment is one range of a discard or write-zeroes request (struct
// virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32
// flags).
type segment struct {
	sector  uint64
	sectors uint32
	flags   uint32
}

// segmentLimits is what a request's segments are checked against.
type segmentLimits struct {
	capacity   uint64 // disk size in sectors
	align      uint64 // logical block size in sectors: ranges are whole blocks
	maxSectors uint32 // most sectors in one segment
	maxSegs    int    // most segments in one request
	flags      uint32 // flags allowed (FlagUnmap for write-zeroes, none for discard)
}

// parseSegments decodes and checks the segments of a discard or
// write-zeroes request, raw being the bytes after the header. It returns
// StatusUnsupp when any segment has a flag that is not allowed (an unknown
// or reserved bit, or unmap on a discard: virtio 1.2, 5.2.6.2), and
// StatusIOErr when the payload is not 1 to lim.maxSegs whole segments or
// a segment is too long, not in whole logical blocks or not inside the
// disk. Segments of zero sectors are valid and do nothing.
func parseSegments(raw []byte, lim segmentLimits) ([]segment, byte) {
	n := len(raw) / SegmentLen
	if len(raw)%SegmentLen != 0 || n == 0 || n > lim.maxSegs {
		return nil, StatusIOErr
	}
	segs := make([]segment, n)
	unsupported := false
	for i := range segs {
		b := raw[i*SegmentLen:]
		segs[i] = segment{
			sector:  binary.LittleEndian.Uint64(b[0:]),
			sectors: binary.LittleEndian.Uint32(b[8:]),
			flags:   binary.LittleEndian.Uint32(b[12:]),
		}
		if segs[i].flags&^lim.flags != 0 {
			unsupported = true
		}
	}
	if unsupported {
		return nil, StatusUnsupp
	}
	align := max(lim.align, 1)
	for _, s := range segs {
		if s.sectors > lim.maxSectors || s.sector > lim.capacity ||
			uint64(s.sectors) > lim.capacity-s.sector ||
			s.sector%align != 0 || uint64(s.sectors)%align != 0 {
			return nil, StatusIOErr
		}
	}
	return segs, StatusOK
}
