package vmmctl

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"rainforest/vmm/config"
	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
)

// maxRegionSlack is how much larger than its layout a region's memfd may
// be (hugetlb memfds are rounded up to 1 GiB pages at most).
const maxRegionSlack = 1 << 30

// Membership is what a VMM holds of the shared-memory regions it is a
// member of: each region's files as received (kept for export) and its
// mapping. It is safe for concurrent use.
type Membership struct {
	mu      sync.Mutex
	regions []config.Region
	files   [][]*os.File
	maps    [][]byte
}

// Add maps region r from its files (its memfd, then its eventfds
// peer-major) and returns its shared-memory device configuration: this
// peer's eventfds as its vectors, every other peer's as doorbell targets.
// It takes charge of files: they are closed on error, and by Remove or
// Close otherwise.
func (ms *Membership) Add(r config.Region, files []*os.File) (shmemdev.Config, error) {
	fail := func(err error) (shmemdev.Config, error) {
		for _, f := range files {
			f.Close()
		}
		return shmemdev.Config{}, fmt.Errorf("region %q: %w", r.Name, err)
	}
	if err := r.Validate(); err != nil {
		return fail(err)
	}
	if len(files) != r.Files() {
		return fail(fmt.Errorf("%w: %d descriptors, want %d", ErrProtocol, len(files), r.Files()))
	}
	l := abi.Layout{Peers: r.Peers, RWSize: r.RWSize, OutputSize: r.OutputSize}
	if err := l.Validate(); err != nil {
		return fail(err)
	}
	memFD, err := FD(files[0])
	if err != nil {
		return fail(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(memFD, &st); err != nil {
		return fail(fmt.Errorf("memory: %w", err))
	}
	// Map the whole file (a hugetlb memfd is a multiple of its page size),
	// bounded so that a bogus size cannot map much more.
	if uint64(st.Size) < l.Size() || uint64(st.Size) > l.Size()+maxRegionSlack {
		return fail(fmt.Errorf("memory of %d bytes, layout needs %d", st.Size, l.Size()))
	}
	m, err := unix.Mmap(memFD, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("map memory: %w", err))
	}
	ev := func(peer, v int) *eventfd.EventFD {
		fd, _ := FD(files[1+peer*r.Vectors+v]) // open files: cannot fail
		return eventfd.Borrow(fd)
	}
	cfg := shmemdev.Config{ID: r.Self, Layout: l, Region: m[:l.Size():l.Size()], Vectors: r.Vectors,
		Identity:      shmem.Identity{Protocol: r.Protocol, Name: r.Name, RWReadOnly: r.RWReadOnly},
		DoorbellLimit: r.Doorbells}
	if cfg.DoorbellLimit.Unlimited() {
		cfg.DoorbellLimit = shmemdev.DefaultDoorbellLimit()
	}
	for v := range r.Vectors {
		cfg.Incoming = append(cfg.Incoming, ev(r.Self, v))
	}
	for p := range r.Peers {
		if p == r.Self {
			continue
		}
		pd := shmemdev.PeerDoorbells{Peer: p}
		for v := range r.Vectors {
			pd.Vectors = append(pd.Vectors, ev(p, v))
		}
		cfg.Peers = append(cfg.Peers, pd)
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for _, have := range ms.regions {
		if have.Name == r.Name {
			_ = unix.Munmap(m)
			return fail(fmt.Errorf("%w: already a member", ErrExists))
		}
	}
	ms.regions = append(ms.regions, r)
	ms.files = append(ms.files, files)
	ms.maps = append(ms.maps, m)
	return cfg, nil
}

// Remove unmaps region name and closes its files; its device must be
// gone.
func (ms *Membership) Remove(name string) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for i, r := range ms.regions {
		if r.Name != name {
			continue
		}
		err := ms.releaseLocked(i)
		ms.regions = append(ms.regions[:i], ms.regions[i+1:]...)
		ms.files = append(ms.files[:i], ms.files[i+1:]...)
		ms.maps = append(ms.maps[:i], ms.maps[i+1:]...)
		return err
	}
	return fmt.Errorf("%w: region %q", ErrNotFound, name)
}

func (ms *Membership) releaseLocked(i int) error {
	errs := []error{unix.Munmap(ms.maps[i])}
	for _, f := range ms.files[i] {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Regions returns the regions held.
func (ms *Membership) Regions() []config.Region {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return append([]config.Region(nil), ms.regions...)
}

// Export returns the regions held and their files in order (still the
// membership's).
func (ms *Membership) Export() ([]config.Region, []*os.File) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var out []*os.File
	for _, fs := range ms.files {
		out = append(out, fs...)
	}
	return append([]config.Region(nil), ms.regions...), out
}

// Close unmaps every region and closes its files; the devices using them
// must be gone.
func (ms *Membership) Close() error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var errs []error
	for i := range ms.regions {
		errs = append(errs, ms.releaseLocked(i))
	}
	ms.regions, ms.files, ms.maps = nil, nil, nil
	return errors.Join(errs...)
}
