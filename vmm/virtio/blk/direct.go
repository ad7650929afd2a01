package blk

import (
	"os"

	"rainforest/vmm/virtio"
)

// alignedIO does positioned I/O on a file opened with O_DIRECT, where the
// offset, length and memory address of every transfer must be multiples of
// align. Data goes through bounce, an aligned buffer: a transfer is split
// into aligned chunks of at most len(bounce) bytes, and a write that
// starts or ends inside a block first reads that block (read-modify-write),
// so callers may use any byte offset and length inside the disk. The disk
// size is a multiple of align, so rounding out never goes past its end.
// Not safe for concurrent use (the device serialises requests).
type alignedIO struct {
	f      *os.File
	align  int64  // power of two
	bounce []byte // len a multiple of align, address aligned
}

// read fills dst from byte offset off.
func (a *alignedIO) read(dst [][]byte, off int64) error {
	end := off + int64(bufLen(dst))
	for cur := off; cur < end; {
		s, e := a.chunk(cur, end)
		if _, err := a.f.ReadAt(a.bounce[:e-s], s); err != nil {
			return err
		}
		stop := min(end, e)
		virtio.WriteBuffers(dst, uint64(cur-off), a.bounce[cur-s:stop-s])
		cur = stop
	}
	return nil
}

// write writes src at byte offset off.
func (a *alignedIO) write(src [][]byte, off int64) error {
	end := off + int64(bufLen(src))
	for cur := off; cur < end; {
		s, e := a.chunk(cur, end)
		stop := min(end, e)
		if cur > s { // the first block is only partly written
			if _, err := a.f.ReadAt(a.bounce[:a.align], s); err != nil {
				return err
			}
		}
		if last := e - a.align; stop < e && (cur == s || last > s) { // so is the last
			if _, err := a.f.ReadAt(a.bounce[last-s:e-s], last); err != nil {
				return err
			}
		}
		virtio.ReadBuffers(src, uint64(cur-off), a.bounce[cur-s:stop-s])
		if _, err := a.f.WriteAt(a.bounce[:e-s], s); err != nil {
			return err
		}
		cur = stop
	}
	return nil
}

// chunk returns the aligned range [s, e) of the next transfer for the
// bytes [cur, end): from the start of the block holding cur to the block
// boundary at or after end, or less where the bounce buffer is full.
func (a *alignedIO) chunk(cur, end int64) (s, e int64) {
	s = cur &^ (a.align - 1)
	e = (end + a.align - 1) &^ (a.align - 1)
	return s, min(e, s+int64(len(a.bounce)))
}
