package images

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
)

// ErrBadArchive is returned by ReadArchive for input that is not a valid
// newc cpio archive.
var ErrBadArchive = errors.New("images: malformed newc cpio archive")

// cpio "newc" header constants.
const (
	newcMagic      = "070701"
	newcHeaderSize = 110
	newcTrailer    = "TRAILER!!!"

	modeTypeMask = 0o170000
	modeDir      = 0o040000
	modeRegular  = 0o100000
	modeSymlink  = 0o120000
)

// Entry is one member of an Archive. Exactly one of Data, Source or
// LinkTarget is meaningful, depending on the kind of entry.
type Entry struct {
	// Path inside the archive, without a leading slash ("bin/sh").
	Path string
	// Mode holds the permission bits and the file type bits (S_IFDIR,
	// S_IFREG, S_IFLNK).
	Mode uint32
	// Data is the content of a regular file held in memory.
	Data []byte
	// Source is a host file whose content is streamed when the archive is
	// written (used for large files such as kernels).
	Source string
	// LinkTarget is the target of a symbolic link.
	LinkTarget string
}

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Mode&modeTypeMask == modeDir }

// IsSymlink reports whether the entry is a symbolic link.
func (e *Entry) IsSymlink() bool { return e.Mode&modeTypeMask == modeSymlink }

// Archive collects the members of an initramfs and writes them as a
// deterministic newc cpio archive: entries sorted by path, all timestamps 0,
// owner and group 0, inode numbers assigned in order. Parent directories are
// created implicitly.
type Archive struct {
	entries map[string]*Entry
}

// NewArchive returns an empty archive.
func NewArchive() *Archive {
	return &Archive{entries: make(map[string]*Entry)}
}

func cleanArchivePath(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" || c == "." {
		return "", fmt.Errorf("images: invalid archive path %q", p)
	}
	return c, nil
}

func (a *Archive) add(e *Entry) error {
	p, err := cleanArchivePath(e.Path)
	if err != nil {
		return err
	}
	e.Path = p
	for dir := path.Dir(p); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if old, ok := a.entries[dir]; ok {
			if !old.IsDir() {
				return fmt.Errorf("images: %q is not a directory in the archive", dir)
			}
			continue
		}
		a.entries[dir] = &Entry{Path: dir, Mode: modeDir | 0o755}
	}
	if old, ok := a.entries[p]; ok && old.IsDir() && e.IsDir() {
		old.Mode = e.Mode
		return nil
	}
	a.entries[p] = e
	return nil
}

// AddDir adds a directory with permission bits perm.
func (a *Archive) AddDir(p string, perm fs.FileMode) error {
	return a.add(&Entry{Path: p, Mode: modeDir | uint32(perm.Perm())})
}

// AddFile adds a regular file with the given content and permission bits.
func (a *Archive) AddFile(p string, perm fs.FileMode, data []byte) error {
	return a.add(&Entry{Path: p, Mode: modeRegular | uint32(perm.Perm()), Data: data})
}

// AddHostFile adds a regular file whose content is read from the host file
// src when the archive is written. The permission bits are taken from perm.
func (a *Archive) AddHostFile(p string, perm fs.FileMode, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("images: archive source: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("images: archive source %s is not a regular file", src)
	}
	return a.add(&Entry{Path: p, Mode: modeRegular | uint32(perm.Perm()), Source: src})
}

// AddSymlink adds a symbolic link p pointing to target.
func (a *Archive) AddSymlink(p, target string) error {
	return a.add(&Entry{Path: p, Mode: modeSymlink | 0o777, LinkTarget: target})
}

// Entries returns the archive's members sorted by path.
func (a *Archive) Entries() []*Entry {
	out := make([]*Entry, 0, len(a.entries))
	for _, e := range a.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// WriteTo writes the archive in newc format to w.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countingWriter{w: bw}
	var ino uint32 = 1
	for _, e := range a.Entries() {
		if err := writeEntry(cw, e, ino); err != nil {
			return cw.n, err
		}
		ino++
	}
	if err := writeHeader(cw, newcTrailer, 0, 0, 0, 1); err != nil {
		return cw.n, err
	}
	// Pad the archive to a multiple of 512 bytes like cpio(1) does.
	if rem := cw.n % 512; rem != 0 {
		if _, err := cw.Write(make([]byte, 512-rem)); err != nil {
			return cw.n, err
		}
	}
	if err := bw.Flush(); err != nil {
		return cw.n, fmt.Errorf("images: write archive: %w", err)
	}
	return cw.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) pad4() error {
	if rem := c.n % 4; rem != 0 {
		_, err := c.Write(make([]byte, 4-rem))
		return err
	}
	return nil
}

func writeHeader(cw *countingWriter, name string, ino, mode uint32, size int64, nlink uint32) error {
	if size > 0xFFFFFFFF {
		return fmt.Errorf("images: %s: file too large for newc cpio", name)
	}
	hdr := fmt.Sprintf("%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		newcMagic, ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, 0, 0, len(name)+1, 0)
	if _, err := io.WriteString(cw, hdr); err != nil {
		return fmt.Errorf("images: write archive: %w", err)
	}
	if _, err := io.WriteString(cw, name+"\x00"); err != nil {
		return fmt.Errorf("images: write archive: %w", err)
	}
	return cw.pad4()
}

func writeEntry(cw *countingWriter, e *Entry, ino uint32) error {
	var size int64
	switch {
	case e.IsSymlink():
		size = int64(len(e.LinkTarget))
	case e.IsDir():
	case e.Source != "":
		st, err := os.Stat(e.Source)
		if err != nil {
			return fmt.Errorf("images: archive source: %w", err)
		}
		size = st.Size()
	default:
		size = int64(len(e.Data))
	}
	nlink := uint32(1)
	if e.IsDir() {
		nlink = 2
	}
	if err := writeHeader(cw, e.Path, ino, e.Mode, size, nlink); err != nil {
		return err
	}
	switch {
	case e.IsSymlink():
		if _, err := io.WriteString(cw, e.LinkTarget); err != nil {
			return fmt.Errorf("images: write archive: %w", err)
		}
	case e.IsDir():
	case e.Source != "":
		f, err := os.Open(e.Source)
		if err != nil {
			return fmt.Errorf("images: archive source: %w", err)
		}
		n, err := io.Copy(cw, io.LimitReader(f, size))
		f.Close()
		if err != nil {
			return fmt.Errorf("images: copy %s: %w", e.Source, err)
		}
		if n != size {
			return fmt.Errorf("images: %s changed size while archiving", e.Source)
		}
	default:
		if _, err := cw.Write(e.Data); err != nil {
			return fmt.Errorf("images: write archive: %w", err)
		}
	}
	return cw.pad4()
}

// ReadArchive parses a newc cpio archive (uncompressed) into its entries, in
// archive order, stopping at the trailer. File contents are returned in
// Entry.Data, link targets in Entry.LinkTarget.
func ReadArchive(r io.Reader) ([]*Entry, error) {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int64) ([]byte, error) {
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadArchive, err)
		}
		off += n
		return buf, nil
	}
	skipPad := func() error {
		if rem := off % 4; rem != 0 {
			_, err := read(4 - rem)
			return err
		}
		return nil
	}
	var out []*Entry
	for {
		hdr, err := read(newcHeaderSize)
		if err != nil {
			return nil, err
		}
		if string(hdr[:6]) != newcMagic {
			return nil, fmt.Errorf("%w: bad magic at offset %d", ErrBadArchive, off-newcHeaderSize)
		}
		field := func(i int) (uint32, error) {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return 0, fmt.Errorf("%w: header field %d: %v", ErrBadArchive, i, err)
			}
			return uint32(v), nil
		}
		mode, err := field(1)
		if err != nil {
			return nil, err
		}
		size, err := field(6)
		if err != nil {
			return nil, err
		}
		nameSize, err := field(11)
		if err != nil {
			return nil, err
		}
		if nameSize == 0 || nameSize > 4096 {
			return nil, fmt.Errorf("%w: name size %d", ErrBadArchive, nameSize)
		}
		name, err := read(int64(nameSize))
		if err != nil {
			return nil, err
		}
		if err := skipPad(); err != nil {
			return nil, err
		}
		n := strings.TrimRight(string(name), "\x00")
		if n == newcTrailer {
			return out, nil
		}
		if size > 1<<30 {
			return nil, fmt.Errorf("%w: %s: size %d", ErrBadArchive, n, size)
		}
		data, err := read(int64(size))
		if err != nil {
			return nil, err
		}
		if err := skipPad(); err != nil {
			return nil, err
		}
		e := &Entry{Path: n, Mode: mode}
		if e.IsSymlink() {
			e.LinkTarget = string(data)
		} else {
			e.Data = data
		}
		out = append(out, e)
	}
}
