// Package shmemdev plugs the inter-subOS shared-memory device (vmm/shmem)
// into the chassis. Its memory BAR is mapped from the shared region (the
// state table read-only, the read-write section read-write unless the grant
// is read-only, this peer's output section read-write, the other peers'
// read-only); its DOORBELL register is wired by ioeventfds with datamatch
// straight to the peers' interrupt eventfds; and its own vectors' eventfds
// reach the guest as MSI-X messages or, while the guest has MSI-X off, as
// INTA# through level-triggered resampling irqfds. Either way, without a
// doorbell limit (below), no VMM thread is on a doorbell's path: the
// sender's write ends in the kernel, and so does the receiver's interrupt.
//
// Doorbell limit: with Config.DoorbellLimit set, a peer's doorbells are
// not wired into the kernel; they exit to the VMM (the vCPU thread's MMIO
// write, the "fallback" path) and each target peer has a token bucket. A
// doorbell over it is not lost but coalesced: its vector stays pending
// and is raised once when tokens return (see ThrottleStats). This costs
// an exit per doorbell, so the limit guards against a guest storming
// another with interrupts; without it, the ioeventfd path has no VMM
// thread on it at all.
//
// Writes of a new value to the STATE register raise vector 0 on every
// connected peer (ivshmem v2's state-change interrupt); removing the
// device zeroes this peer's state and does the same.
package shmemdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"rainforest/internal/tokenbucket"
	"rainforest/vmm/devices"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/interrupt"
	"rainforest/vmm/pci"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
)

// ErrConfig reports a shared-memory device that cannot be set up or
// connected as asked.
var ErrConfig = errors.New("shared memory device")

// errNoTarget is the drop reason for a doorbell to a peer or vector that is
// not connected.
var errNoTarget = errors.New("doorbell target not connected")

// Config describes one peer's shared-memory function.
type Config struct {
	ID     int        // this peer's id (0..Layout.Peers-1)
	Layout abi.Layout // the same for every peer
	// Region is the whole region (state table, read-write section, all
	// output sections), len >= Layout.Size(); typically a MAP_SHARED
	// mapping of a memfd shared by all peers' VMMs, kept mapped by the
	// caller until the device is removed.
	Region  []byte
	Vectors int             // this peer's MSI-X vectors (1..64)
	Peers   []PeerDoorbells // connected at plug time; see ConnectPeer
	// Incoming, when set, gives the eventfds of this peer's vectors (one
	// per vector, made by the supervisor before any VMM started); they are
	// duplicated. Otherwise the device makes its own.
	Incoming []*eventfd.EventFD
	// Identity names the region and its protocol for the guest;
	// RWReadOnly maps the read-write section read-only for this peer.
	Identity shmem.Identity
	// DoorbellLimit limits this guest's doorbells to each peer (see the
	// package documentation); the zero Limit wires them straight into
	// the kernel, unlimited.
	DoorbellLimit tokenbucket.Limit
	// Clock times the doorbell limit (the system clock when nil).
	Clock tokenbucket.Clock
}

// PeerDoorbells are the incoming vectors of one peer: Vectors[v] raises
// vector v in that peer's VM.
type PeerDoorbells struct {
	Peer    int
	Vectors []*eventfd.EventFD
}

// Stats counts what reached this VMM instead of the kernel.
type Stats struct {
	Dropped  uint64 // doorbells to a peer or vector that is not connected
	ROWrites uint64 // guest writes to a read-only part of the memory BAR
	// Fallback counts doorbells that exited to the VMM and were handled
	// there: self-doorbells, or peer doorbells no ioeventfd matched.
	Fallback uint64
	// StateChanges counts state-change interrupts sent to the peers.
	StateChanges uint64
	// Doorbells is what the doorbell limit did.
	Doorbells ThrottleStats
}

// Device is one peer's shared-memory function.
type Device struct {
	cfg   Config
	model *shmem.Device
	r     *devices.Resources
	msix  *interrupt.MSIXGroup
	limit *throttle // nil: doorbells go through ioeventfds

	mu       sync.Mutex
	peers    map[int][]*eventfd.EventFD // our duplicates of the peers' eventfds
	intxOn   bool                       // the vectors drive INTA#
	fallback uint64
	states   uint64
}

// New checks cfg and returns the device, ready to plug.
func New(cfg Config) (*Device, error) {
	l := cfg.Layout
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if uint64(len(cfg.Region)) < l.Size() {
		return nil, fmt.Errorf("%w: region of %d bytes, layout needs %d", ErrConfig, len(cfg.Region), l.Size())
	}
	if cfg.Vectors < 1 || cfg.Vectors > 64 {
		return nil, fmt.Errorf("%w: %d vectors (1..64)", ErrConfig, cfg.Vectors)
	}
	if cfg.ID < 0 || cfg.ID >= l.Peers {
		return nil, fmt.Errorf("%w: peer id %d of %d peers", ErrConfig, cfg.ID, l.Peers)
	}
	if len(cfg.Incoming) != 0 && len(cfg.Incoming) != cfg.Vectors {
		return nil, fmt.Errorf("%w: %d incoming eventfds for %d vectors", ErrConfig, len(cfg.Incoming), cfg.Vectors)
	}
	for _, p := range cfg.Peers {
		if err := checkPeer(l, p); err != nil {
			return nil, err
		}
	}
	cfg.Region = cfg.Region[:l.Size():l.Size()]
	d := &Device{cfg: cfg, peers: map[int][]*eventfd.EventFD{}}
	if !cfg.DoorbellLimit.Unlimited() {
		d.limit = newThrottle(cfg.DoorbellLimit, cfg.Clock, d.signalPeer)
	}
	return d, nil
}

func checkPeer(l abi.Layout, p PeerDoorbells) error {
	if p.Peer < 0 || p.Peer >= l.Peers {
		return fmt.Errorf("%w: peer %d of %d", ErrConfig, p.Peer, l.Peers)
	}
	if len(p.Vectors) == 0 || len(p.Vectors) > 1<<16 {
		return fmt.Errorf("%w: peer %d with %d vectors", ErrConfig, p.Peer, len(p.Vectors))
	}
	for v, ev := range p.Vectors {
		if ev == nil {
			return fmt.Errorf("%w: peer %d vector %d: nil eventfd", ErrConfig, p.Peer, v)
		}
	}
	return nil
}

// Plug implements devices.Device.
func (d *Device) Plug(r *devices.Resources) (pci.Device, error) {
	d.r = r
	msix, err := r.MSIX(d.cfg.Vectors, d.cfg.Incoming)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.msix = msix
	l := d.cfg.Layout
	model, err := shmem.NewWithIdentity(d.cfg.ID, l, d.cfg.Vectors, d.cfg.Region[:l.StateTableSize()], msix, bell{d}, d.cfg.Identity)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.model = model
	r.OnRemove(d.unplugged)
	for _, p := range Pieces(l, d.cfg.ID, d.cfg.Identity.RWReadOnly) {
		if err := r.MapBAR(abi.MemBAR, p.Offset, d.cfg.Region[p.Offset:p.Offset+p.Size], p.ReadOnly); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	for _, p := range d.cfg.Peers {
		if err := d.ConnectPeer(p); err != nil {
			return nil, err
		}
	}
	return model, nil
}

// unplugged zeroes this peer's state, tells the peers, and closes the
// duplicated peer eventfds (the ioeventfds using them are gone by now).
func (d *Device) unplugged() error {
	if d.limit != nil {
		d.limit.close()
	}
	off := 4 * d.cfg.ID
	if binary.LittleEndian.Uint32(d.cfg.Region[off:]) != 0 {
		binary.LittleEndian.PutUint32(d.cfg.Region[off:], 0)
		d.signalPeers()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, evs := range d.peers {
		for _, ev := range evs {
			errs = append(errs, ev.Close())
		}
	}
	d.peers = nil
	return errors.Join(errs...)
}

// Model returns the device model.
func (d *Device) Model() *shmem.Device { return d.model }

// Slot returns the PCI slot (once plugged).
func (d *Device) Slot() int { return d.r.Slot() }

// BARAddr returns where BAR index is mapped now, 0 if it is not.
func (d *Device) BARAddr(index int) uint64 { return d.r.BARAddr(index) }

// Vector returns the eventfd that raises this guest's vector v (nil if v
// is out of range): hand it to the other peers' ConnectPeer.
func (d *Device) Vector(v int) *eventfd.EventFD { return d.msix.EventFD(v) }

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	dropped, ro := d.model.Stats()
	var bells ThrottleStats
	if d.limit != nil {
		bells = d.limit.statsNow()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return Stats{Dropped: dropped, ROWrites: ro, Fallback: d.fallback, StateChanges: d.states, Doorbells: bells}
}

// ConnectPeer wires this guest's doorbell writes of peer<<16|v to
// p.Vectors[v] (an ioeventfd with datamatch on the DOORBELL register), so
// they reach that peer without an exit; under a DoorbellLimit they exit
// to the VMM instead and are signalled there. The eventfds are duplicated: the
// peer's VM may be gone first. Each peer is connected once; the device
// must be plugged (or being plugged).
func (d *Device) ConnectPeer(p PeerDoorbells) error {
	if err := checkPeer(d.cfg.Layout, p); err != nil {
		return err
	}
	if d.r == nil {
		return fmt.Errorf("%w: not plugged", ErrConfig)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.peers == nil {
		return fmt.Errorf("%w: removed", ErrConfig)
	}
	if _, ok := d.peers[p.Peer]; ok {
		return fmt.Errorf("%w: peer %d already connected", ErrConfig, p.Peer)
	}
	dups := make([]*eventfd.EventFD, 0, len(p.Vectors))
	for _, ev := range p.Vectors {
		dup, err := ev.Dup()
		if err != nil {
			for _, x := range dups {
				x.Close()
			}
			return err
		}
		dups = append(dups, dup)
	}
	// From here the dups belong to the device (closed at removal), even
	// if a registration fails.
	d.peers[p.Peer] = dups
	if d.limit != nil {
		return nil // the doorbells exit to bell.Ring
	}
	for v, dup := range dups {
		value := uint64(p.Peer)<<16 | uint64(v)
		if err := d.r.IOEventFD(abi.RegBAR, abi.RegDoorbell, 4, &value, dup); err != nil {
			return fmt.Errorf("%w: peer %d vector %d doorbell: %w", ErrConfig, p.Peer, v, err)
		}
	}
	return nil
}

// signalPeers raises the state-change vector on every connected peer.
func (d *Device) signalPeers() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, evs := range d.peers {
		_ = evs[abi.StateChangeVector].Signal() // a peer that went away has nobody to tell
	}
	d.states++
}

// updateINTx attaches the vectors to INTA# while the guest takes its
// interrupts that way: MSI-X off, INT_CONTROL on, INTx not disabled.
func (d *Device) updateINTx() {
	on := !d.model.MSIXEnabled() && d.model.InterruptsEnabled() && !d.model.INTxDisabled() && d.r.INTx() != nil
	d.mu.Lock()
	defer d.mu.Unlock()
	if on == d.intxOn {
		return
	}
	line := d.r.INTx()
	if !on {
		line = nil
	}
	if err := d.msix.SetINTx(line); err != nil {
		d.r.Logger().Warn("shared memory INTx", "on", on, "err", err)
		return
	}
	d.intxOn = on
}

// bell is the model's shmem.Doorbell.
type bell struct{ d *Device }

// Ring delivers a doorbell that no ioeventfd matched: to this guest itself
// (when it has interrupts on) or to a connected peer.
func (b bell) Ring(peer, vector int) error {
	d := b.d
	if peer == d.cfg.ID {
		if vector < 0 || vector >= d.cfg.Vectors {
			return fmt.Errorf("%w: own vector %d", errNoTarget, vector)
		}
		d.mu.Lock()
		d.fallback++
		d.mu.Unlock()
		if !d.model.InterruptsEnabled() {
			return nil
		}
		return d.msix.Fire(vector)
	}
	d.mu.Lock()
	evs, ok := d.peers[peer]
	if !ok || vector < 0 || vector >= len(evs) {
		d.mu.Unlock()
		return fmt.Errorf("%w: peer %d vector %d", errNoTarget, peer, vector)
	}
	d.fallback++
	d.mu.Unlock()
	if d.limit != nil {
		return d.limit.ring(peer, vector)
	}
	return d.signalPeer(peer, vector)
}

// signalPeer raises vector of a connected peer.
func (d *Device) signalPeer(peer, vector int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	evs, ok := d.peers[peer]
	if !ok || vector < 0 || vector >= len(evs) {
		return fmt.Errorf("%w: peer %d vector %d", errNoTarget, peer, vector)
	}
	return evs[vector].Signal()
}

// StateChanged implements shmem.Doorbell: the state-change interrupt.
func (b bell) StateChanged(uint32) { b.d.signalPeers() }

// InterruptModeChanged implements shmem.Doorbell.
func (b bell) InterruptModeChanged() { b.d.updateINTx() }

// INTxPending implements shmem.Doorbell: while the vectors drive INTA#,
// the line's state (KVM lowers it at the guest's EOI); while the guest has
// INTx disabled, whether a signal waits to be delivered.
func (b bell) INTxPending() bool {
	d := b.d
	if !d.model.InterruptsEnabled() {
		return false
	}
	d.mu.Lock()
	on := d.intxOn
	d.mu.Unlock()
	if on {
		return d.r.INTx().Asserted()
	}
	return d.msix.Pending()
}

// Piece is a run of the memory BAR with one access.
type Piece struct {
	Offset, Size uint64
	ReadOnly     bool
}

// Pieces splits the used part of the memory BAR of peer id into runs of
// equal access, adjacent runs merged.
func Pieces(l abi.Layout, id int, rwReadOnly bool) []Piece {
	parts := []Piece{{Offset: 0, Size: l.StateTableSize(), ReadOnly: true}}
	if l.RWSize > 0 {
		parts = append(parts, Piece{Offset: l.RWOffset(), Size: l.RWSize, ReadOnly: rwReadOnly})
	}
	for p := 0; p < l.Peers; p++ {
		parts = append(parts, Piece{Offset: l.OutputOffset(p), Size: l.OutputSize, ReadOnly: p != id})
	}
	var out []Piece
	for _, p := range parts {
		if n := len(out); n > 0 && out[n-1].ReadOnly == p.ReadOnly && out[n-1].Offset+out[n-1].Size == p.Offset {
			out[n-1].Size += p.Size
			continue
		}
		out = append(out, p)
	}
	return out
}
