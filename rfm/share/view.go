package share

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ReadOnlyView bind-mounts directory src read-only at dst (a directory it
// creates, 0700), for virtiofsd to serve a read-only share from: the host
// kernel then refuses every write through it with EROFS, whatever
// virtiofsd is asked. The bind is not recursive: file systems mounted
// under src do not show through it (their mount points are empty
// directories), so nothing writable does. The mount is private: nothing
// later mounted under it elsewhere shows in it. Undo with RemoveView.
func ReadOnlyView(src, dst string) (err error) {
	if err := os.Mkdir(dst, 0o700); err != nil && !os.IsExist(err) {
		return fmt.Errorf("read-only view of %s: %w", src, err)
	}
	mounted := false
	defer func() {
		if err != nil {
			if mounted {
				_ = unix.Unmount(dst, unix.MNT_DETACH)
			}
			_ = os.Remove(dst)
		}
	}()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("read-only view of %s: bind mount at %s: %w", src, dst, err)
	}
	mounted = true
	if err := unix.Mount("", dst, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("read-only view of %s: make %s private: %w", src, dst, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("read-only view of %s: remount %s read-only: %w", src, dst, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dst, &st); err != nil {
		return fmt.Errorf("read-only view of %s: %w", src, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return fmt.Errorf("read-only view of %s: %s is still writable after the read-only remount", src, dst)
	}
	return nil
}

// RemoveView unmounts a view ReadOnlyView made at dst and removes its
// directory; a view already gone is not an error.
func RemoveView(dst string) error {
	err := unix.Unmount(dst, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(dst, unix.MNT_DETACH) // still open somewhere: detach it
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove read-only view %s: %w", dst, err)
	}
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove read-only view %s: %w", dst, err)
	}
	return nil
}
