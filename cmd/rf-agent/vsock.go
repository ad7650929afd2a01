package main

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// vsockAddr is a vsock address (the net package knows no AF_VSOCK).
type vsockAddr struct{ cid, port uint32 }

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.cid, a.port) }

// vsockListener is a net.Listener on an AF_VSOCK stream socket, driven by
// Go's poller (a non-blocking *os.File), so that Close ends a waiting
// Accept.
type vsockListener struct {
	f    *os.File
	rc   syscall.RawConn
	addr vsockAddr
}

// listenVsock listens on port for any CID.
func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 32); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listening on vsock port %d: %w", port, err)
	}
	return newFDListener(fd, vsockAddr{cid: localCID(), port: port})
}

// newFDListener makes a listener of a non-blocking listening socket fd
// (of any family: tests use a Unix one).
func newFDListener(fd int, addr vsockAddr) (*vsockListener, error) {
	f := os.NewFile(uintptr(fd), "vsock:"+addr.String())
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &vsockListener{f: f, rc: rc, addr: addr}, nil
}

// localCID is this machine's CID, or VMADDR_CID_ANY where unknown.
func localCID() uint32 {
	f, err := os.Open("/dev/vsock")
	if err != nil {
		return unix.VMADDR_CID_ANY
	}
	defer f.Close()
	cid, err := unix.IoctlGetUint32(int(f.Fd()), unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
	if err != nil {
		return unix.VMADDR_CID_ANY
	}
	return cid
}

// Accept waits for a connection.
func (l *vsockListener) Accept() (net.Conn, error) {
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	err := l.rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return aerr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, fmt.Errorf("vsock accept: %w", aerr)
	}
	remote := vsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = vsockAddr{cid: vm.CID, port: vm.Port}
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock:"+remote.String()), local: l.addr, remote: remote}, nil
}

// Close stops the listener; a waiting Accept returns an error.
func (l *vsockListener) Close() error { return l.f.Close() }

// Addr is the listening address.
func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is an accepted vsock stream: a pollable *os.File has every
// net.Conn method but the addresses.
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

var _ net.Conn = (*vsockConn)(nil)
