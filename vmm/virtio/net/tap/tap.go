// Package tap is the TAP backend of virtio-net (net.Backend): frames go
// to and come from a Linux TAP interface opened with
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and a 12-byte header size, so every
// frame carries its virtio_net_hdr through the host kernel as it is: the
// checksum and segmentation offloads pass end to end. The kernel hands
// the guest partial checksums and TSO segments only as far as the driver
// accepted them (TUNSETOFFLOAD, set when the driver starts the device).
// The header is little endian, as virtio 1 wants, on a little-endian host
// only (x86-64, where the VMM runs).
//
// The VMM opens the interface by name (Open: /dev/net/tun, which needs
// CAP_NET_ADMIN or an interface the VMM's user owns), or adopts a
// descriptor its supervisor opened and attached (Adopt: a jailed VMM has
// no /dev/net/tun).
//
// Threads: Run, on the device's backend goroutine, reads a frame only
// when the guest has posted buffers for any frame (net.Port.WaitRx); until
// then frames wait in the interface's queue in the host kernel, which
// bounds it and counts what it drops (the interface's tx_dropped). Send,
// on the device's transmit goroutine, writes without ever waiting: a frame
// the kernel does not take at once is dropped (and counted by the
// device). The descriptor is non-blocking and in the Go runtime's poller;
// Run stops when its context ends (a read deadline wakes it).
//
// vhost-net (vmm/virtio/net/vhostnet) moves the rings into the kernel
// instead: it needs the queues' addresses and eventfds, not frames, and
// attaches them to the interface's descriptor (Control); the Tap stays the
// userspace fallback.
package tap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	vnet "rainforest/vmm/virtio/net"
)

// Device is /dev/net/tun.
const Device = "/dev/net/tun"

// Flags are the interface flags a TAP backend needs.
const Flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// readBuf is the read buffer: larger than any frame the device takes
// (net.MaxPacket), so that a larger one (an interface whose GSO size was
// raised) is read whole and then refused rather than cut.
const readBuf = 128 << 10

// ErrNotTap means an adopted descriptor is not a TAP interface with the
// flags a backend needs (Flags).
var ErrNotTap = errors.New("tap: not a TAP interface with IFF_NO_PI and IFF_VNET_HDR")

// Tap is a TAP interface as a virtio-net backend.
type Tap struct {
	f        *os.File
	rc       syscall.RawConn
	name     string
	readErrs atomic.Uint64
}

var _ vnet.Backend = (*Tap)(nil)

// Open attaches to the TAP interface name (creating it when it does not
// exist and the caller may; "" lets the kernel name it tap%d) with Flags.
func Open(name string) (*Tap, error) {
	fd, err := unix.Open(Device, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	got, err := setIff(fd, name, Flags)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	return newTap(fd, got)
}

// Adopt takes charge of f, a descriptor of /dev/net/tun attached to a
// TAP interface with Flags (opened by the supervisor): f is closed
// whatever happens, the Tap works on a duplicate.
func Adopt(f *os.File) (*Tap, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(raw uintptr) {
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("tap: duplicate descriptor: %w", dupErr)
	}
	name, flags, err := getIff(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: TUNGETIFF: %w", ErrNotTap, err)
	}
	if flags&(Flags|unix.IFF_TUN) != Flags {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: %s has flags %#x", ErrNotTap, name, flags)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return newTap(fd, name)
}

// newTap sets up fd (non-blocking, attached to name) as a backend.
func newTap(fd int, name string) (*Tap, error) {
	if err := setVnetHdrSize(fd, vnet.HeaderLen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETVNETHDRSZ: %w", name, err)
	}
	if err := setOffload(fd, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETOFFLOAD: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "tap:"+name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return &Tap{f: f, rc: rc, name: name}, nil
}

// Name returns the interface's name.
func (t *Tap) Name() string { return t.name }

// ReadErrors counts frames the kernel failed to hand over (and dropped).
func (t *Tap) ReadErrors() uint64 { return t.readErrs.Load() }

// HeaderSize returns the interface's header size (as the kernel has it).
func (t *Tap) HeaderSize() (int, error) {
	var n int
	var err error
	if cerr := t.rc.Control(func(fd uintptr) { n, err = vnetHdrSize(int(fd)) }); cerr != nil {
		return 0, cerr
	}
	return n, err
}

// Offloads implements net.Backend: a TAP carries them all.
func (t *Tap) Offloads() uint64 { return vnet.OffloadFeatures }

// OffloadFlags returns the TUN_F_* flags for a driver's features: what
// the guest accepts in frames it receives.
func OffloadFlags(features uint64) int {
	var f int
	if features&vnet.FeatureGuestCsum != 0 {
		f |= unix.TUN_F_CSUM
		if features&vnet.FeatureGuestTSO4 != 0 {
			f |= unix.TUN_F_TSO4
		}
		if features&vnet.FeatureGuestTSO6 != 0 {
			f |= unix.TUN_F_TSO6
		}
		if features&vnet.FeatureGuestECN != 0 && f&(unix.TUN_F_TSO4|unix.TUN_F_TSO6) != 0 {
			f |= unix.TUN_F_TSO_ECN
		}
	}
	return f
}

// Configure implements net.Backend: the kernel gives the guest only the
// offloads it accepted.
func (t *Tap) Configure(features uint64) error {
	var err error
	if cerr := t.rc.Control(func(fd uintptr) { err = setOffload(int(fd), OffloadFlags(features)) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD: %w", t.name, err)
	}
	return nil
}

// Send implements net.Backend: one writev of the frame, never waiting.
func (t *Tap) Send(frame [][]byte) error {
	total := 0
	for _, b := range frame {
		total += len(b)
	}
	var n int
	var err error
	if cerr := t.rc.Write(func(fd uintptr) bool {
		n, err = unix.Writev(int(fd), frame)
		return true // never wait for the descriptor: drop instead
	}); cerr != nil {
		return fmt.Errorf("tap %s: write: %w", t.name, cerr)
	}
	if err != nil {
		return fmt.Errorf("tap %s: write: %w", t.name, err)
	}
	if n != total {
		return fmt.Errorf("tap %s: wrote %d of %d bytes", t.name, n, total)
	}
	return nil
}

// Run implements net.Backend: it reads a frame whenever the guest can
// take one, until ctx ends or the interface fails.
func (t *Tap) Run(ctx context.Context, port vnet.Port) error {
	stop := context.AfterFunc(ctx, func() {
		_ = t.f.SetReadDeadline(time.Unix(1, 0)) // wakes the read; Close reports any real failure
	})
	defer stop()
	buf := make([]byte, readBuf)
	for {
		if err := port.WaitRx(ctx); err != nil {
			return nil // ctx ended
		}
		n, err := t.f.Read(buf)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err == nil:
			_ = port.Receive(buf[:n]) // refused frames are the device's to count
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EFAULT) || errors.Is(err, unix.EMSGSIZE):
			// The kernel could not hand this frame over and dropped
			// it; the next one may be fine.
			t.readErrs.Add(1)
		default:
			return fmt.Errorf("tap %s: read: %w", t.name, err)
		}
	}
}

// Close implements net.Backend.
func (t *Tap) Close() error { return t.f.Close() }

// SetHeaderSize sets the header size before every frame
// (TUNSETVNETHDRSZ): vhost-net sets the 12 bytes of virtio 1 again when it
// takes the interface over.
func (t *Tap) SetHeaderSize(n int) error {
	var err error
	if cerr := t.rc.Control(func(fd uintptr) { err = setVnetHdrSize(int(fd), n) }); cerr != nil {
		return cerr
	}
	return err
}

// Control runs f with the interface's descriptor (vhost-net attaches its
// rings to it); f must not keep it.
func (t *Tap) Control(f func(fd uintptr)) error { return t.rc.Control(f) }
