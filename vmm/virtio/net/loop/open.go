package loop

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"rainforest/vmm/eventfd"
)

// hugePageSize is what a lane's memfd may be rounded up to (rfm/region
// makes 2 MiB hugetlb memfds when the pool has pages).
const hugePageSize = 2 << 20

// Files are a member's descriptors, in member order: every member's lane
// region (rfm/region's memfd laid out as LaneRegion: this member's
// read-write, the others' read-only) and every member's doorbell (an
// eventfd).
type Files struct {
	Lanes []*os.File
	Bells []*os.File
}

// Close closes every file.
func (f Files) Close() {
	for _, x := range append(append([]*os.File(nil), f.Lanes...), f.Bells...) {
		if x != nil {
			x.Close()
		}
	}
}

// Open returns member cfg.Self's backend on its descriptors: it maps its
// own lane read-write and the others read-only (each memfd sealed against
// shrinking, of the size LaneRegion gives, or that rounded up to a 2 MiB
// page), and signals and waits on the doorbells. It takes charge of
// files: Close releases them, and so does a failure.
func Open(cfg Config, files Files) (_ *Backend, err error) {
	var maps [][]byte
	release := func() error {
		var errs []error
		for _, m := range maps {
			errs = append(errs, unix.Munmap(m))
		}
		files.Close()
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := len(cfg.Members)
	if len(files.Lanes) != n || len(files.Bells) != n {
		return nil, fmt.Errorf("%w: %d lanes and %d doorbells for %d members", ErrConfig, len(files.Lanes), len(files.Bells), n)
	}
	region, err := LaneRegion(n, cfg.slots())
	if err != nil {
		return nil, err
	}
	off, size := region.OutputOffset(0), region.OutputSize
	lanes := make([][]byte, n)
	for i, f := range files.Lanes {
		m, err := mapLane(f, region.Size(), i == cfg.Self)
		if err != nil {
			return nil, fmt.Errorf("loop %s: lane of member %d (%s): %w", cfg.Network, i, cfg.Members[i].Name, err)
		}
		maps = append(maps, m)
		lanes[i] = m[off : off+size : off+size]
	}
	bells := make([]*eventfd.EventFD, n)
	for i, f := range files.Bells {
		fd, err := rawFD(f)
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			return nil, fmt.Errorf("loop %s: doorbell of member %d (%s): %w", cfg.Network, i, cfg.Members[i].Name, err)
		}
		bells[i] = eventfd.Borrow(fd)
	}
	b, err := New(cfg, lanes, bells)
	if err != nil {
		return nil, err
	}
	b.release = release
	return b, nil
}

// mapLane maps a lane region's memfd whole, read-write when own.
func mapLane(f *os.File, size uint64, own bool) ([]byte, error) {
	if f == nil {
		return nil, errors.New("no descriptor")
	}
	fd, err := rawFD(f)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	max := (size + hugePageSize - 1) / hugePageSize * hugePageSize
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 0 || uint64(st.Size) < size || uint64(st.Size) > max {
		return nil, fmt.Errorf("%w: a file of %d bytes (mode %#o), want a memfd of %d to %d", ErrConfig, st.Size, st.Mode, size, max)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("%w: not a memfd sealed against shrinking (seals %#x, %v)", ErrConfig, seals, err)
	}
	prot := unix.PROT_READ
	if own {
		prot |= unix.PROT_WRITE
	}
	m, err := unix.Mmap(fd, 0, int(st.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	return m, nil
}

// rawFD returns f's descriptor without os.File.Fd's side effect (it makes
// the descriptor blocking); it stays valid while f is open.
func rawFD(f *os.File) (int, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := sc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}
