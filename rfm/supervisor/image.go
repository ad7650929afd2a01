package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// System images. A spec with Image (a raw root disk such as the Debian
// system image, `rfimage --image debian`) gets a copy of its own in the
// state directory (the guest writes to it), as its first disk, booted
// with root=/dev/vda; the copy goes with the subOS.

// imageDiskID is the device id of a subOS's copy of its image.
const imageDiskID = "root"

// imageCopyPath is where subOS name's copy of its image lives.
func (s *Supervisor) imageCopyPath(name string) string {
	return filepath.Join(s.cfg.StateDir, "disks", name+".img")
}

// copyImage makes subOS name's copy of image: a reflink where the file
// system can, else a copy that keeps the image's holes. On error nothing
// is left.
func (s *Supervisor) copyImage(name, image string) (path string, err error) {
	src, err := os.Open(image)
	if err != nil {
		return "", fmt.Errorf("%w: image: %w", ErrInvalid, err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: image %s is not a regular file", ErrInvalid, image)
	}
	path = s.imageCopyPath(name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("image copy: %w", err)
	}
	defer func() {
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil {
		return path, nil
	}
	if err := copySparse(dst, src, st.Size()); err != nil {
		return "", fmt.Errorf("image copy: %w", err)
	}
	return path, nil
}

// copySparse copies the size bytes of src to dst, its data extents only
// (SEEK_DATA/SEEK_HOLE), so holes stay holes.
func copySparse(dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := src.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := dst.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(dst, src, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
