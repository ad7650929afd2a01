package device

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFile maps size bytes of f read-write and shared.
func mapFile(f *os.File, size int) ([]byte, error) {
	b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s (%d bytes): %w", f.Name(), size, err)
	}
	return b, nil
}

// unmap releases a mapping made by mapFile.
func unmap(b []byte) error {
	if b == nil {
		return nil
	}
	return unix.Munmap(b)
}

// word returns the 4-byte aligned word at b[off:off+4] as an atomic.Uint32.
func word(b []byte, off int) (*atomic.Uint32, error) {
	if off < 0 || off > len(b)-4 {
		return nil, fmt.Errorf("%w: word at %d outside %d bytes", ErrLayout, off, len(b))
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		return nil, fmt.Errorf("%w: word at %#x misaligned", ErrLayout, uintptr(p))
	}
	return (*atomic.Uint32)(p), nil
}

func load32(b []byte, off int) uint32     { return LoadReg32(b, off) }
func store32(b []byte, off int, v uint32) { StoreReg32(b, off, v) }

// LoadReg32 reads the register at b[off] (a mapped BAR) with one 32-bit
// load (a plain MOV on amd64). off must have been checked by the caller.
func LoadReg32(b []byte, off int) uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b[off])).Load()
}

// StoreReg32 writes v to the register at b[off] with one plain 32-bit store.
// It is deliberately not an atomic store: on amd64 that is an XCHG, which
// KVM emulates on MMIO as a read (a userspace exit) plus a write, while a
// plain MOV is a single write that ioeventfd handles in the kernel.
//
//go:noinline
func StoreReg32(b []byte, off int, v uint32) {
	*(*uint32)(unsafe.Pointer(&b[off])) = v
}
