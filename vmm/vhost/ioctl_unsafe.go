package vhost

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlBytes issues req with a pointer to b (the kernel structure's
// bytes; the kernel may write them back).
func ioctlBytes(fd, req uintptr, b []byte) error {
	if len(b) == 0 {
		return unix.EINVAL
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	if e != 0 {
		return e
	}
	return nil
}

// ioctlNone issues req without an argument.
func ioctlNone(fd, req uintptr) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, 0)
	if e != 0 {
		return e
	}
	return nil
}

// ioctlGetU64 issues req with a pointer to a u64 the kernel fills in.
func ioctlGetU64(fd, req uintptr) (uint64, error) {
	var v uint64
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return 0, e
	}
	return v, nil
}

// ioctlSetU64 issues req with a pointer to v.
func ioctlSetU64(fd, req uintptr, v uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return e
	}
	return nil
}
