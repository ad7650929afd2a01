package tap

import (
	"golang.org/x/sys/unix"
)

// The ioctls of a TAP descriptor (linux/if_tun.h). golang.org/x/sys/unix
// does the pointer passing; they are kept here, with the package's other
// system-call plumbing, so that the rest of the package is plain Go.

// setIff attaches fd to the TAP interface name (created if missing) with
// flags, and returns the interface's name.
func setIff(fd int, name string, flags uint16) (string, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return "", err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return "", err
	}
	return ifr.Name(), nil
}

// getIff returns the name and flags of the interface fd is attached to.
func getIff(fd int) (string, uint16, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return "", 0, err
	}
	return ifr.Name(), ifr.Uint16(), nil
}

// setVnetHdrSize sets the size of the header before every frame.
func setVnetHdrSize(fd, size int) error {
	return unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, size)
}

// vnetHdrSize returns the size of the header before every frame.
func vnetHdrSize(fd int) (int, error) {
	return unix.IoctlGetInt(fd, unix.TUNGETVNETHDRSZ)
}

// setOffload tells the kernel which offloads (TUN_F_*) the reader of fd
// takes: frames with partial checksums, TSO segments.
func setOffload(fd int, flags int) error {
	return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, flags)
}
