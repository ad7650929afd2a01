package vm

import (
	"errors"
	"fmt"
	"sync"
)

// ErrExhausted means an allocator has no free number left.
var ErrExhausted = errors.New("vm: none left")

// IDs hands out the lowest free number of [lo, hi) and takes numbers back.
// It is safe for concurrent use.
type IDs struct {
	what   string
	lo, hi uint32
	mu     sync.Mutex
	used   map[uint32]bool
}

// NewIDs returns an allocator of the numbers [lo, hi); what names them in
// errors ("memory slot", "GSI").
func NewIDs(what string, lo, hi uint32) *IDs {
	return &IDs{what: what, lo: lo, hi: hi, used: map[uint32]bool{}}
}

// Alloc returns the lowest free number.
func (a *IDs) Alloc() (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for n := a.lo; n < a.hi; n++ {
		if !a.used[n] {
			a.used[n] = true
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d %ss are in use", ErrExhausted, a.hi-a.lo, a.what)
}

// Free returns n; freeing a number not handed out is an error (a double
// free is a bug in the caller's accounting).
func (a *IDs) Free(n uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.used[n] {
		return fmt.Errorf("vm: %s %d freed but not in use", a.what, n)
	}
	delete(a.used, n)
	return nil
}

// InUse returns how many numbers are handed out.
func (a *IDs) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.used)
}
