// Package fakeirq stands in, for tests of FICM endpoints on plain memory,
// for the ioeventfd -> irqfd wiring between VMs: ringing peer p posts to p's
// one-deep pending-interrupt channel, which p's Waiter takes. StateChanged
// stands in for the device's state-change interrupt, which rings every
// other peer on the same vector as the FICM doorbell.
package fakeirq

import (
	"context"
	"fmt"
	"sync/atomic"
)

// Interrupts is the doorbell of every peer of a group; it implements
// endpoint.Doorbell.
type Interrupts struct {
	pending []chan struct{}
	rung    []atomic.Int64
	waits   []atomic.Int64
}

// New returns the doorbells of peers peers.
func New(peers int) *Interrupts {
	f := &Interrupts{pending: make([]chan struct{}, peers), rung: make([]atomic.Int64, peers), waits: make([]atomic.Int64, peers)}
	for i := range f.pending {
		f.pending[i] = make(chan struct{}, 1)
	}
	return f
}

// Ring posts an interrupt to peer.
func (f *Interrupts) Ring(peer int) error {
	if peer < 0 || peer >= len(f.pending) {
		return fmt.Errorf("no doorbell for peer %d", peer)
	}
	f.rung[peer].Add(1)
	select {
	case f.pending[peer] <- struct{}{}:
	default:
	}
	return nil
}

// StateChanged posts the state-change interrupt of peer changed's entry
// of the state table: an interrupt to every other peer.
func (f *Interrupts) StateChanged(changed int) {
	for p := range f.pending {
		if p != changed {
			_ = f.Ring(p)
		}
	}
}

// Rung counts the doorbells rung on peer.
func (f *Interrupts) Rung(peer int) int64 { return f.rung[peer].Load() }

// Waits counts the calls of peer's waiter: how often it went to sleep.
func (f *Interrupts) Waits(peer int) int64 { return f.waits[peer].Load() }

// Waiter returns peer's waiter, which counts its calls (Waits).
func (f *Interrupts) Waiter(peer int) PeerWaiter {
	return PeerWaiter{pending: f.pending[peer], waits: &f.waits[peer]}
}

// PeerWaiter is one peer's waiter of an Interrupts; it implements
// endpoint.Waiter.
type PeerWaiter struct {
	pending Waiter
	waits   *atomic.Int64
}

// Wait counts the call and takes one pending interrupt (see Waiter.Wait).
func (w PeerWaiter) Wait(ctx context.Context) error {
	w.waits.Add(1)
	return w.pending.Wait(ctx)
}

// Waiter takes one pending interrupt; it implements endpoint.Waiter.
type Waiter chan struct{}

// Wait blocks until an interrupt is pending or ctx is done.
func (w Waiter) Wait(ctx context.Context) error {
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
