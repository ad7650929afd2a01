// Package ram allocates guest RAM: a memfd backed by hugepages (2 MiB or
// 1 GiB) or by ordinary pages, bound to a NUMA node and pre-faulted, so that
// a short hugepage pool is reported before boot and never becomes a SIGBUS
// inside a running guest. The memfd can be shared with other processes.
package ram

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"rainforest/internal/units"
)

// ErrHugePages means the hugepage pool cannot hold the requested memory.
var ErrHugePages = errors.New("not enough free hugepages")

// ErrSize means the size is zero or not a multiple of the page size.
var ErrSize = errors.New("bad memory size")

// PageSize is the backing page size.
type PageSize uint64

// Supported page sizes.
const (
	Page4K PageSize = 4 << 10
	Page2M PageSize = 2 << 20
	Page1G PageSize = 1 << 30
)

// ParsePageSize parses a page size in the notation of internal/units
// ("4k", "2M", "2MiB", "1G", "4096"), or "none" for ordinary 4 KiB pages,
// and refuses sizes other than 4 KiB, 2 MiB and 1 GiB.
func ParsePageSize(s string) (PageSize, error) {
	if strings.EqualFold(strings.TrimSpace(s), "none") {
		return Page4K, nil
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, err
	}
	switch p := PageSize(n); p {
	case Page4K, Page2M, Page1G:
		return p, nil
	}
	return 0, fmt.Errorf("unsupported page size %q (use 4k, 2M or 1G)", s)
}

func (p PageSize) String() string {
	switch p {
	case Page4K:
		return "4 KiB"
	case Page2M:
		return "2 MiB"
	case Page1G:
		return "1 GiB"
	}
	return fmt.Sprintf("%d B", uint64(p))
}

// Huge reports whether p is a hugepage size.
func (p PageSize) Huge() bool { return p == Page2M || p == Page1G }

// Options says what to allocate.
type Options struct {
	Name     string   // memfd name, for /proc/PID/fd
	Size     uint64   // bytes, a multiple of PageSize
	PageSize PageSize // Page4K, Page2M or Page1G
	Node     int      // NUMA node to bind to, or -1 for none
	Prefault bool     // fault every page in now
	// NoReserve maps without reserving hugepages (MAP_NORESERVE) and
	// skips the pool check: memory plugged piecemeal later (Populate),
	// given back with Release.
	NoReserve bool
	SysRoot   string // sysfs root for pool checks ("/sys" when empty)
}

// RAM is an allocated, mapped memory region.
type RAM struct {
	Data     []byte
	File     *os.File // the memfd, for sharing
	PageSize PageSize
}

// Check verifies opts against the hugepage pool without allocating.
func Check(opts Options) error {
	if opts.Size == 0 || opts.Size%uint64(opts.PageSize) != 0 {
		return fmt.Errorf("%w: %d bytes is not a positive multiple of the %s page size", ErrSize, opts.Size, opts.PageSize)
	}
	if !opts.PageSize.Huge() {
		if opts.PageSize != Page4K {
			return fmt.Errorf("%w: unsupported page size %d", ErrSize, opts.PageSize)
		}
		return nil
	}
	if opts.NoReserve {
		return nil
	}
	need := opts.Size / uint64(opts.PageSize)
	free, where, err := FreeHugePages(opts.SysRoot, opts.PageSize, opts.Node)
	if err != nil {
		return err
	}
	if free < need {
		return fmt.Errorf("%w: need %d %s pages on %s, %d free (raise %s)", ErrHugePages, need, opts.PageSize, where, free,
			filepath.Join("/sys/kernel/mm/hugepages", poolDir(opts.PageSize), "nr_hugepages"))
	}
	return nil
}

func poolDir(p PageSize) string { return fmt.Sprintf("hugepages-%dkB", uint64(p)>>10) }

// FreeHugePages returns the pages of size p that a new mapping can take, on
// node (or machine-wide when node < 0), and a description of where.
func FreeHugePages(sysRoot string, p PageSize, node int) (uint64, string, error) {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	global := filepath.Join(sysRoot, "kernel/mm/hugepages", poolDir(p))
	free, err := readUint(filepath.Join(global, "free_hugepages"))
	if err != nil {
		return 0, "", fmt.Errorf("%w: the host has no %s hugepage pool (%v)", ErrHugePages, p, err)
	}
	resv, _ := readUint(filepath.Join(global, "resv_hugepages"))
	avail := uint64(0)
	if free > resv {
		avail = free - resv
	}
	if node < 0 {
		return avail, "the host", nil
	}
	nf, err := readUint(filepath.Join(sysRoot, fmt.Sprintf("devices/system/node/node%d/hugepages", node), poolDir(p), "free_hugepages"))
	if err != nil {
		// No per-node information (no NUMA): the global pool is all there is.
		return avail, fmt.Sprintf("node %d", node), nil
	}
	return min(nf, avail), fmt.Sprintf("node %d", node), nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// Allocate creates and maps the memory. On error nothing is left behind.
func Allocate(opts Options) (r *RAM, err error) {
	if err := Check(opts); err != nil {
		return nil, err
	}
	flags := unix.MFD_CLOEXEC
	switch opts.PageSize {
	case Page2M:
		flags |= unix.MFD_HUGETLB | unix.MFD_HUGE_2MB
	case Page1G:
		flags |= unix.MFD_HUGETLB | unix.MFD_HUGE_1GB
	}
	name := opts.Name
	if name == "" {
		name = "rf-guest-ram"
	}
	fd, err := unix.MemfdCreate(name, flags)
	if err != nil {
		return nil, fmt.Errorf("memfd_create(%s pages): %w", opts.PageSize, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := f.Truncate(int64(opts.Size)); err != nil {
		return nil, fmt.Errorf("size guest memory to %d bytes: %w", opts.Size, err)
	}
	mflags := unix.MAP_SHARED
	if opts.NoReserve {
		mflags |= unix.MAP_NORESERVE
	}
	data, err := unix.Mmap(fd, 0, int(opts.Size), unix.PROT_READ|unix.PROT_WRITE, mflags)
	if err != nil {
		if errors.Is(err, unix.ENOMEM) && opts.PageSize.Huge() {
			return nil, fmt.Errorf("%w: mapping %d bytes of %s pages: %v", ErrHugePages, opts.Size, opts.PageSize, err)
		}
		return nil, fmt.Errorf("mmap guest memory: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Munmap(data)
		}
	}()
	if opts.Node >= 0 {
		if err := bindNode(data, opts.Node); err != nil {
			return nil, err
		}
	}
	if opts.Prefault {
		if err := populate(data); err != nil {
			return nil, err
		}
	}
	return &RAM{Data: data, File: f, PageSize: opts.PageSize}, nil
}

// populate faults every page in. MADV_POPULATE_WRITE reports a short pool as
// an error rather than a SIGBUS.
func populate(data []byte) error {
	err := unix.Madvise(data, unix.MADV_POPULATE_WRITE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EFAULT) || errors.Is(err, unix.EHWPOISON) {
		return fmt.Errorf("%w: pre-faulting guest memory: %v", ErrHugePages, err)
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("pre-fault guest memory: %w", err)
	}
	// Kernels before 5.14: touch each 4 KiB page (a hugepage is touched
	// several times, which is harmless).
	for i := 0; i < len(data); i += 4096 {
		data[i] = 0
	}
	return nil
}

// Populate faults in the pages of [off, off+size) (multiples of the page
// size): a short hugepage pool is an error wrapping ErrHugePages, never a
// SIGBUS later.
func (r *RAM) Populate(off, size uint64) error {
	b, err := r.span(off, size)
	if err != nil {
		return err
	}
	return populate(b)
}

// Release gives the pages of [off, off+size) (multiples of the page size)
// back to the host by punching a hole in the memfd; the range reads as
// zeros afterwards and takes pages again when touched.
func (r *RAM) Release(off, size uint64) error {
	if _, err := r.span(off, size); err != nil {
		return err
	}
	if size == 0 {
		return nil
	}
	if err := unix.Fallocate(int(r.File.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(size)); err != nil {
		return fmt.Errorf("release guest memory %#x+%#x: %w", off, size, err)
	}
	return nil
}

// Protect makes the pages of [off, off+size) (multiples of the page
// size) readable and writable (access) or inaccessible to this process
// and to KVM: a guest (or a device model) touching an inaccessible page
// faults instead of taking a page from the pool.
func (r *RAM) Protect(off, size uint64, access bool) error {
	b, err := r.span(off, size)
	if err != nil || size == 0 {
		return err
	}
	prot := unix.PROT_NONE
	if access {
		prot = unix.PROT_READ | unix.PROT_WRITE
	}
	if err := unix.Mprotect(b, prot); err != nil {
		return fmt.Errorf("protect guest memory %#x+%#x: %w", off, size, err)
	}
	return nil
}

// span returns [off, off+size) of the memory, checked to be page-aligned
// and inside it.
func (r *RAM) span(off, size uint64) ([]byte, error) {
	ps := uint64(r.PageSize)
	if off%ps != 0 || size%ps != 0 || off > uint64(len(r.Data)) || size > uint64(len(r.Data))-off {
		return nil, fmt.Errorf("%w: range %#x+%#x of %#x bytes of %s pages", ErrSize, off, size, len(r.Data), r.PageSize)
	}
	return r.Data[off : off+size], nil
}

// Close unmaps the memory and closes the memfd.
func (r *RAM) Close() error {
	if r == nil || r.Data == nil {
		return nil
	}
	err := unix.Munmap(r.Data)
	r.Data = nil
	return errors.Join(err, r.File.Close())
}
