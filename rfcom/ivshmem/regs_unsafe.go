package ivshmem

import (
	"sync/atomic"
	"unsafe"
)

// load32 reads the register at b[off] with one 32-bit load. off must have
// been checked by the caller (Open checks the register BAR's size).
func load32(b []byte, off int) uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b[off])).Load()
}

// store32 writes v to the register at b[off] with one plain 32-bit store
// (not an atomic XCHG, which a VMM would have to emulate as a read and a
// write of the MMIO register).
//
//go:noinline
func store32(b []byte, off int, v uint32) {
	*(*uint32)(unsafe.Pointer(&b[off])) = v
}
