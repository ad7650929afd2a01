// Package region is the supervisor's host side of the shared-memory regions
// it owns: each region is one sealed memfd, mapped read-write in the
// supervisor, plus one eventfd per (peer, vector) used as doorbells. The
// supervisor hands a region's memfd and eventfds to the VMM of every subOS
// that is a member (see rfm/vmmctl); each VMM gives its guest one
// shared-memory PCI function (vmm/shmem) over them.
//
// Two protocols exist (abi.ProtocolFICM, abi.ProtocolSegment). The FICM
// group is laid out by FICMLayout; its peer 0 is the supervisor itself, run
// by Host. A segment is laid out by SegmentLayout; the supervisor is not a
// peer of it and only creates, hands out and reclaims it.
//
// A Region's Memory stays mapped until Close; using it (or a Host over it)
// after Close is a bug. Ring and Wait are safe for concurrent use and fail
// with ErrClosed after Close.
package region

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"rainforest/ficm/board"
	"rainforest/ficm/endpoint"
	"rainforest/internal/fdwait"
	"rainforest/vmm/shmem/abi"
)

const (
	// MaxBells bounds Peers*Vectors so that a region's memfd and
	// eventfds fit in one VMM control message (253 descriptors).
	MaxBells = 252
	// FICMSlots is the slot count of every FICM ring.
	FICMSlots = 64
	// InfoPageSize is the size of the info page at the start of every
	// FICM output section (the board in the supervisor's).
	InfoPageSize = board.PageSize
	// SegmentOutputSize is the (unused) output section size of a segment.
	SegmentOutputSize = 4096

	// eventfdLink is what /proc/self/fd/N reads for an eventfd.
	eventfdLink = "anon_inode:[eventfd]"
	// seals are the seals of a region's memfd.
	seals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
)

var (
	// ErrSpec means a Spec (or a layout request) is invalid.
	ErrSpec = errors.New("region: invalid spec")
	// ErrFile means a file handed to Restore is not usable for the region.
	ErrFile = errors.New("region: unusable file")
	// ErrRange means a peer or vector out of range.
	ErrRange = errors.New("region: peer or vector out of range")
	// ErrClosed means the region was closed.
	ErrClosed = errors.New("region: closed")
)

// Spec describes a region.
type Spec struct {
	// Name is the region's name: 1..32 bytes of [A-Za-z0-9._-] (it fits
	// the device's capability field, abi.NameSize).
	Name string
	// Protocol is abi.ProtocolFICM or abi.ProtocolSegment.
	Protocol uint8
	// Layout is the memory layout (also the peer count).
	Layout abi.Layout
	// Vectors is the number of doorbell vectors per peer
	// (1..abi.MaxVectors).
	Vectors int
}

// Bells returns the number of eventfds of the region (Peers*Vectors).
func (s Spec) Bells() int { return s.Layout.Peers * s.Vectors }

// Validate checks s. Errors wrap ErrSpec.
func (s Spec) Validate() error {
	if !validName(s.Name) {
		return fmt.Errorf("%w: name %q (1..%d bytes of [A-Za-z0-9._-])", ErrSpec, s.Name, abi.NameSize)
	}
	if s.Protocol != abi.ProtocolFICM && s.Protocol != abi.ProtocolSegment {
		return fmt.Errorf("%w: region %q: unknown protocol %#x", ErrSpec, s.Name, s.Protocol)
	}
	if err := s.Layout.Validate(); err != nil {
		return fmt.Errorf("%w: region %q: %w", ErrSpec, s.Name, err)
	}
	if s.Layout.Size() > math.MaxInt {
		return fmt.Errorf("%w: region %q: %d bytes", ErrSpec, s.Name, s.Layout.Size())
	}
	if s.Vectors < 1 || s.Vectors > abi.MaxVectors {
		return fmt.Errorf("%w: region %q: %d vectors (1..%d)", ErrSpec, s.Name, s.Vectors, abi.MaxVectors)
	}
	if s.Bells() > MaxBells {
		return fmt.Errorf("%w: region %q: %d peers x %d vectors = %d eventfds, at most %d", ErrSpec, s.Name, s.Layout.Peers, s.Vectors, s.Bells(), MaxBells)
	}
	return nil
}

func validName(s string) bool {
	if len(s) < 1 || len(s) > abi.NameSize {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// FICMLayout returns the layout of the FICM group of peers peers (the
// supervisor included): no RW section, output sections holding the info
// page and the ficm/endpoint section of 64-slot rings.
func FICMLayout(peers int) (abi.Layout, error) {
	el, err := endpoint.NewLayout(peers, FICMSlots)
	if err != nil {
		return abi.Layout{}, fmt.Errorf("%w: FICM group of %d peers: %w", ErrSpec, peers, err)
	}
	l := abi.Layout{Peers: peers, OutputSize: roundUp(InfoPageSize+uint64(el.SectionSize()), abi.PageSize)}
	if err := l.Validate(); err != nil {
		return abi.Layout{}, fmt.Errorf("%w: %w", ErrSpec, err)
	}
	return l, nil
}

// SegmentLayout returns the layout of a segment of size bytes (a positive
// multiple of 4096) granted to grantees peers: RW section of size bytes,
// one unused 4096-byte output section per peer.
func SegmentLayout(grantees int, size uint64) (abi.Layout, error) {
	if size == 0 || size%abi.PageSize != 0 {
		return abi.Layout{}, fmt.Errorf("%w: segment size %d (a positive multiple of %d)", ErrSpec, size, abi.PageSize)
	}
	l := abi.Layout{Peers: grantees, RWSize: size, OutputSize: SegmentOutputSize}
	if err := l.Validate(); err != nil {
		return abi.Layout{}, fmt.Errorf("%w: %w", ErrSpec, err)
	}
	return l, nil
}

// hugePageSize is the page size of hugetlb-backed regions.
const hugePageSize = 2 << 20

// createMemory makes the region's memfd (with extra memfd_create flags)
// of alloc bytes, seals its size and maps it; on failure it leaves nothing.
func (r *Region) createMemory(flags int, alloc uint64) error {
	name := "rf-region-" + r.spec.Name
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|flags)
	if err != nil {
		return fmt.Errorf("region %q: memfd_create: %w", r.spec.Name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := unix.Ftruncate(fd, int64(alloc)); err != nil {
		f.Close()
		return fmt.Errorf("region %q: ftruncate %d: %w", r.spec.Name, alloc, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return fmt.Errorf("region %q: seal memfd: %w", r.spec.Name, err)
	}
	m, err := unix.Mmap(fd, 0, int(alloc), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		f.Close()
		return fmt.Errorf("region %q: mmap %d bytes: %w", r.spec.Name, alloc, err)
	}
	r.file, r.mapping, r.mem = f, m, m[:r.spec.Layout.Size():r.spec.Layout.Size()]
	return nil
}

// Region is one shared-memory region held by the supervisor.
type Region struct {
	spec Spec
	mem  []byte
	// mapping is the whole mapping of the memfd (mem is its first
	// Layout.Size() bytes; a hugetlb memfd is rounded up to its pages).
	mapping []byte
	file    *os.File
	// bells[i] and bellFDs[i]: peer i/Vectors, vector i%Vectors. The raw
	// descriptors are taken once so that os.File.Fd (which would make
	// them blocking) is never called here.
	bells   []*os.File
	bellFDs []int

	mu     sync.RWMutex // guards closed against Ring/Wait
	closed bool

	// waiters[i] blocks Wait on bell i, made by the first Wait on it;
	// nil once Close began.
	waitMu  sync.Mutex
	waiters map[int]*fdwait.Waiter
}

// Create creates a region: a sealed memfd of spec.Layout.Size() bytes
// mapped read-write, and one non-blocking eventfd per (peer, vector). On
// failure everything created is released.
func Create(spec Spec) (_ *Region, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	size := spec.Layout.Size()
	r := &Region{spec: spec, waiters: map[int]*fdwait.Waiter{}}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	// 2 MiB hugetlb pages when the pool has them: fewer TLB misses on the
	// rings, and memory the host kernel never migrates under the guests
	// (shmem pages can be, and a nested hypervisor has been seen to keep
	// a stale translation of such a page). Otherwise plain shmem.
	if err := r.createMemory(unix.MFD_HUGETLB|unix.MFD_HUGE_2MB, roundUp(size, hugePageSize)); err != nil {
		if err := r.createMemory(0, size); err != nil {
			return nil, err
		}
	}
	for i := range spec.Bells() {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return nil, fmt.Errorf("region %q: eventfd %d: %w", spec.Name, i, err)
		}
		r.bells = append(r.bells, os.NewFile(uintptr(efd), bellName(spec, i)))
		r.bellFDs = append(r.bellFDs, efd)
	}
	return r, nil
}

func bellName(spec Spec, i int) string {
	return "rf-region-" + spec.Name + "-bell-" + strconv.Itoa(i/spec.Vectors) + "." + strconv.Itoa(i%spec.Vectors)
}

// rawFD returns f's descriptor without os.File.Fd's side effect of making
// it blocking. It stays valid while f is open.
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

// Restore rebuilds a region from the files a VMM hands back after a
// supervisor restart: mem is the region's memfd (at least
// spec.Layout.Size() bytes, sealed against shrinking) and bells its
// eventfds in Bells order (spec.Bells() of them). Restore takes ownership
// of the files: they are closed by Close, or at once if Restore fails.
// Errors wrap ErrSpec or ErrFile.
func Restore(spec Spec, mem *os.File, bells []*os.File) (_ *Region, err error) {
	r := &Region{spec: spec, file: mem, bells: bells, waiters: map[int]*fdwait.Waiter{}}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if mem == nil {
		return nil, fmt.Errorf("%w: region %q: no memory file", ErrFile, spec.Name)
	}
	if len(bells) != spec.Bells() {
		return nil, fmt.Errorf("%w: region %q: %d eventfds, want %d peers x %d vectors = %d", ErrFile, spec.Name, len(bells), spec.Layout.Peers, spec.Vectors, spec.Bells())
	}
	fd, err := rawFD(mem)
	if err != nil {
		return nil, fmt.Errorf("%w: region %q: memory file: %w", ErrFile, spec.Name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: region %q: fstat memory file: %w", ErrFile, spec.Name, err)
	}
	size := spec.Layout.Size()
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 0 || uint64(st.Size) < size {
		return nil, fmt.Errorf("%w: region %q: memory file of %d bytes (mode %#o), need a regular file of %d", ErrFile, spec.Name, st.Size, st.Mode, size)
	}
	got, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || got&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("%w: region %q: memory file is not a memfd sealed against shrinking (seals %#x, %v)", ErrFile, spec.Name, got, err)
	}
	for i, b := range bells {
		if b == nil {
			return nil, fmt.Errorf("%w: region %q: eventfd %d is nil", ErrFile, spec.Name, i)
		}
		bfd, err := rawFD(b)
		if err != nil {
			return nil, fmt.Errorf("%w: region %q: eventfd %d: %w", ErrFile, spec.Name, i, err)
		}
		link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(bfd))
		if err != nil {
			return nil, fmt.Errorf("%w: region %q: eventfd %d: %w", ErrFile, spec.Name, i, err)
		}
		if link != eventfdLink {
			return nil, fmt.Errorf("%w: region %q: file %d (peer %d vector %d) is %q, not an eventfd", ErrFile, spec.Name, i, i/spec.Vectors, i%spec.Vectors, link)
		}
		// Another holder may have cleared O_NONBLOCK on the shared
		// open file description; Ring and Wait rely on it.
		if err := unix.SetNonblock(bfd, true); err != nil {
			return nil, fmt.Errorf("%w: region %q: eventfd %d: %w", ErrFile, spec.Name, i, err)
		}
		r.bellFDs = append(r.bellFDs, bfd)
	}
	// Map the whole file: a hugetlb memfd is a multiple of its page size.
	if uint64(st.Size) > roundUp(size, hugePageSize) {
		return nil, fmt.Errorf("%w: region %q: memory file of %d bytes, layout needs %d", ErrFile, spec.Name, st.Size, size)
	}
	if r.mapping, err = unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("region %q: mmap %d bytes: %w", spec.Name, st.Size, err)
	}
	r.mem = r.mapping[:size:size]
	return r, nil
}

// release unmaps and closes everything r holds, returning the errors.
func (r *Region) release() error {
	var errs []error
	if r.mapping != nil {
		if err := unix.Munmap(r.mapping); err != nil {
			errs = append(errs, fmt.Errorf("munmap: %w", err))
		}
		r.mapping, r.mem = nil, nil
	}
	if r.file != nil {
		if err := r.file.Close(); err != nil {
			errs = append(errs, err)
		}
		r.file = nil
	}
	for _, b := range r.bells {
		if b != nil {
			if err := b.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	r.bells, r.bellFDs = nil, nil
	return errors.Join(errs...)
}

// Spec returns the region's spec.
func (r *Region) Spec() Spec { return r.spec }

// Memory returns the whole mapping (Layout.Size() bytes), nil after Close.
func (r *Region) Memory() []byte { return r.mem }

// MemFile returns the region's memfd (owned by the region).
func (r *Region) MemFile() *os.File { return r.file }

// Bells returns the eventfds, peer p's vector v at index p*Vectors+v: the
// order in which they are handed to VMMs. The files are owned by the
// region.
func (r *Region) Bells() []*os.File { return r.bells }

func (r *Region) bellIndex(peer, vector int) (int, error) {
	if peer < 0 || peer >= r.spec.Layout.Peers || vector < 0 || vector >= r.spec.Vectors {
		return 0, fmt.Errorf("%w: region %q: peer %d vector %d (%d peers, %d vectors)", ErrRange, r.spec.Name, peer, vector, r.spec.Layout.Peers, r.spec.Vectors)
	}
	return peer*r.spec.Vectors + vector, nil
}

// Bell returns the eventfd of peer's vector.
func (r *Region) Bell(peer, vector int) (*os.File, error) {
	i, err := r.bellIndex(peer, vector)
	if err != nil {
		return nil, err
	}
	if i >= len(r.bells) {
		return nil, ErrClosed
	}
	return r.bells[i], nil
}

// Output returns peer's output section.
func (r *Region) Output(peer int) ([]byte, error) {
	l := r.spec.Layout
	if peer < 0 || peer >= l.Peers {
		return nil, fmt.Errorf("%w: region %q: peer %d of %d", ErrRange, r.spec.Name, peer, l.Peers)
	}
	if r.mem == nil {
		return nil, ErrClosed
	}
	off := l.OutputOffset(peer)
	return r.mem[off : off+l.OutputSize : off+l.OutputSize], nil
}

// RW returns the read-write section (empty when the layout has none).
func (r *Region) RW() []byte {
	if r.mem == nil {
		return nil
	}
	l := r.spec.Layout
	return r.mem[l.RWOffset() : l.RWOffset()+l.RWSize : l.RWOffset()+l.RWSize]
}

// StateTable returns the state table part of the memory.
func (r *Region) StateTable() []byte {
	if r.mem == nil {
		return nil
	}
	n := r.spec.Layout.StateTableSize()
	return r.mem[:n:n]
}

// Ring signals peer's vector: it adds 1 to the eventfd. A full counter
// (EAGAIN) means a signal is already pending and is not an error.
func (r *Region) Ring(peer, vector int) error {
	i, err := r.bellIndex(peer, vector)
	if err != nil {
		return err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return ErrClosed
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for {
		_, err := unix.Write(r.bellFDs[i], one[:])
		switch {
		case err == nil, errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		}
		return fmt.Errorf("region %q: ring peer %d vector %d: %w", r.spec.Name, peer, vector, err)
	}
}

// Wait blocks until peer's vector has been signalled, consuming the signal,
// or until ctx is done (ctx's error) or the region is closed (ErrClosed).
// It sleeps in poll(2) without a timeout: nothing but the signal, ctx or
// Close wakes it. Only one goroutine should wait on a given bell (others
// queue behind it).
func (r *Region) Wait(ctx context.Context, peer, vector int) error {
	i, err := r.bellIndex(peer, vector)
	if err != nil {
		return err
	}
	w, err := r.bellWaiter(i)
	if err != nil {
		return err
	}
	// Close closes the waiter before the eventfds: w.Read never polls a
	// closed descriptor.
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return ErrClosed
	}
	fd := r.bellFDs[i]
	r.mu.RUnlock()
	var buf [8]byte
	_, err = w.Read(ctx, fd, buf[:])
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fdwait.ErrClosed):
		return ErrClosed
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return err
	}
	return fmt.Errorf("region %q: wait peer %d vector %d: %w", r.spec.Name, peer, vector, err)
}

// bellWaiter returns the waiter of bell i, making it on first use.
func (r *Region) bellWaiter(i int) (*fdwait.Waiter, error) {
	r.waitMu.Lock()
	defer r.waitMu.Unlock()
	if r.waiters == nil {
		return nil, ErrClosed
	}
	if w := r.waiters[i]; w != nil {
		return w, nil
	}
	w, err := fdwait.New()
	if err != nil {
		return nil, fmt.Errorf("region %q: %w", r.spec.Name, err)
	}
	r.waiters[i] = w
	return w, nil
}

// closeWaiters wakes every Wait (they return ErrClosed) and waits for them
// to return; it reports false if Close already began.
func (r *Region) closeWaiters() bool {
	r.waitMu.Lock()
	ws := r.waiters
	r.waiters = nil
	r.waitMu.Unlock()
	if ws == nil {
		return false
	}
	for _, w := range ws {
		_ = w.Close() // only fails on a second Close
	}
	return true
}

// Close unmaps the memory and closes the memfd and eventfds. Later calls
// return ErrClosed.
func (r *Region) Close() error {
	if !r.closeWaiters() {
		return ErrClosed
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.closed = true
	if err := r.release(); err != nil {
		return fmt.Errorf("region %q: close: %w", r.spec.Name, err)
	}
	return nil
}
