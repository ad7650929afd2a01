package peercred

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Listen creates a listening Unix socket of network "unix" (stream) or
// "unixpacket" (seqpacket) at path, whose file is born with no more than
// mode's owner bits, then, when gid >= 0, given group gid, and only then
// mode itself; the listener removes the file when closed. path must not
// exist (callers remove a stale socket first).
//
// The file is born restricted without touching the umask (which is
// process-wide and would change the mode of every file other goroutines
// create meanwhile): bind(2) gives a Unix socket's file the mode of the
// socket's inode less the umask, so the socket is fchmod-ed before it is
// bound. The result is checked; a kernel that ignored it is an error. The
// socket listens only after its file has its group and mode, so no client
// can connect in between either.
func Listen(network, path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	return listen(network, path, mode, gid, nil)
}

// listen is Listen; afterBind, when set, runs right after bind (tests look
// at the newborn file).
func listen(network, path string, mode os.FileMode, gid int, afterBind func()) (*net.UnixListener, error) {
	var typ int
	switch network {
	case "unix":
		typ = unix.SOCK_STREAM
	case "unixpacket":
		typ = unix.SOCK_SEQPACKET
	default:
		return nil, fmt.Errorf("socket %s: network %q is not unix or unixpacket", path, network)
	}
	birth := uint32(mode.Perm() & 0o700)
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	bound := false
	fail := func(err error) (*net.UnixListener, error) {
		unix.Close(fd)
		if bound {
			os.Remove(path)
		}
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := unix.Fchmod(fd, birth); err != nil {
		return fail(fmt.Errorf("fchmod before bind: %w", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail(err)
	}
	bound = true
	if afterBind != nil {
		afterBind()
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fail(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o077 != 0 || st.Mode&0o700&^birth != 0 {
		return fail(fmt.Errorf("born with mode %#o, want at most %#o (the kernel ignored fchmod before bind)", st.Mode&0o7777, birth))
	}
	if gid >= 0 {
		if err := unix.Fchownat(unix.AT_FDCWD, path, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fail(fmt.Errorf("chgrp %d: %w", gid, err))
		}
	}
	// The file was just made by this process in a directory the caller
	// controls (and is checked to be the socket above), so following a
	// link is not a concern here.
	if err := unix.Fchmodat(unix.AT_FDCWD, path, uint32(mode.Perm()), 0); err != nil {
		return fail(fmt.Errorf("chmod %#o: %w", mode.Perm(), err))
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return fail(err)
	}
	f := os.NewFile(uintptr(fd), path)
	l, err := net.FileListener(f) // dups fd
	f.Close()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		os.Remove(path)
		return nil, fmt.Errorf("socket %s: not a Unix listener", path)
	}
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// ListenUnix is Listen for a stream socket.
func ListenUnix(path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	return Listen("unix", path, mode, gid)
}

// Relisten calls listen(2) again on ln, which another process may have
// created and handed over: the kernel records the credentials of the
// process that last called listen and gives them to every client that
// connects afterwards as the server's SO_PEERCRED, so after Relisten
// clients see this process (its pid, uid, gid).
func Relisten(ln *net.UnixListener) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return fmt.Errorf("relisten: %w", err)
	}
	var lerr error
	if err := raw.Control(func(fd uintptr) { lerr = unix.Listen(int(fd), unix.SOMAXCONN) }); err != nil {
		return fmt.Errorf("relisten: %w", err)
	}
	if lerr != nil {
		return fmt.Errorf("relisten: %w", lerr)
	}
	return nil
}
