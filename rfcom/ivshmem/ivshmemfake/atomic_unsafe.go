package ivshmemfake

import (
	"sync/atomic"
	"unsafe"
)

// word returns the aligned 32-bit register at b[off] (off+4 <= len(b) is
// checked by the callers' fixed offsets into a 16-byte mapping).
func word(b []byte, off int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b[off]))
}

func load(b []byte, off int) uint32           { return word(b, off).Load() }
func store(b []byte, off int, v uint32)       { word(b, off).Store(v) }
func swap(b []byte, off int, v uint32) uint32 { return word(b, off).Swap(v) }
func or(b []byte, off int, v uint32)          { word(b, off).Or(v) }
