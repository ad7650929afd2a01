package blk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Kind is the type of file backing a disk.
type Kind uint8

// The kinds of file a disk can be backed by.
const (
	KindFile        Kind = iota + 1 // a regular file (raw image)
	KindBlockDevice                 // a block device (LVM volume, partition, loop device, ...)
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "regular file"
	case KindBlockDevice:
		return "block device"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// ZeroMethod is how a device carries out write-zeroes requests.
type ZeroMethod uint8

// The write-zeroes methods.
const (
	ZeroNone        ZeroMethod = iota // write-zeroes not offered
	ZeroRange                         // fallocate(FALLOC_FL_ZERO_RANGE) on a regular file
	ZeroWrite                         // writing zero-filled buffers (the file system lacks ZERO_RANGE)
	ZeroBlockDevice                   // the BLKZEROOUT ioctl on a block device
)

func (m ZeroMethod) String() string {
	switch m {
	case ZeroNone:
		return "none"
	case ZeroRange:
		return "fallocate zero-range"
	case ZeroWrite:
		return "writing zeroes"
	case ZeroBlockDevice:
		return "BLKZEROOUT"
	}
	return "ZeroMethod(" + strconv.Itoa(int(m)) + ")"
}

var (
	// ErrFileType is returned for a disk path that is neither a regular
	// file nor a block device.
	ErrFileType = errors.New("not a regular file or block device")
	// ErrDirectUnsupported is returned when Direct is asked for on a
	// file whose file system rejects O_DIRECT.
	ErrDirectUnsupported = errors.New("direct I/O (O_DIRECT) not supported")
	// ErrDirectSize is returned when Direct is asked for on a file whose
	// size is not a multiple of its direct I/O alignment (its last block
	// could not be written without growing the file).
	ErrDirectSize = errors.New("size not a multiple of the direct I/O alignment")
	// ErrBlockSize is returned for a block device whose logical block
	// size is not a power of two between 512 bytes and MaxBlockSize.
	ErrBlockSize = errors.New("unsupported logical block size")
)

const (
	// MaxBlockSize is the largest logical block size (and direct I/O
	// alignment) a device accepts.
	MaxBlockSize = 64 << 10
	// bounceSize is the size of the aligned buffer direct I/O goes
	// through.
	bounceSize = 1 << 20
	// zeroBufSize is the size of the zero buffer written when
	// write-zeroes is carried out by writing.
	zeroBufSize = 256 << 10
)

// CheckPath returns nil when path (after symbolic links) is a regular
// file or a block device, the files a disk can be backed by, and an error
// naming the path and its type otherwise (ErrFileType) or when it cannot
// be examined.
func CheckPath(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	_, err = kindOf(path, st.Mode())
	return err
}

func kindOf(path string, m fs.FileMode) (Kind, error) {
	var what string
	switch {
	case m.IsRegular():
		return KindFile, nil
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
		return KindBlockDevice, nil
	case m.IsDir():
		what = "a directory"
	case m&fs.ModeCharDevice != 0:
		what = "a character device"
	case m&fs.ModeNamedPipe != 0:
		what = "a FIFO"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeSymlink != 0:
		what = "a symbolic link"
	default:
		what = "an irregular file"
	}
	return 0, fmt.Errorf("%s is %s, %w", path, what, ErrFileType)
}

// Open opens path, a regular file or a block device (see CheckPath),
// read-write unless opts.ReadOnly, with O_DIRECT when opts.Direct, and
// returns a device serving it; Close closes the file.
func Open(path string, opts Options) (*Device, error) {
	if err := CheckPath(path); err != nil {
		// Checked before opening: opening a FIFO would block.
		return nil, fmt.Errorf("blk: %w", err)
	}
	flag := os.O_RDWR
	if opts.ReadOnly || blockDeviceReadOnly(path) {
		flag = os.O_RDONLY
	}
	if opts.Direct {
		flag |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		if opts.Direct && errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("blk: %s: %w by its file system%s", path, ErrDirectUnsupported, pathFSName(path))
		}
		return nil, fmt.Errorf("blk: %w", err)
	}
	d, err := New(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	d.owned = true
	return d, nil
}

// Adopt serves f, a disk's backing opened by someone else (the supervisor
// of a jailed VMM: read-only or with O_DIRECT as the disk asks), like Open
// serves a path; the device takes charge of f (closed on error too).
func Adopt(f *os.File, opts Options) (*Device, error) {
	st, err := f.Stat()
	if err == nil {
		_, err = kindOf(f.Name(), st.Mode())
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blk: %w", err)
	}
	opts.probeByFD = true
	d, err := New(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	d.owned = true
	return d, nil
}

// blockDeviceReadOnly reports whether path is a read-only block device
// (BLKROGET); false when it is not a block device or cannot be asked.
func blockDeviceReadOnly(path string) bool {
	st, err := os.Stat(path)
	if err != nil || st.Mode()&fs.ModeDevice == 0 || st.Mode()&fs.ModeCharDevice != 0 {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	ro, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKROGET)
	return err == nil && ro != 0
}

// pathFSName names the file system holding path, for error messages.
func pathFSName(path string) string {
	var s unix.Statfs_t
	if unix.Statfs(path, &s) != nil {
		return ""
	}
	return fsTypeName(s.Type)
}

// Info describes how a device is backed and what it offers the driver.
type Info struct {
	Path string
	Kind Kind
	// Size is the disk size in bytes (the capacity times 512).
	Size int64
	// LogicalBlockSize is the device's logical block size (blk_size):
	// 512 for regular files, BLKSSZGET for block devices.
	LogicalBlockSize uint32
	// ReadOnly is set when asked for, when the file was opened read-only
	// or when the block device is read-only (BLKROGET).
	ReadOnly bool
	// Direct is set for I/O with O_DIRECT; every transfer then has its
	// offset, length and buffer aligned to DirectAlign bytes.
	Direct      bool
	DirectAlign int
	// Discard is set when discard requests are offered: fallocate
	// (PUNCH_HOLE) on regular files, BLKDISCARD on block devices.
	Discard bool
	// WriteZeroes is how write-zeroes requests are carried out (ZeroNone:
	// not offered); WriteZeroesMayUnmap is set when a write-zeroes
	// request with the unmap flag may deallocate (punch a hole).
	WriteZeroes         ZeroMethod
	WriteZeroesMayUnmap bool
}

// backing is the open file a device reads and writes.
type backing struct {
	f    *os.File
	info Info
	// aligned does the I/O when the file was opened with O_DIRECT.
	aligned *alignedIO
	// maxDiscard and maxZeroes bound one segment, in sectors;
	// discardAlign is the discard granularity in sectors.
	maxDiscard, discardAlign, maxZeroes uint32
	zeros                               []byte // for ZeroWrite, allocated on first use
}

// newBacking examines the open file f: its type, size, block size,
// access mode, direct I/O and what discard and write-zeroes it supports.
func newBacking(f *os.File, opts Options) (*backing, error) {
	name := f.Name()
	fd := int(f.Fd())
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	kind, err := kindOf(name, fi.Mode())
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no stat information", name)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: file flags: %w", name, err)
	}
	b := &backing{f: f, info: Info{
		Path:             name,
		Kind:             kind,
		LogicalBlockSize: SectorSize,
		ReadOnly:         opts.ReadOnly || fl&unix.O_ACCMODE == unix.O_RDONLY,
		Direct:           fl&unix.O_DIRECT != 0,
	}}
	if opts.Direct && !b.info.Direct {
		return nil, fmt.Errorf("%s: Direct asked for but the file was opened without O_DIRECT", name)
	}
	size := st.Size
	if kind == KindBlockDevice {
		sz, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		if err != nil {
			return nil, fmt.Errorf("%s: BLKGETSIZE64: %w", name, err)
		}
		size = int64(min(sz, 1<<62))
		lbs, err := unix.IoctlGetInt(fd, unix.BLKSSZGET)
		if err != nil {
			return nil, fmt.Errorf("%s: BLKSSZGET: %w", name, err)
		}
		if lbs < SectorSize || lbs > MaxBlockSize || lbs&(lbs-1) != 0 {
			return nil, fmt.Errorf("%s: %w: %d bytes", name, ErrBlockSize, lbs)
		}
		b.info.LogicalBlockSize = uint32(lbs)
		ro, err := unix.IoctlGetInt(fd, unix.BLKROGET)
		if err != nil {
			return nil, fmt.Errorf("%s: BLKROGET: %w", name, err)
		}
		if ro != 0 {
			b.info.ReadOnly = true
		}
	}
	b.info.Size = size &^ (SectorSize - 1)
	if b.info.Direct {
		if err := b.setupDirect(fd, size); err != nil {
			return nil, err
		}
	}
	if !b.info.ReadOnly {
		if kind == KindBlockDevice {
			b.probeBlockDevice(st.Rdev)
		} else if opts.probeByFD {
			b.probeOwnFile(fd, size, st.Blksize)
		} else {
			b.probeFile(filepath.Dir(name), st.Blksize)
		}
	}
	return b, nil
}

// setupDirect finds the direct I/O alignment, checks that the file takes
// O_DIRECT transfers and allocates the bounce buffer.
func (b *backing) setupDirect(fd int, size int64) error {
	name := b.info.Path
	align := int64(b.info.LogicalBlockSize)
	memAlign := int64(os.Getpagesize())
	var sx unix.Statx_t
	err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx)
	switch {
	case err == nil && sx.Mask&unix.STATX_DIOALIGN != 0:
		if sx.Dio_offset_align == 0 {
			return fmt.Errorf("%s: %w by its file system%s", name, ErrDirectUnsupported, fsName(fd))
		}
		align = max(align, int64(sx.Dio_offset_align))
		memAlign = max(memAlign, int64(sx.Dio_mem_align))
	case b.info.Kind == KindFile:
		// The file system does not say: the page size is a multiple
		// of every block size it can need.
		align = max(align, int64(os.Getpagesize()))
	}
	if align > MaxBlockSize || align&(align-1) != 0 || memAlign > MaxBlockSize || memAlign&(memAlign-1) != 0 {
		return fmt.Errorf("%s: direct I/O alignment of %d bytes (memory %d): %w", name, align, memAlign, ErrBlockSize)
	}
	if size%align != 0 {
		return fmt.Errorf("%s: %w: %d bytes, alignment %d", name, ErrDirectSize, size, align)
	}
	b.aligned = &alignedIO{f: b.f, align: align, bounce: alignedBuffer(bounceSize, int(max(memAlign, align)))}
	b.info.DirectAlign = int(align)
	// Some file systems accept O_DIRECT at open and refuse the I/O.
	if size >= align {
		if _, err := b.f.ReadAt(b.aligned.bounce[:align], 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("%s: %w by its file system%s: %w", name, ErrDirectUnsupported, fsName(fd), err)
			}
			return fmt.Errorf("%s: direct read: %w", name, err)
		}
	}
	return nil
}

// fsName names the file system holding fd, for error messages.
func fsName(fd int) string {
	var s unix.Statfs_t
	if unix.Fstatfs(fd, &s) != nil {
		return ""
	}
	return fsTypeName(s.Type)
}

// fsTypeName returns " (name)" for a statfs file system type.
func fsTypeName(typ int64) string {
	names := map[int64]string{
		unix.TMPFS_MAGIC:           "tmpfs",
		unix.RAMFS_MAGIC:           "ramfs",
		unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
		unix.FUSE_SUPER_MAGIC:      "fuse",
		unix.NFS_SUPER_MAGIC:       "nfs",
		unix.PROC_SUPER_MAGIC:      "proc",
		unix.SYSFS_MAGIC:           "sysfs",
	}
	if n, ok := names[typ]; ok {
		return " (" + n + ")"
	}
	return fmt.Sprintf(" (type %#x)", typ)
}

// probeFile finds the fallocate modes of the file system holding the
// image (in dir) by trying them on an unnamed temporary file there, so the
// image itself is never touched; when no such file can be made, discard
// is not offered and write-zeroes writes zeroes.
func (b *backing) probeFile(dir string, fsBlock int64) {
	punch, zero := probeFallocate(dir)
	b.setFallocateModes(punch, zero, fsBlock)
}

// setFallocateModes offers discard and write-zeroes by the file system's
// fallocate modes.
func (b *backing) setFallocateModes(punch, zero bool, fsBlock int64) {
	const maxSectors = maxSegmentBytes / SectorSize
	b.maxZeroes = maxSectors
	b.info.WriteZeroes = ZeroWrite
	if zero {
		b.info.WriteZeroes = ZeroRange
	} else {
		b.maxZeroes = maxZeroWriteBytes / SectorSize
	}
	if punch {
		b.info.Discard = true
		b.info.WriteZeroesMayUnmap = true
		b.maxDiscard = maxSectors
		b.discardAlign = 1
		if fsBlock > SectorSize && fsBlock <= MaxBlockSize && fsBlock&(fsBlock-1) == 0 {
			b.discardAlign = uint32(fsBlock / SectorSize)
		}
	}
}

// probeOwnFile is probeFile for a file known only by its descriptor: it
// punches a hole past the end of the file (KEEP_SIZE), which changes
// neither its size nor its data, to learn whether the file system can
// discard. ZERO_RANGE past the end would allocate blocks there, so it is
// not tried and write-zeroes writes zeroes.
func (b *backing) probeOwnFile(fd int, size, fsBlock int64) {
	const n = 64 << 10
	off := (size + 2*n - 1) / n * n
	punch := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil
	b.setFallocateModes(punch, false, fsBlock)
}

// probeFallocate reports whether the file system holding dir supports
// fallocate's PUNCH_HOLE and ZERO_RANGE modes (both with KEEP_SIZE).
func probeFallocate(dir string) (punch, zero bool) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return false, false
	}
	defer unix.Close(fd)
	const n = 64 << 10
	if unix.Ftruncate(fd, n) != nil {
		return false, false
	}
	punch = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, n) == nil
	zero = unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 0, n) == nil
	return punch, zero
}

// probeBlockDevice reads the device's discard and write-zeroes limits
// from sysfs (queue/discard_max_bytes, discard_granularity,
// write_zeroes_max_bytes); a limit of 0 or one that cannot be read means
// the operation is not offered.
func (b *backing) probeBlockDevice(rdev uint64) {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))
	lbsSectors := b.info.LogicalBlockSize / SectorSize
	if v := queueLimit(dir, "discard_max_bytes") / SectorSize; v > 0 {
		gran := uint32(min(queueLimit(dir, "discard_granularity")/SectorSize, MaxBlockSize/SectorSize))
		if gran == 0 || gran&(gran-1) != 0 {
			gran = 1
		}
		b.discardAlign = max(gran, lbsSectors)
		b.maxDiscard = roundDown(uint32(min(v, maxSegmentBytes/SectorSize)), b.discardAlign)
		b.info.Discard = b.maxDiscard > 0
	}
	if v := queueLimit(dir, "write_zeroes_max_bytes") / SectorSize; v > 0 {
		b.maxZeroes = roundDown(uint32(min(v, maxSegmentBytes/SectorSize)), lbsSectors)
		if b.maxZeroes > 0 {
			b.info.WriteZeroes = ZeroBlockDevice
		}
	}
}

// queueLimit reads a number from the block device's queue directory in
// sysfs (the parent device's for a partition); 0 when unreadable.
func queueLimit(dev, name string) uint64 {
	// No filepath.Join: "dev/../queue" must go through the symbolic
	// link dev, not be cleaned away.
	for _, p := range []string{dev + "/queue/" + name, dev + "/../queue/" + name} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			return 0
		}
		return v
	}
	return 0
}

func roundDown(v, align uint32) uint32 {
	if align <= 1 {
		return v
	}
	return v - v%align
}

// read fills dst from the disk at byte offset off.
func (b *backing) read(dst [][]byte, off int64) error {
	if b.aligned != nil {
		return b.aligned.read(dst, off)
	}
	for _, p := range dst {
		if _, err := b.f.ReadAt(p, off); err != nil {
			return err
		}
		off += int64(len(p))
	}
	return nil
}

// write writes src to the disk at byte offset off.
func (b *backing) write(src [][]byte, off int64) error {
	if b.aligned != nil {
		return b.aligned.write(src, off)
	}
	for _, p := range src {
		if _, err := b.f.WriteAt(p, off); err != nil {
			return err
		}
		off += int64(len(p))
	}
	return nil
}

// flush makes every completed write stable.
func (b *backing) flush() error {
	return ignoringEINTR(func() error { return unix.Fdatasync(int(b.f.Fd())) })
}

// discard deallocates n bytes at off. A file or device that turns out not
// to discard leaves the data: discard is only a hint.
func (b *backing) discard(off, n int64) error {
	fd := int(b.f.Fd())
	var err error
	if b.info.Kind == KindBlockDevice {
		err = blockRangeIoctl(fd, unix.BLKDISCARD, uint64(off), uint64(n))
	} else {
		err = ignoringEINTR(func() error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		})
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// writeZeroes zeroes n bytes at off; with unmap it may deallocate them.
func (b *backing) writeZeroes(off, n int64, unmap bool) error {
	fd := int(b.f.Fd())
	switch b.info.WriteZeroes {
	case ZeroBlockDevice:
		return blockRangeIoctl(fd, unix.BLKZEROOUT, uint64(off), uint64(n))
	case ZeroRange:
		mode := unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
		if unmap && b.info.WriteZeroesMayUnmap {
			mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		}
		err := ignoringEINTR(func() error { return unix.Fallocate(fd, uint32(mode), off, n) })
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		// Not for this file after all: write the zeroes.
	case ZeroWrite:
		if unmap && b.info.WriteZeroesMayUnmap {
			err := ignoringEINTR(func() error {
				return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
			})
			if !errors.Is(err, unix.EOPNOTSUPP) {
				return err
			}
		}
	default:
		return errors.ErrUnsupported
	}
	if b.zeros == nil {
		b.zeros = make([]byte, zeroBufSize)
	}
	for n > 0 {
		c := min(n, int64(len(b.zeros)))
		if err := b.write([][]byte{b.zeros[:c]}, off); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
