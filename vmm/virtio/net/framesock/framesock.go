// Package framesock is a virtio-net backend that carries plain Ethernet
// frames, one per message, over a SOCK_SEQPACKET Unix socket: the way a
// VMM hands its NIC to a user-mode network process (RainForest's
// gVisor-netstack uplink, `rfm uplink`) through a socketpair, without a
// TAP or any host network privilege.
//
// The peer sees frames without the virtio-net header, so no offloads are
// offered: every frame is whole and fully checksummed both ways. A frame
// the socket cannot take at once is dropped (Send never waits); frames
// for the guest are read only while the guest has receive buffers
// posted, so a flood waits in the socket's bounded buffer.
package framesock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	vnet "rainforest/vmm/virtio/net"
)

// maxFrame bounds a frame read from the peer (an Ethernet frame without
// offloads; anything longer is cut and refused by the device).
const maxFrame = 65535

// Socket is the backend, on a connected SOCK_SEQPACKET Unix socket.
type Socket struct {
	c    *net.UnixConn
	rc   syscall.RawConn
	name string
}

// Adopt takes charge of f, a connected SOCK_SEQPACKET Unix socket.
func Adopt(f *os.File) (*Socket, error) {
	typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("frame socket: %w", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		f.Close()
		return nil, fmt.Errorf("frame socket: socket type %d, want SOCK_SEQPACKET", typ)
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("frame socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("frame socket: not a Unix socket")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("frame socket: %w", err)
	}
	return &Socket{c: uc, rc: rc, name: "frames"}, nil
}

// Offloads implements net.Backend: none (the peer gets plain frames).
func (s *Socket) Offloads() uint64 { return 0 }

// Configure implements net.Backend.
func (s *Socket) Configure(uint64) error { return nil }

// Send implements net.Backend: the frame without its virtio-net header,
// as one message, never waiting.
func (s *Socket) Send(frame [][]byte) error {
	iov := make([][]byte, 0, len(frame))
	skip := vnet.HeaderLen
	for _, b := range frame {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		iov = append(iov, b[skip:])
		skip = 0
	}
	var err error
	if cerr := s.rc.Write(func(fd uintptr) bool {
		_, err = unix.SendmsgBuffers(int(fd), iov, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true // never wait: drop instead
	}); cerr != nil {
		return fmt.Errorf("frame socket: send: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("frame socket: send: %w", err)
	}
	return nil
}

// Run implements net.Backend: it reads a frame whenever the guest can
// take one, gives it an empty header, until ctx ends or the peer goes
// (closes its end, or sends an empty message, which reads the same).
func (s *Socket) Run(ctx context.Context, port vnet.Port) error {
	stop := context.AfterFunc(ctx, func() { _ = s.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, vnet.HeaderLen+maxFrame)
	for {
		if err := port.WaitRx(ctx); err != nil {
			return nil
		}
		n, err := s.c.Read(buf[vnet.HeaderLen:])
		if ctx.Err() != nil {
			return nil
		}
		if err != nil || n == 0 {
			// An empty message reads as the end, as it does for the
			// socket itself: the peer never sends one.
			return fmt.Errorf("frame socket: read: %w (the peer closed it)", err)
		}
		clear(buf[:vnet.HeaderLen])
		_ = port.Receive(buf[:vnet.HeaderLen+n]) // refused frames are the device's to count
	}
}

// Close implements net.Backend.
func (s *Socket) Close() error { return s.c.Close() }
