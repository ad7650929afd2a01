package peercred

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxGroups bounds the supplementary groups read (the kernel's
// NGROUPS_MAX).
const maxGroups = 65536

// peerGroups reads SO_PEERGROUPS: the peer's supplementary groups at
// connect time. x/sys/unix has no typed getter for it (GetsockoptString
// stops at the first zero byte), hence the raw call.
func peerGroups(fd int) ([]uint32, error) {
	n := 64
	for range 3 {
		buf := make([]uint32, n)
		size := uint32(n * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && int(size/4) > n && size/4 <= maxGroups:
			n = int(size / 4)
			continue
		case errno != 0:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		case int(size/4) > n:
			return nil, fmt.Errorf("SO_PEERGROUPS: %d bytes for a %d-group buffer", size, n)
		}
		return buf[:size/4], nil
	}
	return nil, fmt.Errorf("SO_PEERGROUPS: the group list keeps growing")
}
