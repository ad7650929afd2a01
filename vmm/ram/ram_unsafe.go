package ram

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	mpolBind       = 2
	mpolMFStrict   = 1 << 0
	mpolMFMove     = 1 << 1
	maxNodeBitsMap = 1024
)

// bindNode binds data's pages to NUMA node with mbind(MPOL_BIND).
func bindNode(data []byte, node int) error {
	if node >= maxNodeBitsMap {
		return fmt.Errorf("NUMA node %d out of range", node)
	}
	var mask [maxNodeBitsMap / 64]uint64
	mask[node/64] |= 1 << (node % 64)
	_, _, errno := unix.Syscall6(unix.SYS_MBIND, uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)),
		mpolBind, uintptr(unsafe.Pointer(&mask[0])), maxNodeBitsMap+1, mpolMFStrict|mpolMFMove)
	if errno == unix.ENOSYS {
		return nil // kernel without NUMA support: one node, nothing to bind
	}
	if errno != 0 {
		return fmt.Errorf("mbind guest memory to node %d: %w", node, errno)
	}
	return nil
}
