package blk

import (
	"encoding/binary"
	"testing"
)

// FuzzSegments checks parseSegments on any payload and limits: it never
// panics, and what it accepts is within the limits.
func FuzzSegments(f *testing.F) {
	seg := func(sector uint64, n, flags uint32) []byte {
		b := make([]byte, SegmentLen)
		binary.LittleEndian.PutUint64(b, sector)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint32(b[12:], flags)
		return b
	}
	f.Add(seg(0, 8, 0), uint64(64), uint8(1), uint32(1<<21), uint8(16), false)
	f.Add(append(seg(8, 8, 1), seg(56, 8, 0)...), uint64(64), uint8(8), uint32(64), uint8(2), true)
	f.Add(seg(^uint64(0), 1, 0), uint64(64), uint8(1), uint32(8), uint8(1), true)
	f.Fuzz(func(t *testing.T, raw []byte, capacity uint64, align uint8, maxSectors uint32, maxSegs uint8, unmap bool) {
		lim := segmentLimits{capacity: capacity, align: uint64(align), maxSectors: maxSectors, maxSegs: int(maxSegs)}
		if unmap {
			lim.flags = FlagUnmap
		}
		segs, status := parseSegments(raw, lim)
		switch status {
		case StatusOK:
			if len(raw)%SegmentLen != 0 || len(segs) != len(raw)/SegmentLen || len(segs) == 0 || len(segs) > lim.maxSegs {
				t.Fatalf("accepted %d bytes as %d segments (max %d)", len(raw), len(segs), lim.maxSegs)
			}
			for _, s := range segs {
				end := s.sector + uint64(s.sectors)
				if end < s.sector || end > capacity || s.sectors > maxSectors || s.flags&^lim.flags != 0 {
					t.Fatalf("accepted %+v with limits %+v", s, lim)
				}
				if a := uint64(max(align, 1)); s.sector%a != 0 || uint64(s.sectors)%a != 0 {
					t.Fatalf("accepted misaligned %+v (align %d)", s, a)
				}
			}
		case StatusUnsupp:
			found := false
			for i := 0; i+SegmentLen <= len(raw); i += SegmentLen {
				found = found || binary.LittleEndian.Uint32(raw[i+12:])&^lim.flags != 0
			}
			if !found {
				t.Fatal("UNSUPP without a bad flag")
			}
		case StatusIOErr:
		default:
			t.Fatalf("status %d", status)
		}
	})
}
