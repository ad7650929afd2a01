package blk

import "unsafe"

// alignedBuffer returns a size-byte buffer whose first byte's address is a
// multiple of align (a power of two), as O_DIRECT transfers need. Go's
// garbage collector does not move heap objects, so the address stays put.
func alignedBuffer(size, align int) []byte {
	raw := make([]byte, size+align)
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(raw)))
	off := int(-addr & uintptr(align-1))
	return raw[off : off+size : off+size]
}
