package supervisor

import "rainforest/ledger"

// Usage is what the ledger says of the machine now: which cores are the
// host's, which are free, what each subOS owns, and each hugepage pool's
// pages.
type Usage struct {
	// Housekeeping are the cores kept for the supervisor and the host.
	Housekeeping []int `json:"housekeeping"`
	// FreeCores are the online cores nobody owns.
	FreeCores []int `json:"free_cores"`
	// Allocations say what each subOS owns (cores, pages, devices), by
	// name.
	Allocations []ledger.Allocation `json:"allocations"`
	// Pools are the hugepage pools, by node then page size.
	Pools []PoolUsage `json:"pools"`
}

// PoolUsage is one hugepage pool as the ledger counts it, in pages.
type PoolUsage struct {
	Node     int    `json:"node"`
	PageSize uint64 `json:"page_size"` // bytes
	// Capacity is what the ledger may hand out (the pool as discovered).
	Capacity uint64 `json:"capacity"`
	// Owned are allocated to subOSes, Free the rest of Capacity.
	Owned uint64 `json:"owned"`
	Free  uint64 `json:"free"`
}

// Usage returns the ledger's view of the machine now.
func (s *Supervisor) Usage() Usage {
	u := Usage{Housekeeping: s.ledger.Housekeeping(), FreeCores: s.ledger.FreeCores(), Allocations: s.ledger.Allocations(), Pools: []PoolUsage{}}
	if u.FreeCores == nil {
		u.FreeCores = []int{}
	}
	for _, n := range s.cfg.Inventory.Nodes {
		for _, p := range n.HugePages {
			c, f := s.ledger.Capacity(n.ID, p.PageSize), s.ledger.FreePages(n.ID, p.PageSize)
			u.Pools = append(u.Pools, PoolUsage{Node: n.ID, PageSize: p.PageSize, Capacity: c, Owned: c - min(f, c), Free: f})
		}
	}
	return u
}
