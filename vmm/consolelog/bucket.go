package consolelog

import (
	"sync"
	"time"
)

// Bucket is a token bucket over bytes: it holds at most Burst tokens and
// gains Rate tokens a second. Times are passed in, so that callers (and
// tests) decide the clock.
type Bucket struct {
	mu     sync.Mutex
	rate   float64 // tokens a second
	burst  float64
	tokens float64
	last   time.Time
}

// NewBucket returns a full bucket of burst bytes refilled at rate bytes a
// second.
func NewBucket(rate, burst int) *Bucket {
	return &Bucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst)}
}

func (b *Bucket) refillLocked(now time.Time) {
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
}

// Take removes up to n tokens at time now and returns how many it removed.
func (b *Bucket) Take(now time.Time, n int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked(now)
	got := min(n, int(b.tokens))
	if got < 0 {
		got = 0
	}
	b.tokens -= float64(got)
	return got
}

// Wait returns how long after now the bucket will hold n tokens (capped at
// the burst); zero when it holds them already.
func (b *Bucket) Wait(now time.Time, n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked(now)
	need := min(float64(n), b.burst) - b.tokens
	if need <= 0 {
		return 0
	}
	if b.rate <= 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(need / b.rate * float64(time.Second))
}
