package benchkit

import "sync"

// Collector gathers a session's results from its output lines as they
// stream in: Line is a kvmhost.Script's Lines function. Each result is
// told to Progress as it arrives, so that a long session shows where it
// is, and a session that dies keeps what it measured.
type Collector[T any] struct {
	// Parse parses one line (a result line codec's ParseLine).
	Parse func(line string) (result T, ok bool, err error)
	// Progress, when set, is called with each result and how many have
	// arrived.
	Progress func(result T, n int)

	mu      sync.Mutex
	results []T
	errs    []error
}

// Line parses one line of output.
func (c *Collector[T]) Line(line string) {
	r, ok, err := c.Parse(line)
	if err == nil && !ok {
		return
	}
	c.mu.Lock()
	if err != nil {
		c.errs = append(c.errs, err)
		c.mu.Unlock()
		return
	}
	c.results = append(c.results, r)
	n := len(c.results)
	c.mu.Unlock()
	if c.Progress != nil {
		c.Progress(r, n)
	}
}

// Results returns the results so far, in order, and the errors of the
// lines that failed to parse.
func (c *Collector[T]) Results() ([]T, []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]T(nil), c.results...), append([]error(nil), c.errs...)
}
