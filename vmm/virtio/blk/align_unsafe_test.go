package blk

import "unsafe"

// bufferAddress returns the address of b's first byte.
func bufferAddress(b []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
