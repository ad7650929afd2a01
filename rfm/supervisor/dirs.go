package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafeDir reports a state or run directory that another user could
// tamper with (replace the ledger, a socket, a log).
var ErrUnsafeDir = errors.New("unsafe directory")

// prepareDir makes sure dir is the supervisor's own: when missing it is
// created with mode (given group gid first, when gid > 0); when present it
// must be a real directory (not a symbolic link), owned by the effective
// uid and writable by nobody else. what names it in errors ("run
// directory").
func prepareDir(what, dir string, mode os.FileMode, gid int) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return createDir(what, dir, mode, gid)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	return checkDir(what, dir, fi)
}

func createDir(what, dir string, mode os.FileMode, gid int) error {
	// Parents hold nothing but this directory; 0755 lets the group reach
	// it.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	// Born owner-only, then given its group, then its mode: never more
	// open than asked, whatever the umask.
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if gid > 0 {
		if err := os.Lchown(dir, -1, gid); err != nil {
			return fmt.Errorf("%s %s: chgrp %d: %w", what, dir, gid, err)
		}
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	return nil
}

func checkDir(what, dir string, fi os.FileInfo) error {
	euid := os.Geteuid()
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%w: %s %s is a symbolic link; give the real directory's path", ErrUnsafeDir, what, dir)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s %s is not a directory", ErrUnsafeDir, what, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != euid {
		return fmt.Errorf("%w: %s %s is owned by uid %d, not by the supervisor's uid %d; fix with: chown %d %s", ErrUnsafeDir, what, dir, st.Uid, euid, euid, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s %s has mode %#o: writable by group or others; fix with: chmod go-w %s", ErrUnsafeDir, what, dir, perm, dir)
	}
	return nil
}

// groupReachProblem says why members of group gid cannot reach sockets in
// dir, or "" when they can.
func groupReachProblem(dir string, gid int) string {
	fi, err := os.Stat(dir)
	if err != nil {
		return err.Error()
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	if int(st.Gid) != gid || fi.Mode().Perm()&0o010 == 0 {
		return fmt.Sprintf("%s is group %d mode %#o; members of group %d cannot reach the sockets in it (fix with: chgrp %d %s; chmod g+rx %s)",
			dir, st.Gid, fi.Mode().Perm(), gid, gid, dir, dir)
	}
	return ""
}
