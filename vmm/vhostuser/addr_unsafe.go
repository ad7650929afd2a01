package vhostuser

import "unsafe"

// hostAddr returns the VMM's virtual address of b's first byte: the
// "front-end address" of the memory table and of SET_VRING_ADDR, which the
// back end translates through the table (it never dereferences it).
func hostAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}
