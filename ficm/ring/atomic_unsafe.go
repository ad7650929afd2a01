package ring

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Uint32At returns the 4-byte word at b[off:off+4] as an atomic.Uint32. The
// word must lie inside b and be 4-byte aligned.
func Uint32At(b []byte, off int) (*atomic.Uint32, error) {
	if off < 0 || off > len(b)-4 {
		return nil, fmt.Errorf("%w: word at %d outside %d-byte area", ErrLayout, off, len(b))
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		return nil, fmt.Errorf("%w: uint32 at %#x", ErrMisaligned, uintptr(p))
	}
	return (*atomic.Uint32)(p), nil
}

// Uint64At returns the 8-byte word at b[off:off+8] as an atomic.Uint64. The
// word must lie inside b and be 8-byte aligned.
func Uint64At(b []byte, off int) (*atomic.Uint64, error) {
	if off < 0 || off > len(b)-8 {
		return nil, fmt.Errorf("%w: word at %d outside %d-byte area", ErrLayout, off, len(b))
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%8 != 0 {
		return nil, fmt.Errorf("%w: uint64 at %#x", ErrMisaligned, uintptr(p))
	}
	return (*atomic.Uint64)(p), nil
}

// AlignedBytes returns a zeroed n-byte slice whose first byte is 64-byte
// (cache line) aligned, standing in for shared memory in tests and tools.
func AlignedBytes(n int) []byte {
	buf := make([]byte, n+SlotSize-1)
	skip := (SlotSize - int(uintptr(unsafe.Pointer(unsafe.SliceData(buf)))%SlotSize)) % SlotSize
	return buf[skip : skip+n : skip+n]
}
