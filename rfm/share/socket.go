package share

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Socket makes a share's vhost-user socket: a listening Unix stream
// socket for virtiofsd (its --fd, which it accepts one connection on) and
// the front end's connection to it, made at once, before virtiofsd runs.
// The socket's file is at path only while the connection is made: path's
// directory should be the caller's alone; it is gone when Socket returns,
// so no one else can connect. Both files are blocking and close-on-exec.
func Socket(path string) (listener, conn *os.File, err error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, nil, fmt.Errorf("share socket %s: path of %d bytes is too long for a Unix socket", path, len(path))
	}
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("share socket: %w", err)
	}
	listener = os.NewFile(uintptr(lfd), "virtiofsd-listener")
	fail := func(err error) (*os.File, *os.File, error) {
		listener.Close()
		if conn != nil {
			conn.Close()
		}
		return nil, nil, fmt.Errorf("share socket %s: %w", path, err)
	}
	_ = os.Remove(path) // a stale one, left by a crash
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail(err)
	}
	defer os.Remove(path)
	if err := unix.Listen(lfd, 1); err != nil {
		return fail(err)
	}
	cfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	conn = os.NewFile(uintptr(cfd), "virtiofsd")
	// Queued on the listener until virtiofsd accepts it.
	if err := unix.Connect(cfd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail(err)
	}
	return listener, conn, nil
}
