// Package endpoint is one peer's view of a FICM group of N peers: a queue
// (ficm/queue) per ordered pair of peers, unicast, multicast and broadcast
// send, round-robin receive, and NAPI-style waiting (poll while busy, arm the
// doorbell and sleep when idle).
//
// # Section layout (ABI)
//
// Every peer i owns one output section of Layout.SectionSize() bytes (a
// multiple of PageSize), writable only by peer i and mapped read-only by the
// others. With P peers and S slots per ring:
//
//	[0, P*128)                   receiver areas, 128 (queue.RxSize) bytes each:
//	                             entry j at j*128 is the consumer index and
//	                             armed word of the queue j -> i
//	[TxBase, TxBase + P*T)       sender areas, T = queue.TxSize(S) = 64+64*S
//	                             bytes each: entry j at TxBase + j*T is the
//	                             producer index and slots of the queue i -> j
//	                             (TxBase = P*128 rounded up to PageSize)
//	up to SectionSize            zero padding
//
// Entries j == i are reserved (a peer has no queue to itself). The queue from
// i to j therefore lives in section i at TxOffset(j) and section j at
// RxOffset(i). Sections must be at least 4-byte aligned (page-aligned in the
// VMM).
//
// The supervisor also publishes a state table (StateTable), read-only to
// every guest, telling which peers are alive; Send and Broadcast skip or
// refuse peers marked dead.
//
// # Doorbells and waiting
//
// Sending a message to a peer whose receiver is armed rings that peer's
// doorbell through the injected Doorbell (in the VMM a guest register write
// that KVM turns into an interrupt in the target VM). Wait polls the incoming
// queues for a budget, then arms them all, re-checks, and blocks in the
// injected Waiter until a doorbell (or spuriously), finally disarming.
//
// # Concurrency and trust
//
// The send side (Send, Multicast, Broadcast) and the receive side (Recv,
// Poll, Wait, RecvWait) may run in two different goroutines; each side must
// be used by one goroutine at a time. Every index and frame read from a peer
// is validated; an incoming queue whose indices are found corrupt is
// disabled (see Broken) and reported once as a *PeerError wrapping
// ring.ErrCorrupt, and the other queues keep working.
package endpoint

import (
	"context"
	"errors"
	"fmt"

	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
)

// DefaultPollRounds is the number of busy-poll rounds Wait makes before
// arming the doorbells when Config.PollRounds is zero.
const DefaultPollRounds = 64

// pollQuantum is how many messages Poll takes from one queue per turn.
const pollQuantum = 16

var (
	// ErrNoPeer is returned for a peer id out of range or equal to Self.
	ErrNoPeer = errors.New("endpoint: no such peer")
	// ErrFull is returned when the queue to a peer has no free slot.
	ErrFull = errors.New("endpoint: queue full")
	// ErrPeerDown is returned when the state table marks the peer dead.
	ErrPeerDown = errors.New("endpoint: peer down")
)

// PeerError reports a failure concerning one peer.
type PeerError struct {
	Peer int
	Err  error
}

func (e *PeerError) Error() string { return fmt.Sprintf("peer %d: %v", e.Peer, e.Err) }

func (e *PeerError) Unwrap() error { return e.Err }

// Doorbell wakes a peer whose receiver is armed.
type Doorbell interface {
	Ring(peer int) error
}

// Waiter blocks until this peer's doorbell may have been rung (spurious
// returns are allowed) or ctx is done, in which case it returns ctx's error.
type Waiter interface {
	Wait(ctx context.Context) error
}

// Config describes an endpoint.
type Config struct {
	// Self is this peer's id.
	Self int
	// Layout is the group's section layout.
	Layout Layout
	// Sections holds every peer's output section, indexed by peer id;
	// Sections[Self] is writable, the others are only read.
	Sections [][]byte
	// State is the group's state table; nil treats every peer as alive.
	State *StateTable
	// Doorbell rings other peers.
	Doorbell Doorbell
	// Waiter sleeps until this peer's doorbell.
	Waiter Waiter
	// PollRounds is how many times Wait polls before arming; 0 means
	// DefaultPollRounds.
	PollRounds int
}

// Endpoint is one peer's end of a FICM group.
type Endpoint struct {
	self       int
	layout     Layout
	out        []*queue.Sender   // out[p]: queue self -> p; nil for self
	in         []*queue.Receiver // in[p]: queue p -> self; nil for self
	broken     []bool            // in[p] disabled after corruption
	state      *StateTable
	doorbell   Doorbell
	waiter     Waiter
	pollRounds int
	next       int // round-robin start of the next receive
}

// New returns the endpoint described by cfg.
func New(cfg Config) (*Endpoint, error) {
	l := cfg.Layout
	if l.peers == 0 {
		return nil, fmt.Errorf("%w: zero Layout", ring.ErrLayout)
	}
	if cfg.Self < 0 || cfg.Self >= l.peers {
		return nil, fmt.Errorf("%w: self %d", ErrNoPeer, cfg.Self)
	}
	if cfg.Doorbell == nil || cfg.Waiter == nil {
		return nil, errors.New("endpoint: Doorbell and Waiter are required")
	}
	e := &Endpoint{
		self:       cfg.Self,
		layout:     l,
		out:        make([]*queue.Sender, l.peers),
		in:         make([]*queue.Receiver, l.peers),
		broken:     make([]bool, l.peers),
		state:      cfg.State,
		doorbell:   cfg.Doorbell,
		waiter:     cfg.Waiter,
		pollRounds: cfg.PollRounds,
	}
	if e.pollRounds <= 0 {
		e.pollRounds = DefaultPollRounds
	}
	for p := range l.peers {
		if p == e.self {
			continue
		}
		tx, rx, err := l.QueueAreas(cfg.Sections, e.self, p)
		if err != nil {
			return nil, err
		}
		if e.out[p], err = queue.NewSender(tx, rx, l.slots); err != nil {
			return nil, fmt.Errorf("queue %d->%d: %w", e.self, p, err)
		}
		if tx, rx, err = l.QueueAreas(cfg.Sections, p, e.self); err != nil {
			return nil, err
		}
		if e.in[p], err = queue.NewReceiver(tx, rx, l.slots); err != nil {
			return nil, fmt.Errorf("queue %d->%d: %w", p, e.self, err)
		}
	}
	return e, nil
}

// Self returns this peer's id.
func (e *Endpoint) Self() int { return e.self }

// Layout returns the group's layout.
func (e *Endpoint) Layout() Layout { return e.layout }

// Broken reports whether the incoming queue from peer was disabled because
// the peer corrupted it.
func (e *Endpoint) Broken(peer int) bool {
	return peer >= 0 && peer < len(e.broken) && e.broken[peer]
}

// Send sends m to peer to, ringing its doorbell if it is armed. Errors are
// *PeerError wrapping ErrNoPeer, ErrPeerDown, ErrFull, ring.ErrCorrupt,
// queue.ErrTooLong or the doorbell's error.
func (e *Endpoint) Send(to int, m queue.Message) error {
	if to < 0 || to >= len(e.out) || to == e.self {
		return &PeerError{Peer: to, Err: ErrNoPeer}
	}
	if e.state != nil && !e.state.Alive(to) {
		return &PeerError{Peer: to, Err: ErrPeerDown}
	}
	ok, bell, err := e.out[to].TryPush(m)
	if err != nil {
		return &PeerError{Peer: to, Err: err}
	}
	if !ok {
		return &PeerError{Peer: to, Err: ErrFull}
	}
	if bell {
		if err := e.doorbell.Ring(to); err != nil {
			return &PeerError{Peer: to, Err: fmt.Errorf("doorbell: %w", err)}
		}
	}
	return nil
}

// Multicast sends m to every peer in to (each id once) and returns the
// failures joined (errors.Join of *PeerError), or nil.
func (e *Endpoint) Multicast(to []int, m queue.Message) error {
	var errs []error
	for _, p := range to {
		if err := e.Send(p, m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Broadcast sends m to every other peer alive in the state table and
// returns the failures joined, or nil.
func (e *Endpoint) Broadcast(m queue.Message) error {
	var errs []error
	for p := range e.out {
		if p == e.self || (e.state != nil && !e.state.Alive(p)) {
			continue
		}
		if err := e.Send(p, m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fail records a receive error from peer p and wraps it.
func (e *Endpoint) fail(p int, err error) error {
	if errors.Is(err, ring.ErrCorrupt) {
		e.broken[p] = true
	}
	return &PeerError{Peer: p, Err: err}
}

// Recv receives one message, taking the incoming queues in round-robin
// order. ok is false when all are empty. A receive error is a *PeerError
// naming the sender; the next call goes on with the other queues.
func (e *Endpoint) Recv() (from int, m queue.Message, ok bool, err error) {
	n := len(e.in)
	for k := range n {
		p := (e.next + k) % n
		if e.in[p] == nil || e.broken[p] {
			continue
		}
		m, ok, err := e.in[p].TryPop()
		if err != nil || ok {
			e.next = (p + 1) % n
		}
		if err != nil {
			return p, queue.Message{}, false, e.fail(p, err)
		}
		if ok {
			return p, m, true, nil
		}
	}
	return -1, queue.Message{}, false, nil
}

// Poll receives up to budget messages, calling handle for each, taking up
// to 16 messages from each incoming queue in turn, and returns how many it
// handled. It stops at the first receive error (a *PeerError).
func (e *Endpoint) Poll(budget int, handle func(from int, m queue.Message)) (int, error) {
	n := len(e.in)
	total := 0
	for total < budget {
		progress := false
		for k := range n {
			p := (e.next + k) % n
			if e.in[p] == nil || e.broken[p] {
				continue
			}
			got, err := e.in[p].Poll(min(pollQuantum, budget-total), func(m queue.Message) { handle(p, m) })
			total += got
			if got > 0 {
				progress = true
			}
			if err != nil {
				e.next = (p + 1) % n
				return total, e.fail(p, err)
			}
			if total >= budget {
				e.next = (p + 1) % n
				return total, nil
			}
		}
		if !progress {
			break
		}
	}
	return total, nil
}

// ready reports whether some incoming queue has a message or an error to
// report.
func (e *Endpoint) ready() bool {
	for p, q := range e.in {
		if q == nil || e.broken[p] {
			continue
		}
		if n, err := q.Pending(); n > 0 || err != nil {
			return true
		}
	}
	return false
}

func (e *Endpoint) disarmAll() {
	for _, q := range e.in {
		if q != nil {
			q.Disarm()
		}
	}
}

// Wait returns when a message (or a receive error) may be waiting: it polls
// the incoming queues PollRounds times, then arms every queue's doorbell,
// re-checks, and sleeps in the Waiter; it disarms before returning. It
// returns ctx's error if ctx ends first.
func (e *Endpoint) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for range e.pollRounds {
		if e.ready() {
			return nil
		}
	}
	for p, q := range e.in {
		if q == nil || e.broken[p] {
			continue
		}
		if idle, err := q.Arm(); !idle || err != nil {
			e.disarmAll()
			return nil
		}
	}
	err := e.waiter.Wait(ctx)
	e.disarmAll()
	return err
}

// RecvWait receives one message, waiting (see Wait) while there is none.
func (e *Endpoint) RecvWait(ctx context.Context) (from int, m queue.Message, err error) {
	for {
		from, m, ok, err := e.Recv()
		if err != nil || ok {
			return from, m, err
		}
		if err := e.Wait(ctx); err != nil {
			return -1, queue.Message{}, err
		}
	}
}
