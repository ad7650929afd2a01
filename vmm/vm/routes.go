package vm

import (
	"fmt"
	"sort"
	"sync"

	"rainforest/vmm/kvm"
)

// RoutingTable is a VM's GSI routing: fixed base routes (the irqchip
// inputs) plus the MSI routes devices set. KVM only takes the whole table
// at once, so every change commits all of it; a change whose commit fails
// is undone. It is safe for concurrent use.
type RoutingTable struct {
	mu     sync.Mutex
	base   []kvm.Route
	routes map[uint32]kvm.Route
	commit func([]kvm.Route) error
}

// NewRoutingTable returns a table of base routes that commit applies.
func NewRoutingTable(base []kvm.Route, commit func([]kvm.Route) error) *RoutingTable {
	return &RoutingTable{base: base, routes: map[uint32]kvm.Route{}, commit: commit}
}

// SetMSI routes gsi to an MSI message (a no-op when it already is).
func (t *RoutingTable) SetMSI(gsi uint32, addr uint64, data uint32) error {
	r := kvm.Route{GSI: gsi, Kind: kvm.RouteMSI, Addr: addr, Data: data}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.base {
		if b.GSI == gsi {
			return fmt.Errorf("vm: GSI %d is an irqchip input, not an MSI route", gsi)
		}
	}
	old, had := t.routes[gsi]
	if had && old == r {
		return nil
	}
	t.routes[gsi] = r
	if err := t.commitLocked(); err != nil {
		if had {
			t.routes[gsi] = old
		} else {
			delete(t.routes, gsi)
		}
		return err
	}
	return nil
}

// Remove drops gsi's route (a no-op when it has none).
func (t *RoutingTable) Remove(gsi uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, had := t.routes[gsi]
	if !had {
		return nil
	}
	delete(t.routes, gsi)
	if err := t.commitLocked(); err != nil {
		t.routes[gsi] = old
		return err
	}
	return nil
}

// Len returns the number of routes set beyond the base ones.
func (t *RoutingTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.routes)
}

// Routes returns the whole table as committed, base routes first.
func (t *RoutingTable) Routes() []kvm.Route {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.allLocked()
}

func (t *RoutingTable) allLocked() []kvm.Route {
	rs := append([]kvm.Route(nil), t.base...)
	gsis := make([]uint32, 0, len(t.routes))
	for g := range t.routes {
		gsis = append(gsis, g)
	}
	sort.Slice(gsis, func(i, j int) bool { return gsis[i] < gsis[j] })
	for _, g := range gsis {
		rs = append(rs, t.routes[g])
	}
	return rs
}

func (t *RoutingTable) commitLocked() error { return t.commit(t.allLocked()) }
