package fakesys

import (
	"sync/atomic"
	"unsafe"
)

// word returns the aligned 32-bit register at b[off] (the callers' offsets
// lie inside the mapping, which StartVMM sized for them).
func word(b []byte, off int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b[off]))
}
