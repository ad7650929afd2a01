package supervisor

import (
	"maps"
	"sync"
)

// Counters are running totals since this supervisor started: a restarted
// supervisor counts from zero again (as monitoring counters may; the
// audit log itself keeps every event).
type Counters struct {
	// Events counts the audit events recorded, by kind (the events'
	// What: create, destroy, reclaim, agent-unhealthy, seccomp...).
	Events map[string]uint64
	// VMMExits counts the VMMs that ended on their own while their
	// subOS ran (destroyed ones not included).
	VMMExits uint64
}

// counts keeps the Counters.
type counts struct {
	mu       sync.Mutex
	events   map[string]uint64
	vmmExits uint64
}

func (c *counts) event(what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.events == nil {
		c.events = map[string]uint64{}
	}
	c.events[what]++
}

func (c *counts) vmmExit() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vmmExits++
}

// Counters returns the running totals now.
func (s *Supervisor) Counters() Counters {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	ev := maps.Clone(s.counts.events)
	if ev == nil {
		ev = map[string]uint64{}
	}
	return Counters{Events: ev, VMMExits: s.counts.vmmExits}
}
