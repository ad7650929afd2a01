package ledger

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"

	"rainforest/partitioner"
)

// randomInventory builds a machine of 1-3 nodes, 2-6 cores per node, 1-2
// threads per core numbered the Linux way (all first threads, then all
// second threads), a few offline CPUs, random hugepage pools and PCI
// devices in random IOMMU groups (some without one).
func randomInventory(rng *rand.Rand) *partitioner.Inventory {
	nodes := 1 + rng.IntN(3)
	coresPerNode := 2 + rng.IntN(5)
	threads := 1 + rng.IntN(2)
	cores := nodes * coresPerNode
	inv := &partitioner.Inventory{}
	for n := range nodes {
		node := partitioner.Node{ID: n, MemTotal: 8 << 30}
		node.HugePages = append(node.HugePages, partitioner.HugePool{PageSize: 2 * mib, Total: uint64(50 + rng.IntN(600))})
		if rng.IntN(2) == 0 {
			node.HugePages = append(node.HugePages, partitioner.HugePool{PageSize: gib, Total: uint64(rng.IntN(5))})
		}
		inv.Nodes = append(inv.Nodes, node)
	}
	for t := range threads {
		for c := range cores {
			id := t*cores + c
			var sib []int
			for s := range threads {
				sib = append(sib, s*cores+c)
			}
			node := c / coresPerNode
			online := id == 0 || rng.IntN(12) != 0
			inv.CPUs = append(inv.CPUs, partitioner.CPU{ID: id, Online: online, Core: c % coresPerNode, Package: node, Node: node, Siblings: sib})
			inv.Nodes[node].CPUs = append(inv.Nodes[node].CPUs, id)
		}
	}
	ndev := rng.IntN(7)
	for d := range ndev {
		group := rng.IntN(4) - 1 // -1: no IOMMU group
		inv.Devices = append(inv.Devices, partitioner.PCIDevice{
			Address: fmt.Sprintf("0000:%02x:00.0", d+1), Driver: []string{"", "ixgbe", "vfio-pci"}[rng.IntN(3)],
			IOMMUGroup: group, Node: rng.IntN(nodes),
		})
	}
	return inv
}

// propertyRun drives a ledger through random operations.
type propertyRun struct {
	t        *testing.T
	rng      *rand.Rand
	inv      *partitioner.Inventory
	hk       []int
	l        *Ledger
	released []Allocation // for re-adoption
	names    []string
	done     map[string][2]int // elastic op -> successes, refusals
}

func (p *propertyRun) randomName() string {
	switch p.rng.IntN(20) {
	case 0:
		return ""
	case 1:
		return "Bad_Name"
	case 2:
		return Supervisor
	}
	return p.names[p.rng.IntN(len(p.names))]
}

func (p *propertyRun) randomPageSize() uint64 {
	switch p.rng.IntN(10) {
	case 0:
		return 4096
	case 1:
		return gib
	}
	return 2 * mib
}

func (p *propertyRun) randomRequest() Request {
	r := Request{Name: p.randomName(), Node: -1, PageSize: p.randomPageSize()}
	switch p.rng.IntN(12) {
	case 0, 1, 2, 3:
		r.Class = LatencyCritical
	case 4, 5:
		r.Class = Batch
	case 6:
		r.Class = "best-effort" // refused
	}
	switch p.rng.IntN(3) {
	case 0: // explicit cores, mostly free ones
		free := p.l.FreeCores()
		n := 1 + p.rng.IntN(3)
		for range n {
			if len(free) > 0 && p.rng.IntN(5) != 0 {
				r.Cores = append(r.Cores, free[p.rng.IntN(len(free))])
			} else {
				r.Cores = append(r.Cores, p.rng.IntN(len(p.inv.CPUs)+2)-1)
			}
		}
	default:
		r.CPUs = p.rng.IntN(5)
	}
	if p.rng.IntN(4) == 0 {
		r.Node = p.rng.IntN(len(p.inv.Nodes)+1) - (p.rng.IntN(8) / 7) // sometimes -1, sometimes a missing node
	}
	pages := uint64(1 + p.rng.IntN(40))
	if r.PageSize == gib {
		pages = uint64(1 + p.rng.IntN(3))
	}
	r.Memory = pages * r.PageSize
	if p.rng.IntN(15) == 0 {
		r.Memory += 4096 // not a multiple
	}
	if p.rng.IntN(30) == 0 {
		r.Memory = 0
	}
	for range max(0, p.rng.IntN(5)-2) {
		if len(p.inv.Devices) > 0 && p.rng.IntN(6) != 0 {
			r.Devices = append(r.Devices, p.inv.Devices[p.rng.IntN(len(p.inv.Devices))].Address)
		} else {
			r.Devices = append(r.Devices, "0000:ff:1f.7")
		}
	}
	return r
}

// checkPublic cross-checks the public views against each other.
func (p *propertyRun) checkPublic(step int) {
	t := p.t
	t.Helper()
	if err := p.l.Verify(); err != nil {
		t.Fatalf("step %d: %v", step, err)
	}
	owned := map[int]string{}
	for _, c := range p.hk {
		owned[c] = Supervisor
	}
	pages := map[poolKey]uint64{}
	for _, a := range p.l.Allocations() {
		for _, c := range a.Cores {
			if o, dup := owned[c]; dup {
				t.Fatalf("step %d: cpu %d owned by %q and %q", step, c, o, a.Name)
			}
			owned[c] = a.Name
		}
		pages[poolKey{a.Node, a.PageSize}] += a.Pages
	}
	var free []int
	for _, c := range p.inv.CPUs {
		if got := p.l.Owner(c.ID); got != owned[c.ID] {
			t.Fatalf("step %d: Owner(%d) = %q, allocations say %q", step, c.ID, got, owned[c.ID])
		}
		if c.Online && owned[c.ID] == "" {
			free = append(free, c.ID)
		}
	}
	if got := p.l.FreeCores(); !slices.Equal(got, free) {
		t.Fatalf("step %d: FreeCores = %v, want %v", step, got, free)
	}
	for _, n := range p.inv.Nodes {
		for _, ps := range []uint64{2 * mib, gib} {
			k := poolKey{n.ID, ps}
			if c := p.l.Capacity(n.ID, ps); pages[k] > c || p.l.FreePages(n.ID, ps) != c-pages[k] {
				t.Fatalf("step %d: node %d %d: capacity %d, free %d, allocated %d", step, n.ID, ps, c, p.l.FreePages(n.ID, ps), pages[k])
			}
		}
	}
}

func (p *propertyRun) reserve(step int) {
	t := p.t
	r := p.randomRequest()
	before := takeSnapshot(p.l)
	probs := p.l.Check(r)
	if !reflect.DeepEqual(before, takeSnapshot(p.l)) {
		t.Fatalf("step %d: Check changed the ledger", step)
	}
	a, err := p.l.Reserve(r)
	if (err == nil) != (len(probs) == 0) {
		t.Fatalf("step %d: Check %v but Reserve %v for %+v", step, probs, err, r)
	}
	if err != nil {
		var re *RequestError
		if !errors.As(err, &re) || !reflect.DeepEqual(re.Problems, probs) {
			t.Fatalf("step %d: Reserve error %v, Check %v", step, err, probs)
		}
		if after := takeSnapshot(p.l); !reflect.DeepEqual(before, after) {
			t.Fatalf("step %d: failed Reserve(%+v) changed the ledger:\nbefore %+v\nafter  %+v", step, r, before, after)
		}
		return
	}
	if a.Name != r.Name || a.Memory != r.Memory || a.PageSize != r.PageSize || a.Pages*a.PageSize != a.Memory {
		t.Fatalf("step %d: Reserve(%+v) = %+v", step, r, a)
	}
	if len(r.Cores) > 0 {
		want := slices.Sorted(slices.Values(r.Cores))
		if !slices.Equal(a.Cores, want) {
			t.Fatalf("step %d: explicit cores %v got %v", step, r.Cores, a.Cores)
		}
	} else if len(a.Cores) != r.CPUs {
		t.Fatalf("step %d: asked %d cpus, got %v", step, r.CPUs, a.Cores)
	}
	if r.Node >= 0 && a.Node != r.Node {
		t.Fatalf("step %d: asked node %d, got %d", step, r.Node, a.Node)
	}
	for _, c := range a.Cores {
		if !before.isFree(p.l, c) {
			t.Fatalf("step %d: got cpu %d that was not free", step, c)
		}
	}
	for _, d := range r.Devices {
		if !slices.Contains(a.Devices, d) {
			t.Fatalf("step %d: asked device %s, got %v", step, d, a.Devices)
		}
	}
	for name, old := range before.allocs {
		got, _ := p.l.Get(name)
		got.Lent = nil // a view, not recorded
		if !reflect.DeepEqual(got, old) {
			t.Fatalf("step %d: Reserve changed %q: %+v -> %+v", step, name, old, got)
		}
	}
}

func (s snapshot) isFree(l *Ledger, cpu int) bool {
	c, ok := l.cpus[cpu]
	return ok && c.Online && s.owner[cpu] == ""
}

func (p *propertyRun) release(step int) {
	name := p.randomName()
	before := takeSnapshot(p.l)
	old, existed := before.allocs[name]
	a, err := p.l.Release(name)
	if !existed {
		if !errors.Is(err, ErrNotFound) || !reflect.DeepEqual(before, takeSnapshot(p.l)) {
			p.t.Fatalf("step %d: Release(%q) of nothing = %v or changed the ledger", step, name, err)
		}
		return
	}
	if err != nil || !reflect.DeepEqual(a, old) {
		p.t.Fatalf("step %d: Release(%q) = %+v, %v, want %+v", step, name, a, err, old)
	}
	// What it borrowed went back to its lenders, not to the free pool.
	for _, ln := range old.Borrowed {
		if _, ok := before.allocs[ln.Lender]; !ok {
			continue
		}
		for _, c := range ln.Cores {
			if o := p.l.Owner(c); o != ln.Lender {
				p.t.Fatalf("step %d: Release(%q): borrowed cpu %d went to %q, not its lender %q", step, name, c, o, ln.Lender)
			}
		}
	}
	// What it lent stays with the borrowers, now their own.
	for _, ln := range p.l.Loans() {
		if ln.Lender == name {
			p.t.Fatalf("step %d: Release(%q) left loan %+v", step, name, ln)
		}
	}
	p.released = append(p.released, a)
}

func (p *propertyRun) adopt(step int) {
	var a Allocation
	if len(p.released) > 0 && p.rng.IntN(3) != 0 {
		a = p.released[p.rng.IntN(len(p.released))].clone()
		if p.rng.IntN(4) == 0 { // corrupt it
			switch p.rng.IntN(4) {
			case 0:
				a.Pages++
			case 1:
				a.Cores = append(a.Cores, p.rng.IntN(len(p.inv.CPUs)))
			case 2:
				a.Node = p.rng.IntN(len(p.inv.Nodes)+1) - 1
			case 3:
				a.Devices = append(a.Devices, "0000:ff:1f.7")
			}
		}
	} else {
		r := p.randomRequest()
		a = Allocation{Name: r.Name, Cores: r.Cores, Node: r.Node, Memory: r.Memory, PageSize: r.PageSize, Devices: r.Devices}
		if r.PageSize != 0 {
			a.Pages = r.Memory / r.PageSize
		}
	}
	before := takeSnapshot(p.l)
	if err := p.l.Adopt(a); err != nil {
		if !reflect.DeepEqual(before, takeSnapshot(p.l)) {
			p.t.Fatalf("step %d: failed Adopt(%+v) (%v) changed the ledger", step, a, err)
		}
		return
	}
	got, ok := p.l.Get(a.Name)
	if !ok || !slices.Equal(got.Cores, slices.Sorted(slices.Values(a.Cores))) || got.Node != a.Node || got.Pages != a.Pages {
		p.t.Fatalf("step %d: Adopt(%+v) recorded %+v", step, a, got)
	}
}

func (p *propertyRun) setCapacity(step int) {
	node := p.rng.IntN(len(p.inv.Nodes)+1) - p.rng.IntN(2)
	ps := p.randomPageSize()
	pages := uint64(p.rng.IntN(600))
	before := takeSnapshot(p.l)
	if err := p.l.SetCapacity(node, ps, pages); err != nil {
		if !reflect.DeepEqual(before, takeSnapshot(p.l)) {
			p.t.Fatalf("step %d: failed SetCapacity changed the ledger", step)
		}
		return
	}
	if p.l.Capacity(node, ps) != pages {
		p.t.Fatalf("step %d: SetCapacity(%d, %d, %d) not applied", step, node, ps, pages)
	}
}

// restart adopts every allocation into a fresh ledger, as a restarted
// supervisor does, and checks that it ends up in the same state.
func (p *propertyRun) restart(step int) {
	l2, err := New(p.inv, p.hk)
	if err != nil {
		p.t.Fatal(err)
	}
	snap := takeSnapshot(p.l)
	for k, c := range snap.capacity {
		if err := l2.SetCapacity(k.node, k.pageSize, c); err != nil {
			p.t.Fatalf("step %d: restart: %v", step, err)
		}
	}
	allocs := p.l.Allocations()
	p.rng.Shuffle(len(allocs), func(i, j int) { allocs[i], allocs[j] = allocs[j], allocs[i] })
	for _, a := range allocs {
		if err := l2.Adopt(a); err != nil {
			p.t.Fatalf("step %d: restart: Adopt(%+v): %v", step, a, err)
		}
	}
	if got := takeSnapshot(l2); !reflect.DeepEqual(snap, got) {
		p.t.Fatalf("step %d: restarted ledger differs:\n%+v\n%+v", step, snap, got)
	}
	p.l = l2
}

func TestPropertyRandomOperations(t *testing.T) {
	const steps = 2000
	total := map[string][2]int{} // elastic op -> successes, refusals over all seeds
	defer func() {
		for _, op := range []string{"resize-cpus", "resize-memory", "lend", "preempt", "return", "set-class"} {
			if n := total[op]; n[0] < 20 || n[1] < 20 {
				t.Errorf("degenerate run: %s succeeded %d times, was refused %d times", op, n[0], n[1])
			}
		}
	}()
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x5eed))
			inv := randomInventory(rng)
			var hk []int
			if rng.IntN(2) == 0 {
				for _, c := range inv.CPUs {
					if c.Online && (len(hk) == 0 || rng.IntN(8) == 0) {
						hk = append(hk, c.ID)
					}
				}
			}
			l, err := New(inv, hk)
			if err != nil {
				t.Fatal(err)
			}
			p := &propertyRun{t: t, rng: rng, inv: inv, l: l, hk: l.Housekeeping(),
				names: []string{"a", "b", "c", "web", "db-1", "x9", "cache", "zz"}, done: map[string][2]int{}}
			var ok, refused int
			for step := range steps {
				switch k := rng.IntN(100); {
				case k < 50:
					n := len(p.l.Allocations())
					p.reserve(step)
					if len(p.l.Allocations()) > n {
						ok++
					} else {
						refused++
					}
				case k < 60:
					p.release(step)
				case k < 68:
					p.adopt(step)
				case k < 72:
					p.setCapacity(step)
				case k < 75:
					p.restart(step)
				case k < 80:
					p.resizeCPUs(step)
				case k < 84:
					p.resizeMemory(step)
				case k < 89:
					p.lend(step)
				case k < 93:
					p.preempt(step)
				case k < 98:
					p.giveBack(step)
				default:
					p.setClass(step)
				}
				p.checkPublic(step)
			}
			if ok < 25 || refused < 100 {
				t.Errorf("degenerate run: %d reserved, %d refused", ok, refused)
			}
			for op, n := range p.done {
				total[op] = [2]int{total[op][0] + n[0], total[op][1] + n[1]}
			}
			t.Logf("%d cpus, %d nodes: %d reserved, %d refused; elastic ops (ok, refused): %v", len(inv.CPUs), len(inv.Nodes), ok, refused, p.done)
		})
	}
}

func TestConcurrentReserve(t *testing.T) {
	// 2 nodes x 16 cores x 2 threads; 64 goroutines each want 1-3 cores.
	inv := &partitioner.Inventory{}
	const cores, threads = 32, 2
	for n := range 2 {
		inv.Nodes = append(inv.Nodes, partitioner.Node{ID: n, HugePages: []partitioner.HugePool{{PageSize: 2 * mib, Total: 10000}}})
	}
	for th := range threads {
		for c := range cores {
			inv.CPUs = append(inv.CPUs, partitioner.CPU{ID: th*cores + c, Online: true, Node: c / 16, Siblings: []int{c, cores + c}})
		}
	}
	l, err := New(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	const workers = 64
	results := make([]Allocation, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("s%d", i)
			results[i], errs[i] = l.Reserve(Request{Name: name, CPUs: 1 + i%3, Node: -1, Memory: 2 * mib * uint64(1+i%5), PageSize: 2 * mib})
			if i%4 == 0 && errs[i] == nil { // churn
				if _, err := l.Release(name); err != nil {
					errs[i] = err
					return
				}
				results[i], errs[i] = l.Reserve(Request{Name: name, CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib})
			}
		}()
	}
	wg.Wait()
	owners := map[int]string{}
	granted := 0
	for i, a := range results {
		if errs[i] != nil {
			if !errors.Is(errs[i], ErrNoCores) {
				t.Errorf("worker %d: %v", i, errs[i])
			}
			continue
		}
		granted += len(a.Cores)
		for _, c := range a.Cores {
			if o, dup := owners[c]; dup {
				t.Fatalf("cpu %d given to %s and %s", c, o, a.Name)
			}
			owners[c] = a.Name
			if l.Owner(c) != a.Name {
				t.Errorf("Owner(%d) = %q, want %q", c, l.Owner(c), a.Name)
			}
		}
	}
	if granted+len(l.FreeCores())+1 != cores*threads {
		t.Errorf("granted %d + free %d + housekeeping 1 != %d", granted, len(l.FreeCores()), cores*threads)
	}
	if err := l.Verify(); err != nil {
		t.Error(err)
	}
}
