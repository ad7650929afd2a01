// Package vhost drives the host kernel's vhost-net device
// (/dev/vhost-net): the in-kernel virtio-net data path, which serves a
// device's virtqueues straight from guest memory to a TAP interface, with
// the driver's notifications arriving on eventfds (KVM ioeventfds) and
// its interrupts leaving on others (KVM irqfds), so that no VMM thread is
// on the frame path. It holds no policy: it wraps the ioctls, which
// mirror the vhost-user front-end messages, and shares their payload
// types (vhostuser.VringAddr, vhostuser.MemoryRegion, the layout of
// vhostuser.VringState) — the kernel structures are the same bytes.
//
// On Linux 6.4 and later the kernel's worker for a vhost descriptor is a
// thread of the process that made SET_OWNER, named vhost-PID: it runs in
// that process's cgroup and is counted with it.
package vhost

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"rainforest/vmm/vhostuser"
)

// NetDevice is the vhost-net character device.
const NetDevice = "/dev/vhost-net"

// Unbind is the descriptor that detaches a ring's kick, call or back
// end (VHOST_FILE_UNBIND).
const Unbind = -1

// Feature bits of vhost-net beyond the virtio ones it passes on.
const (
	// FeatureNotifyOnEmpty is VIRTIO_F_NOTIFY_ON_EMPTY.
	FeatureNotifyOnEmpty uint64 = 1 << 24
	// FeatureLogAll is VHOST_F_LOG_ALL (dirty logging, unused here).
	FeatureLogAll uint64 = 1 << 26
	// FeatureNetVirtioNetHdr is VHOST_NET_F_VIRTIO_NET_HDR: vhost adds
	// and strips the header itself (unused: the TAP carries it).
	FeatureNetVirtioNetHdr uint64 = 1 << 27
)

// ErrUnavailable means the host has no vhost-net device (or it cannot be
// opened).
var ErrUnavailable = errors.New("vhost-net unavailable")

// Net is a vhost-net descriptor. Its methods are the ioctls, one each;
// errors name the ioctl.
type Net struct {
	f  *os.File
	rc syscall.RawConn
}

// Open opens NetDevice; a missing or refused device is ErrUnavailable.
func Open() (*Net, error) {
	f, err := os.OpenFile(NetDevice, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return Adopt(f)
}

// Adopt takes charge of f, a descriptor of NetDevice (a jailed VMM's,
// opened by its supervisor).
func Adopt(f *os.File) (*Net, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vhost-net: %w", err)
	}
	return &Net{f: f, rc: rc}, nil
}

// Close closes the descriptor; the kernel stops the rings and its worker.
func (n *Net) Close() error { return n.f.Close() }

// control runs op on the descriptor.
func (n *Net) control(name string, op func(fd uintptr) error) error {
	var err error
	if cerr := n.rc.Control(func(fd uintptr) { err = op(fd) }); cerr != nil {
		return fmt.Errorf("vhost-net: %s: %w", name, cerr)
	}
	if err != nil {
		return fmt.Errorf("vhost-net: %s: %w", name, err)
	}
	return nil
}

// SetOwner makes the calling process the descriptor's owner (once per
// descriptor): the kernel starts its worker for it.
func (n *Net) SetOwner() error {
	return n.control("VHOST_SET_OWNER", func(fd uintptr) error { return ioctlNone(fd, setOwner) })
}

// Features returns the feature bits vhost-net supports
// (VHOST_GET_FEATURES).
func (n *Net) Features() (uint64, error) {
	var v uint64
	err := n.control("VHOST_GET_FEATURES", func(fd uintptr) (err error) { v, err = ioctlGetU64(fd, getFeatures); return })
	return v, err
}

// SetFeatures sets the negotiated features (a subset of Features).
func (n *Net) SetFeatures(f uint64) error {
	return n.control("VHOST_SET_FEATURES", func(fd uintptr) error { return ioctlSetU64(fd, setFeatures, f) })
}

// SetMemTable gives the kernel the guest memory map: each region's guest
// physical addresses and where they are in this process.
// MmapOffset is not used by the kernel and must be 0.
func (n *Net) SetMemTable(regions []vhostuser.MemoryRegion) error {
	b, err := vhostuser.EncodeMemoryTable(regions)
	if err != nil {
		return fmt.Errorf("vhost-net: VHOST_SET_MEM_TABLE: %w", err)
	}
	return n.control("VHOST_SET_MEM_TABLE", func(fd uintptr) error { return ioctlBytes(fd, setMemTable, b) })
}

// SetVringNum sets ring index's size.
func (n *Net) SetVringNum(index, num uint32) error {
	b := vhostuser.VringState{Index: index, Num: num}.Encode()
	return n.control("VHOST_SET_VRING_NUM", func(fd uintptr) error { return ioctlBytes(fd, setVringNum, b) })
}

// SetVringBase sets the index in the available ring where ring index
// starts.
func (n *Net) SetVringBase(index, base uint32) error {
	b := vhostuser.VringState{Index: index, Num: base}.Encode()
	return n.control("VHOST_SET_VRING_BASE", func(fd uintptr) error { return ioctlBytes(fd, setVringBase, b) })
}

// VringBase returns where ring index stopped in the available ring
// (VHOST_GET_VRING_BASE).
func (n *Net) VringBase(index uint32) (uint32, error) {
	b := vhostuser.VringState{Index: index}.Encode()
	if err := n.control("VHOST_GET_VRING_BASE", func(fd uintptr) error { return ioctlBytes(fd, getVringBase, b) }); err != nil {
		return 0, err
	}
	s, err := vhostuser.ParseVringState(b)
	return s.Num, err
}

// SetVringAddr sets a ring's addresses in this process.
func (n *Net) SetVringAddr(a vhostuser.VringAddr) error {
	b := a.Encode()
	return n.control("VHOST_SET_VRING_ADDR", func(fd uintptr) error { return ioctlBytes(fd, setVringAddr, b) })
}

// SetVringKick sets the eventfd whose signal tells the kernel ring index
// has new buffers (Unbind: none).
func (n *Net) SetVringKick(index uint32, fd int) error {
	return n.vringFile("VHOST_SET_VRING_KICK", setVringKick, index, fd)
}

// SetVringCall sets the eventfd the kernel signals for ring index's used
// buffers (Unbind: none).
func (n *Net) SetVringCall(index uint32, fd int) error {
	return n.vringFile("VHOST_SET_VRING_CALL", setVringCall, index, fd)
}

// SetVringErr sets the eventfd the kernel signals on ring index's
// errors (Unbind: none).
func (n *Net) SetVringErr(index uint32, fd int) error {
	return n.vringFile("VHOST_SET_VRING_ERR", setVringErr, index, fd)
}

// SetBackend attaches ring index to the TAP descriptor fd, which starts
// it (Unbind detaches and stops it).
func (n *Net) SetBackend(index uint32, fd int) error {
	return n.vringFile("VHOST_NET_SET_BACKEND", netSetBackend, index, fd)
}

// vringFile issues an ioctl taking struct vhost_vring_file: the index and
// a descriptor, laid out as a vring state.
func (n *Net) vringFile(name string, req uintptr, index uint32, file int) error {
	b := vhostuser.VringState{Index: index, Num: uint32(int32(file))}.Encode()
	return n.control(name, func(fd uintptr) error { return ioctlBytes(fd, req, b) })
}

// IoctlRequests are the ioctl requests Net makes, by name (for a system
// call filter).
var IoctlRequests = map[string]uint64{
	"VHOST_SET_OWNER": setOwner, "VHOST_GET_FEATURES": getFeatures, "VHOST_SET_FEATURES": setFeatures,
	"VHOST_SET_MEM_TABLE": setMemTable, "VHOST_SET_VRING_NUM": setVringNum, "VHOST_SET_VRING_BASE": setVringBase,
	"VHOST_GET_VRING_BASE": getVringBase, "VHOST_SET_VRING_ADDR": setVringAddr, "VHOST_SET_VRING_KICK": setVringKick,
	"VHOST_SET_VRING_CALL": setVringCall, "VHOST_SET_VRING_ERR": setVringErr, "VHOST_NET_SET_BACKEND": netSetBackend,
}
