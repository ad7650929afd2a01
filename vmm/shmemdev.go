package vmm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"rainforest/vmm/kvm"
	"rainforest/vmm/pci"
	"rainforest/vmm/platform"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
)

// ErrSharedMemory reports a shared-memory device that cannot be set up or
// connected as asked.
var ErrSharedMemory = errors.New("shared memory device")

// errNoDoorbellTarget is the drop reason for a doorbell to a peer or vector
// that is not connected.
var errNoDoorbellTarget = errors.New("doorbell target not connected")

// SharedMemoryConfig describes one peer's shared-memory PCI function.
type SharedMemoryConfig struct {
	ID     int        // this peer's id (0..Layout.Peers-1)
	Layout abi.Layout // the same for every peer
	// Region is the whole region: state table, read-write section and all
	// output sections, len >= Layout.Size(); typically a MAP_SHARED
	// mapping of a memfd shared by all peers' VMMs. The caller keeps it
	// mapped for the machine's lifetime.
	Region  []byte
	Vectors int             // this peer's MSI-X vectors (1..64)
	Peers   []PeerDoorbells // may be empty: see ConnectPeer
	// Incoming, when set, gives the eventfds of this peer's vectors (one
	// per vector, e.g. created by the supervisor for a channel before any
	// peer's VMM starts, so every peer can be wired at start); they are
	// duplicated. Otherwise the device creates its own.
	Incoming []*EventFD
	// Identity names the region and its protocol for the guest (class
	// code and vendor capability); RWReadOnly also maps the read-write
	// section read-only for this peer.
	Identity shmem.Identity
}

// PeerDoorbells are the incoming vectors of one peer: Vectors[v] is an
// eventfd that raises vector v in that peer's VM (its irqfd, as returned by
// that peer's SharedMemory.Vector).
type PeerDoorbells struct {
	Peer    int
	Vectors []*EventFD
}

// SharedMemoryStats counts what reached this VMM instead of the kernel.
type SharedMemoryStats struct {
	Dropped  uint64 // doorbells to a peer or vector that is not connected
	ROWrites uint64 // guest writes to a read-only part of the memory BAR
	// Fallback counts doorbells that exited to the VMM and were handled
	// there (self-doorbells, delivered by the model or held back by
	// INT_CONTROL; or peer doorbells not matched by an ioeventfd); the
	// normal path never shows here.
	Fallback uint64
}

// SharedMemory is a shmem.Device on this machine's PCI bus with its memory
// BAR mapped from the shared region and its doorbell register wired by
// ioeventfd straight to the peers' irqfds.
//
// Incoming interrupts: every vector has an eventfd (Vector) that peers'
// doorbells signal. While the guest has the vector's MSI-X entry unmasked
// and MSI-X enabled, the eventfd is an irqfd for the entry's message; while
// masked or disabled it is detached, so signals accumulate in its counter
// and are injected when the guest unmasks the vector (KVM injects a pending
// eventfd on attach), much like the pending-bit array. The INT_CONTROL
// register and INTx only apply to interrupts the device model raises
// itself (self-doorbells); peers' doorbells never pass through the VMM.
//
// BAR moves: the register and MSI-X BARs follow on the MMIO bus and the
// doorbell ioeventfds move with the register BAR; the memory BAR's slots
// are re-mapped at its new address.
type SharedMemory struct {
	m      *Machine
	dev    *shmem.Device
	slot   int
	id     int
	layout abi.Layout
	region []byte
	router *sharedMemoryRouter
	// rwReadOnly maps the read-write section read-only.
	rwReadOnly bool
	// bridgeWake wakes the INTx bridge (mode change or stop); bridgeDone
	// is closed when it has ended.
	bridgeWake *EventFD
	bridgeStop atomic.Bool
	bridgeDone chan struct{}

	mu       sync.Mutex
	closed   bool
	regAddr  uint64               // register BAR address the doorbells are registered at; 0: none
	memAddr  uint64               // memory BAR address the slots are mapped at; 0: unmapped
	peers    map[int][]*EventFD   // our duplicates of the peers' eventfds
	bells    []sharedMemoryBellFD // registered doorbell ioeventfds
	slots    []sharedMemorySlot
	fallback uint64
}

type sharedMemoryBellFD struct {
	fd    int
	value uint64
}

// sharedMemorySlot is one KVM memory slot for a run of the memory BAR with
// the same access.
type sharedMemorySlot struct {
	slot     uint32
	offset   uint64
	size     uint64
	readOnly bool
}

// sharedMemoryFunction is the PCI function on the bus: the device model
// plus the way back to its SharedMemory for BAR moves.
type sharedMemoryFunction struct {
	*shmem.Device
	sm *SharedMemory
}

// EnsurePCI creates PCI bus 0 on the configuration ports (whose range also
// holds the 0xCF9 reset register), with BAR-move handling and INTx routing,
// unless the machine already has one. It is part of machine setup: not safe
// to call concurrently with other setup or while the machine runs.
func (m *Machine) EnsurePCI() error {
	if m.pci != nil {
		return nil
	}
	pbus := pci.NewBus(nil)
	reset := platform.NewResetRegister(func() { m.Stop(Exit{Reason: ExitReboot}) })
	pbus.SetResetHandler(func(v byte) { reset.Write(0, []byte{v}) })
	if err := m.PIO.Insert(pbus, pci.ConfigPortBase, pci.ConfigPortSize); err != nil {
		return err
	}
	m.pci = pbus
	pbus.SetBARMoveHandler(m.movePCIBAR)
	pbus.SetINTxRouter(newPCIINTxLines(m.vm.IRQLine, m.log).route)
	return nil
}

// movePCIBAR is moveBAR plus the shared-memory functions' doorbells and
// memory slots.
func (m *Machine) movePCIBAR(slot int, dev pci.Device, b pci.BAR, oldAddr uint64) {
	m.moveBAR(slot, dev, b, oldAddr)
	if fn, ok := dev.(*sharedMemoryFunction); ok {
		fn.sm.barMoved(b)
	}
}

// AddSharedMemory puts a shared-memory function on the PCI bus (creating
// the bus if needed): register and MSI-X BARs on the MMIO bus, the memory
// BAR mapped from cfg.Region (state table read-only, read-write section
// read-write, this peer's output section read-write, the other peers'
// output sections read-only; the unused tail of the BAR and trapped writes
// reach the model), and cfg.Peers connected as by ConnectPeer. Call it
// before the machine runs.
func (m *Machine) AddSharedMemory(cfg SharedMemoryConfig) (*SharedMemory, error) {
	l := cfg.Layout
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSharedMemory, err)
	}
	if uint64(len(cfg.Region)) < l.Size() {
		return nil, fmt.Errorf("%w: region of %d bytes, layout needs %d", ErrSharedMemory, len(cfg.Region), l.Size())
	}
	if cfg.Vectors < 1 || cfg.Vectors > abi.MaxVectors {
		return nil, fmt.Errorf("%w: %d vectors (1..%d)", ErrSharedMemory, cfg.Vectors, abi.MaxVectors)
	}
	if err := m.EnsurePCI(); err != nil {
		return nil, err
	}
	// The bus had no move handler of ours if setupPCI made it.
	m.pci.SetBARMoveHandler(m.movePCIBAR)
	sm := &SharedMemory{m: m, id: cfg.ID, layout: l, region: cfg.Region[:l.Size()], peers: map[int][]*EventFD{}}
	sm.router = &sharedMemoryRouter{m: m}
	m.AddCloser(sm.close)
	if len(cfg.Incoming) != 0 && len(cfg.Incoming) != cfg.Vectors {
		return nil, fmt.Errorf("%w: %d incoming eventfds for %d vectors", ErrSharedMemory, len(cfg.Incoming), cfg.Vectors)
	}
	if err := sm.router.allocate(cfg.Vectors, cfg.Incoming); err != nil {
		return nil, err
	}
	sm.rwReadOnly = cfg.Identity.RWReadOnly
	dev, err := shmem.NewWithIdentity(cfg.ID, l, cfg.Vectors, sm.region[:l.StateTableSize()], sm.router, sharedMemoryBell{sm}, cfg.Identity)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSharedMemory, err)
	}
	sm.dev = dev
	fn := &sharedMemoryFunction{Device: dev, sm: sm}
	slot, bars, err := m.pci.Add(-1, fn)
	if err != nil {
		return nil, err
	}
	sm.slot = slot
	if err := sm.startBridge(); err != nil {
		return nil, err
	}
	for _, b := range bars {
		if err := m.MMIO.Insert(pci.BARRegion(fn, b.Index), b.Addr, b.Size); err != nil {
			return nil, fmt.Errorf("%w: slot %d BAR %d: %w", ErrSharedMemory, slot, b.Index, err)
		}
	}
	sm.mu.Lock()
	for _, b := range bars {
		switch b.Index {
		case abi.RegBAR:
			sm.regAddr = b.Addr
		case abi.MemBAR:
			err = sm.mapLocked(b.Addr)
		}
	}
	sm.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, p := range cfg.Peers {
		if err := sm.ConnectPeer(p); err != nil {
			return nil, err
		}
	}
	m.log.Debug("shared memory device", "slot", slot, "id", cfg.ID, "peers", l.Peers)
	return sm, nil
}

// Device returns the device model.
func (s *SharedMemory) Device() *shmem.Device { return s.dev }

// Slot returns the PCI slot.
func (s *SharedMemory) Slot() int { return s.slot }

// BARAddr returns where BAR index (abi.RegBAR, MSIXBAR or MemBAR) is
// mapped now, 0 if it is not.
func (s *SharedMemory) BARAddr(index int) uint64 {
	for _, b := range s.m.pci.BARs(s.slot) {
		if b.Index == index {
			return b.Addr
		}
	}
	return 0
}

// Vector returns the eventfd that raises this guest's vector v (nil if v
// is out of range): hand it to the other peers' ConnectPeer.
func (s *SharedMemory) Vector(v int) *EventFD {
	if v < 0 || v >= len(s.router.vectors) {
		return nil
	}
	return s.router.vectors[v].ev
}

// Stats returns the device's counters.
func (s *SharedMemory) Stats() SharedMemoryStats {
	dropped, ro := s.dev.Stats()
	s.mu.Lock()
	defer s.mu.Unlock()
	return SharedMemoryStats{Dropped: dropped, ROWrites: ro, Fallback: s.fallback}
}

// ConnectPeer wires this guest's doorbell writes of peer<<16|v to
// p.Vectors[v] (an ioeventfd with datamatch on the DOORBELL register), so
// they reach that peer without an exit. The eventfds are duplicated: the
// peer's VM may be closed first. Each peer is connected once. It may be
// called while the machine runs.
func (s *SharedMemory) ConnectPeer(p PeerDoorbells) error {
	if p.Peer < 0 || p.Peer >= s.layout.Peers {
		return fmt.Errorf("%w: peer %d of %d", ErrSharedMemory, p.Peer, s.layout.Peers)
	}
	if len(p.Vectors) == 0 || len(p.Vectors) > abi.MaxVector+1 {
		return fmt.Errorf("%w: peer %d with %d vectors", ErrSharedMemory, p.Peer, len(p.Vectors))
	}
	for v, ev := range p.Vectors {
		if ev == nil {
			return fmt.Errorf("%w: peer %d vector %d: nil eventfd", ErrSharedMemory, p.Peer, v)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%w: machine closed", ErrSharedMemory)
	}
	if _, ok := s.peers[p.Peer]; ok {
		return fmt.Errorf("%w: peer %d already connected", ErrSharedMemory, p.Peer)
	}
	dups := make([]*EventFD, 0, len(p.Vectors))
	var err error
	for _, ev := range p.Vectors {
		fd, e := unix.FcntlInt(uintptr(ev.Fd()), unix.F_DUPFD_CLOEXEC, 0)
		if e != nil {
			err = fmt.Errorf("dup doorbell eventfd: %w", e)
			break
		}
		dups = append(dups, &EventFD{fd: fd})
	}
	if err != nil {
		for _, d := range dups {
			d.Close()
		}
		return err
	}
	s.peers[p.Peer] = dups
	for v, d := range dups {
		b := sharedMemoryBellFD{fd: d.Fd(), value: uint64(abi.Doorbell(p.Peer, v))}
		if s.regAddr != 0 {
			if err := s.m.vm.IOEventFDMatch(b.fd, s.regAddr+abi.RegDoorbell, 4, false, b.value); err != nil {
				return fmt.Errorf("%w: peer %d vector %d doorbell: %w", ErrSharedMemory, p.Peer, v, err)
			}
		}
		s.bells = append(s.bells, b)
	}
	return nil
}

// mapLocked maps the memory BAR's used part at gpa, one slot per run of
// parts with the same access.
func (s *SharedMemory) mapLocked(gpa uint64) error {
	if gpa == 0 {
		return nil
	}
	for _, r := range s.m.Mem.Regions() {
		if gpa < r.End() && r.GPA < gpa+s.layout.Size() {
			return fmt.Errorf("%w: memory BAR at %#x overlaps guest RAM at %#x", ErrSharedMemory, gpa, r.GPA)
		}
	}
	if s.slots == nil {
		s.slots = s.pieces()
		s.m.slotMu.Lock()
		for i := range s.slots {
			s.slots[i].slot = s.m.nextSlot
			s.m.nextSlot++
		}
		s.m.slotMu.Unlock()
	}
	for i, p := range s.slots {
		if err := s.m.vm.SetMemory(p.slot, gpa+p.offset, s.region[p.offset:p.offset+p.size], p.readOnly); err != nil {
			for _, q := range s.slots[:i] {
				_ = s.m.vm.SetMemory(q.slot, gpa+q.offset, nil, false)
			}
			return fmt.Errorf("%w: %w", ErrSharedMemory, err)
		}
	}
	s.memAddr = gpa
	return nil
}

func (s *SharedMemory) unmapLocked() error {
	if s.memAddr == 0 {
		return nil
	}
	var errs []error
	for _, p := range s.slots {
		errs = append(errs, s.m.vm.SetMemory(p.slot, s.memAddr+p.offset, nil, false))
	}
	s.memAddr = 0
	return errors.Join(errs...)
}

// pieces splits the used part of the memory BAR into runs of equal access.
func (s *SharedMemory) pieces() []sharedMemorySlot {
	l := s.layout
	parts := []sharedMemorySlot{{offset: 0, size: l.StateTableSize(), readOnly: true}}
	if l.RWSize > 0 {
		parts = append(parts, sharedMemorySlot{offset: l.RWOffset(), size: l.RWSize, readOnly: s.rwReadOnly})
	}
	for p := 0; p < l.Peers; p++ {
		parts = append(parts, sharedMemorySlot{offset: l.OutputOffset(p), size: l.OutputSize, readOnly: p != s.id})
	}
	var out []sharedMemorySlot
	for _, p := range parts {
		if n := len(out); n > 0 && out[n-1].readOnly == p.readOnly && out[n-1].offset+out[n-1].size == p.offset {
			out[n-1].size += p.size
			continue
		}
		out = append(out, p)
	}
	return out
}

// barMoved follows a guest BAR move (the MMIO bus was already updated).
func (s *SharedMemory) barMoved(b pci.BAR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	switch b.Index {
	case abi.RegBAR:
		if err := s.moveBellsLocked(b.Addr); err != nil {
			s.m.log.Warn("move shared memory doorbells", "slot", s.slot, "err", err)
		}
	case abi.MemBAR:
		if b.Addr == s.memAddr {
			return
		}
		if err := s.unmapLocked(); err != nil {
			s.m.log.Warn("unmap shared memory", "slot", s.slot, "err", err)
		}
		if err := s.mapLocked(b.Addr); err != nil {
			s.m.log.Warn("guest moved the shared memory BAR where it cannot be mapped", "slot", s.slot, "addr", fmt.Sprintf("%#x", b.Addr), "err", err)
		}
	}
}

func (s *SharedMemory) moveBellsLocked(addr uint64) error {
	if addr == s.regAddr {
		return nil
	}
	var errs []error
	if s.regAddr != 0 {
		for _, b := range s.bells {
			errs = append(errs, s.m.vm.RemoveIOEventFDMatch(b.fd, s.regAddr+abi.RegDoorbell, 4, false, b.value))
		}
	}
	s.regAddr = addr
	if addr != 0 {
		for _, b := range s.bells {
			errs = append(errs, s.m.vm.IOEventFDMatch(b.fd, addr+abi.RegDoorbell, 4, false, b.value))
		}
	}
	return errors.Join(errs...)
}

// close releases the doorbells, memory slots and vectors (a machine
// closer).
func (s *SharedMemory) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.stopBridge()
	errs := []error{s.moveBellsLocked(0), s.unmapLocked()}
	for _, evs := range s.peers {
		for _, ev := range evs {
			errs = append(errs, ev.Close())
		}
	}
	s.peers = nil
	s.bells = nil
	errs = append(errs, s.router.close())
	return errors.Join(errs...)
}

// sharedMemoryBell is the model's shmem.Doorbell: doorbells that exited to
// the VMM.
type sharedMemoryBell struct{ s *SharedMemory }

// Ring delivers a doorbell that no ioeventfd matched: to this guest itself
// through the model (MSI-X or INTx), or to a connected peer's eventfd.
func (b sharedMemoryBell) Ring(peer, vector int) error {
	s := b.s
	if peer == s.id && s.dev != nil {
		if err := s.dev.Signal(vector); err != nil {
			return err
		}
		s.mu.Lock()
		s.fallback++
		s.mu.Unlock()
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	evs, ok := s.peers[peer]
	if !ok || vector < 0 || vector >= len(evs) {
		return fmt.Errorf("%w: peer %d vector %d", errNoDoorbellTarget, peer, vector)
	}
	s.fallback++
	return evs[vector].Signal()
}

// StateChanged implements shmem.Doorbell: the state table is shared
// memory, so peers see the new state without a notification.
func (b sharedMemoryBell) StateChanged(uint32) {}

// InterruptModeChanged implements shmem.ModeNotifier: INT_CONTROL and the
// MSI-X enable bit decide which vectors the INTx bridge delivers.
func (b sharedMemoryBell) InterruptModeChanged() { b.s.router.wakeBridge() }

// sharedMemoryRouter is the device's pci.MSIRouter. Unlike msiRouter its
// vectors exist from the start (peers need their eventfds before the guest
// programs MSI-X): each has an eventfd and a GSI, and the eventfd is bound
// to the GSI as an irqfd only while the vector is deliverable.
type sharedMemoryRouter struct {
	m       *Machine
	mu      sync.Mutex
	vectors []*sharedVector // fixed after allocate
	wake    *EventFD        // the INTx bridge's; nil before it starts
}

// wakeBridge tells the INTx bridge that vectors' routing or the interrupt
// control changed.
func (r *sharedMemoryRouter) wakeBridge() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wakeBridgeLocked()
}

func (r *sharedMemoryRouter) wakeBridgeLocked() {
	if r.wake != nil {
		_ = r.wake.Signal()
	}
}

type sharedVector struct {
	ev    *EventFD
	gsi   uint32
	bound bool // guarded by the router's mu
}

var _ pci.MSIRouter = (*sharedMemoryRouter)(nil)

func (r *sharedMemoryRouter) allocate(n int, incoming []*EventFD) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range n {
		var ev *EventFD
		var err error
		if i < len(incoming) {
			ev, err = incoming[i].Dup()
		} else {
			ev, err = NewEventFD()
		}
		if err != nil {
			return err
		}
		r.m.routeMu.Lock()
		gsi := r.m.nextGSI
		if gsi >= maxGSI {
			r.m.routeMu.Unlock()
			ev.Close()
			return fmt.Errorf("%w: out of GSIs for MSI vectors", ErrSharedMemory)
		}
		r.m.nextGSI++
		r.m.routeMu.Unlock()
		r.vectors = append(r.vectors, &sharedVector{ev: ev, gsi: gsi})
	}
	return nil
}

// Route implements pci.MSIRouter.
func (r *sharedMemoryRouter) Route(vector int, msg pci.MSIMessage, masked bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if vector < 0 || vector >= len(r.vectors) {
		return fmt.Errorf("%w: %d", pci.ErrBadVector, vector)
	}
	v := r.vectors[vector]
	defer r.wakeBridgeLocked()
	if masked {
		if !v.bound {
			return nil
		}
		v.bound = false
		return r.m.vm.RemoveIRQFD(v.ev.Fd(), v.gsi)
	}
	r.m.routeMu.Lock()
	r.m.routes[v.gsi] = kvm.Route{GSI: v.gsi, Kind: kvm.RouteMSI, Addr: msg.Addr, Data: msg.Data}
	err := r.m.applyRoutesLocked()
	r.m.routeMu.Unlock()
	if err != nil || v.bound {
		return err
	}
	if err := r.m.vm.IRQFD(v.ev.Fd(), v.gsi); err != nil {
		return err
	}
	v.bound = true
	return nil
}

// Fire implements pci.MSIRouter.
func (r *sharedMemoryRouter) Fire(vector int) error {
	if vector < 0 || vector >= len(r.vectors) {
		return fmt.Errorf("%w: %d", pci.ErrBadVector, vector)
	}
	return r.vectors[vector].ev.Signal()
}

func (r *sharedMemoryRouter) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, v := range r.vectors {
		if v.bound {
			errs = append(errs, r.m.vm.RemoveIRQFD(v.ev.Fd(), v.gsi))
			v.bound = false
		}
		errs = append(errs, v.ev.Close())
	}
	return errors.Join(errs...)
}
