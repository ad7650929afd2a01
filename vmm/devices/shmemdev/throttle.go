package shmemdev

import (
	"slices"
	"sync"

	"rainforest/internal/tokenbucket"
)

// DefaultDoorbellLimit is the doorbell limit of a region that sets none:
// 50000 doorbells/s to each peer with a burst of 1024. FICM rings NAPI
// style, once per batch and only while the receiver sleeps, so its
// normal use is far below; a strict ping-pong at a ~10 us round trip
// (about 50000/s each way, the fastest a pair of peers exchanges) is at
// the limit's edge and its excess is coalesced, never lost. What it
// bounds is a storm: one peer can raise at most 50000 interrupts/s in
// another (a few percent of a core), where an unlimited ioeventfd lets
// a spinning guest raise millions.
func DefaultDoorbellLimit() tokenbucket.Limit {
	return tokenbucket.Limit{Rate: 50_000, Burst: 1024}
}

// ThrottleStats counts what the doorbell limit did.
type ThrottleStats struct {
	// Throttled counts doorbells over their peer's limit: each left a
	// delivery pending (or found one pending) instead of signalling.
	Throttled uint64
	// Coalesced counts throttled doorbells that found their vector
	// already pending: they are delivered as that one interrupt.
	Coalesced uint64
	// Deferred counts pending deliveries made once tokens returned.
	Deferred uint64
}

// throttle holds each target peer to a doorbell rate. A doorbell over it
// is never lost: it leaves its vector pending, and a timer delivers every
// pending vector (one interrupt each, however many doorbells were merged)
// when tokens return, so a ring message is never stranded without its
// interrupt. It never sleeps, so it may run on a vCPU thread.
type throttle struct {
	limit  tokenbucket.Limit
	clock  tokenbucket.Clock
	signal func(peer, vector int) error // delivers one doorbell

	mu     sync.Mutex
	peers  map[int]*peerThrottle
	closed bool
	stats  ThrottleStats
}

// peerThrottle is one target peer's bucket and pending vectors.
type peerThrottle struct {
	bucket  *tokenbucket.Bucket
	pending []int       // vectors waiting for a token, in arrival order
	stop    func() bool // the armed delivery timer, nil when none
}

func newThrottle(l tokenbucket.Limit, clock tokenbucket.Clock, signal func(peer, vector int) error) *throttle {
	if clock == nil {
		clock = tokenbucket.SystemClock{}
	}
	return &throttle{limit: l, clock: clock, signal: signal, peers: map[int]*peerThrottle{}}
}

// ring delivers a doorbell to peer's vector now, or leaves it pending.
func (t *throttle) ring(peer, vector int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	p := t.peers[peer]
	if p == nil {
		p = &peerThrottle{bucket: tokenbucket.New(t.limit, t.clock.Now())}
		t.peers[peer] = p
	}
	// Pending doorbells go first: a new one waits behind them.
	if len(p.pending) == 0 && p.bucket.Take(t.clock.Now(), 1) == 0 {
		return t.signal(peer, vector)
	}
	t.stats.Throttled++
	if slices.Contains(p.pending, vector) {
		t.stats.Coalesced++
	} else {
		p.pending = append(p.pending, vector)
	}
	t.arm(peer, p)
	return nil
}

// arm starts peer's delivery timer if it is not running; t.mu is held.
func (t *throttle) arm(peer int, p *peerThrottle) {
	if p.stop != nil {
		return
	}
	wait := max(p.bucket.Delay(t.clock.Now(), 1), 1)
	p.stop = t.clock.AfterFunc(wait, func() { t.deliver(peer) })
}

// deliver signals peer's pending vectors while tokens last and re-arms
// for the rest.
func (t *throttle) deliver(peer int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.peers[peer]
	if t.closed || p == nil {
		return
	}
	p.stop = nil
	for len(p.pending) > 0 && p.bucket.Take(t.clock.Now(), 1) == 0 {
		v := p.pending[0]
		p.pending = p.pending[1:]
		t.stats.Deferred++
		_ = t.signal(peer, v) // a peer that went away has nobody to tell
	}
	if len(p.pending) > 0 {
		t.arm(peer, p)
	}
}

// close stops the timers and drops what is pending; ring does nothing
// after.
func (t *throttle) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, p := range t.peers {
		if p.stop != nil {
			p.stop()
			p.stop = nil
		}
		p.pending = nil
	}
}

func (t *throttle) statsNow() ThrottleStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stats
}
