// Package fakeirq stands in, for tests of FICM endpoints on plain memory,
// for the ioeventfd -> irqfd wiring between VMs: ringing peer p posts to p's
// one-deep pending-interrupt channel, which p's Waiter takes.
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
}

// New returns the doorbells of peers peers.
func New(peers int) *Interrupts {
	f := &Interrupts{pending: make([]chan struct{}, peers), rung: make([]atomic.Int64, peers)}
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

// Rung counts the doorbells rung on peer.
func (f *Interrupts) Rung(peer int) int64 { return f.rung[peer].Load() }

// Waiter returns peer's waiter.
func (f *Interrupts) Waiter(peer int) Waiter { return Waiter(f.pending[peer]) }

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
