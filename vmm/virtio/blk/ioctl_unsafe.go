package blk

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// blockRangeIoctl issues an ioctl taking a byte range {start, length} on a
// block device: BLKDISCARD or BLKZEROOUT. Both need start and length
// aligned to the logical block size.
func blockRangeIoctl(fd int, req uint, start, length uint64) error {
	r := [2]uint64{start, length}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r)))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}
