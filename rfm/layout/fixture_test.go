package layout

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"rainforest/ledger"
	"rainforest/partitioner"
)

// fixture builds an inventory of ncpu CPUs, threads per physical core,
// spread over nodes NUMA nodes, each node with memPerNode bytes and a 2M
// pool of half of it. CPU c's siblings are c, c+cores, ... as Linux numbers
// them.
func fixture(ncpu, threads, nodes int, memPerNode uint64) *partitioner.Inventory {
	inv := &partitioner.Inventory{}
	cores := ncpu / threads
	for n := 0; n < nodes; n++ {
		inv.Nodes = append(inv.Nodes, partitioner.Node{
			ID: n, MemTotal: memPerNode, MemFree: memPerNode / 2,
			HugePages: []partitioner.HugePool{
				{PageSize: PageSize2M, Total: memPerNode / 2 / PageSize2M, Free: memPerNode / 2 / PageSize2M},
				{PageSize: PageSize1G},
			},
		})
	}
	for c := 0; c < ncpu; c++ {
		core := c % cores
		node := core * nodes / cores
		var sib []int
		for t := 0; t < threads; t++ {
			sib = append(sib, core+t*cores)
		}
		inv.CPUs = append(inv.CPUs, partitioner.CPU{ID: c, Online: true, Core: core, Node: node, Siblings: sib})
		inv.Nodes[node].CPUs = append(inv.Nodes[node].CPUs, c)
	}
	return inv
}

// writeFiles creates empty files under dir and returns their paths.
func writeFiles(t *testing.T, dir string, names ...string) []string {
	t.Helper()
	var out []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// fakeChecker is a ledger of cores, one memory pool and devices, enough
// to see what Check asks and reserves.
type fakeChecker struct {
	pool       uint64            // bytes of hugepage memory
	used       uint64            // bytes reserved
	owner      map[int]string    // cpu -> subOS
	devOwner   map[string]string // device -> subOS
	names      map[string]bool
	badDevices map[string]string // device -> message
	extra      map[string][]ledger.Problem
	checked    []ledger.Request
	reserved   []ledger.Request
}

func newFakeChecker(pool uint64) *fakeChecker {
	return &fakeChecker{pool: pool, owner: map[int]string{}, devOwner: map[string]string{}, names: map[string]bool{}, badDevices: map[string]string{}, extra: map[string][]ledger.Problem{}}
}

func (f *fakeChecker) Check(req ledger.Request) []ledger.Problem {
	f.checked = append(f.checked, req)
	var ps []ledger.Problem
	if f.names[req.Name] {
		ps = append(ps, ledger.Problem{Field: "name", Message: fmt.Sprintf("subOS %q already exists", req.Name)})
	}
	for _, c := range req.Cores {
		if o := f.owner[c]; o != "" {
			ps = append(ps, ledger.Problem{Field: "cores", Message: fmt.Sprintf("cpu %d is owned by subOS %q", c, o)})
		}
	}
	if req.Memory > f.pool-f.used {
		ps = append(ps, ledger.Problem{Field: "memory", Message: fmt.Sprintf("%d bytes wanted, only %d free", req.Memory, f.pool-f.used)})
	}
	for _, d := range req.Devices {
		if msg, bad := f.badDevices[d]; bad {
			ps = append(ps, ledger.Problem{Field: "devices", Message: msg})
		} else if o := f.devOwner[d]; o != "" {
			ps = append(ps, ledger.Problem{Field: "devices", Message: fmt.Sprintf("device %s is owned by %s", d, o)})
		}
	}
	return append(ps, f.extra[req.Name]...)
}

func (f *fakeChecker) Reserve(req ledger.Request) (ledger.Allocation, error) {
	if ps := f.Check(req); len(ps) > 0 {
		return ledger.Allocation{}, fmt.Errorf("refused: %v", ps)
	}
	f.reserved = append(f.reserved, req)
	f.names[req.Name] = true
	f.used += req.Memory
	for _, c := range req.Cores {
		f.owner[c] = req.Name
	}
	for _, d := range req.Devices {
		f.devOwner[d] = req.Name
	}
	return ledger.Allocation{Name: req.Name, Cores: slices.Clone(req.Cores), Memory: req.Memory, PageSize: req.PageSize}, nil
}

func problemStrings(ps []Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Error()
	}
	return out
}
