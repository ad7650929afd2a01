// Package tokenbucket is the one rate limiter of RainForest: a token bucket
// (a rate per second and a burst) that never sleeps. Take either grants a
// cost now or says how long until it could be granted, so a caller that
// must not block (a device model served on a VMM thread, the supervisor's
// loop) arranges its own wake-up with a Clock's AfterFunc, and tests drive
// time with a fake Clock (tokenbucket/fakeclock) instead of the wall clock.
//
// A cost larger than the burst is granted once the bucket is full and
// leaves it in debt, so an oversized request (one large disk read) is
// delayed in proportion to its size and never refused forever.
package tokenbucket

import (
	"math"
	"sync"
	"time"
)

// Limit is a rate with a burst. The zero Limit means unlimited.
type Limit struct {
	// Rate is tokens per second; 0 means unlimited.
	Rate uint64 `json:"rate"`
	// Burst is the bucket's size in tokens; 0 means one second's worth
	// (Rate).
	Burst uint64 `json:"burst,omitempty"`
}

// Unlimited reports whether l limits nothing.
func (l Limit) Unlimited() bool { return l.Rate == 0 }

// size is the bucket's capacity in tokens.
func (l Limit) size() float64 {
	if l.Burst == 0 {
		return float64(l.Rate)
	}
	return float64(l.Burst)
}

// Bucket is a token bucket, safe for concurrent use. It starts full.
type Bucket struct {
	limit Limit

	mu     sync.Mutex
	tokens float64 // may be negative after an oversized grant
	last   time.Time
}

// New returns a full bucket for l at now; nil when l is unlimited (a nil
// *Bucket grants everything).
func New(l Limit, now time.Time) *Bucket {
	if l.Unlimited() {
		return nil
	}
	return &Bucket{limit: l, tokens: l.size(), last: now}
}

// Limit returns the bucket's limit (the zero Limit for a nil bucket).
func (b *Bucket) Limit() Limit {
	if b == nil {
		return Limit{}
	}
	return b.limit
}

// refill adds the tokens earned since last; b.mu is held.
func (b *Bucket) refill(now time.Time) {
	if now.After(b.last) {
		b.tokens = math.Min(b.limit.size(), b.tokens+now.Sub(b.last).Seconds()*float64(b.limit.Rate))
		b.last = now
	}
}

// Delay returns how long until Take(now, cost) would succeed, taking
// nothing: 0 when it would now.
func (b *Bucket) Delay(now time.Time, cost uint64) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.delay(now, cost)
}

// delay is Delay with b.mu held.
func (b *Bucket) delay(now time.Time, cost uint64) time.Duration {
	b.refill(now)
	need := math.Min(float64(cost), b.limit.size())
	if b.tokens >= need {
		return 0
	}
	wait := time.Duration(math.Ceil((need - b.tokens) / float64(b.limit.Rate) * float64(time.Second)))
	return max(wait, 1)
}

// Take takes cost tokens at now when there are enough (or, for a cost
// above the burst, when the bucket is full) and returns 0; otherwise it
// takes nothing and returns how long until the same Take would succeed.
func (b *Bucket) Take(now time.Time, cost uint64) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.delay(now, cost); w > 0 {
		return w
	}
	b.tokens -= float64(cost)
	return 0
}

// TakeUpTo takes as many of n tokens as the bucket holds at now (never
// going into debt) and returns how many it took: a caller that can cut its
// work short, such as a log dropping what is over its rate, takes a part.
func (b *Bucket) TakeUpTo(now time.Time, n uint64) uint64 {
	if b == nil {
		return n
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(now)
	if b.tokens < 1 {
		return 0
	}
	got := min(n, uint64(b.tokens))
	b.tokens -= float64(got)
	return got
}

// Clock is the time source of the callers that wait for tokens.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; stop cancels a call
	// that has not started and reports whether it did.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc is time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
