package ledger

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"rainforest/partitioner"
)

const (
	mib = uint64(1) << 20
	gib = uint64(1) << 30
)

// testInventory is a 2-node machine, 2 cores per node, 2 SMT threads per
// core, numbered like Linux does: node 0 has cores {0,4} and {1,5}, node 1
// has {2,6} and {3,7}. CPU 8 (node 1) is offline. Node 0 has 512 2 MiB
// pages and 2 1 GiB pages; node 1 has 256 2 MiB pages and no 1 GiB pool.
func testInventory() *partitioner.Inventory {
	cpu := func(id, core, node, sib int) partitioner.CPU {
		s := []int{id, sib}
		slices.Sort(s)
		return partitioner.CPU{ID: id, Online: true, Core: core, Node: node, Package: node, Siblings: s}
	}
	return &partitioner.Inventory{
		CPUs: []partitioner.CPU{
			cpu(0, 0, 0, 4), cpu(1, 1, 0, 5), cpu(2, 0, 1, 6), cpu(3, 1, 1, 7),
			cpu(4, 0, 0, 0), cpu(5, 1, 0, 1), cpu(6, 0, 1, 2), cpu(7, 1, 1, 3),
			{ID: 8, Online: false, Core: 2, Node: 1, Package: 1},
		},
		Nodes: []partitioner.Node{
			{ID: 0, CPUs: []int{0, 1, 4, 5}, MemTotal: 16 * gib, MemFree: 8 * gib, HugePages: []partitioner.HugePool{
				{PageSize: 2 * mib, Total: 512, Free: 512}, {PageSize: gib, Total: 2, Free: 2}}},
			{ID: 1, CPUs: []int{2, 3, 6, 7, 8}, MemTotal: 16 * gib, MemFree: 8 * gib, HugePages: []partitioner.HugePool{
				{PageSize: 2 * mib, Total: 256, Free: 256}}},
		},
		Devices: []partitioner.PCIDevice{
			{Address: "0000:00:1f.2", Class: 0x010601, Driver: "ahci", IOMMUGroup: 3, Node: 0},
			{Address: "0000:01:00.0", Class: 0x020000, Driver: "ixgbe", IOMMUGroup: 5, Node: 0},
			{Address: "0000:01:00.1", Class: 0x020000, Driver: "ixgbe", IOMMUGroup: 5, Node: 0},
			{Address: "0000:02:00.0", Class: 0x010802, Driver: "vfio-pci", IOMMUGroup: 6, Node: 1},
			{Address: "0000:03:00.0", Class: 0x020000, Driver: "e1000e", IOMMUGroup: -1, Node: -1},
		},
	}
}

func newTestLedger(t *testing.T) *Ledger {
	t.Helper()
	l, err := New(testInventory(), nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

func req(name string, cpus int, mem uint64) Request {
	return Request{Name: name, CPUs: cpus, Node: -1, Memory: mem, PageSize: 2 * mib}
}

// snapshot is a deep copy of a ledger's mutable state.
type snapshot struct {
	capacity    map[poolKey]uint64
	used        map[poolKey]uint64
	owner       map[int]string
	deviceOwner map[string]string
	allocs      map[string]Allocation
}

func takeSnapshot(l *Ledger) snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := snapshot{
		capacity:    maps.Clone(l.capacity),
		used:        maps.Clone(l.used),
		owner:       maps.Clone(l.owner),
		deviceOwner: maps.Clone(l.deviceOwner),
		allocs:      make(map[string]Allocation, len(l.allocs)),
	}
	for k, a := range l.allocs {
		s.allocs[k] = a.clone()
	}
	return s
}

func mustReserve(t *testing.T, l *Ledger, r Request) Allocation {
	t.Helper()
	a, err := l.Reserve(r)
	if err != nil {
		t.Fatalf("Reserve(%+v): %v", r, err)
	}
	if err := l.Verify(); err != nil {
		t.Fatalf("Verify after Reserve: %v", err)
	}
	return a
}

// expectRefused checks that Reserve(r) fails with sentinel and a problem on
// field whose message contains each of want, that Check agrees, and that the
// ledger did not change.
func expectRefused(t *testing.T, l *Ledger, r Request, sentinel error, field string, want ...string) {
	t.Helper()
	before := takeSnapshot(l)
	probs := l.Check(r)
	_, err := l.Reserve(r)
	if err == nil {
		t.Fatalf("Reserve(%+v) succeeded, want %v", r, sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("Reserve(%+v) = %v, want errors.Is %v", r, err, sentinel)
	}
	var re *RequestError
	if !errors.As(err, &re) {
		t.Fatalf("error %T is not a *RequestError", err)
	}
	if !reflect.DeepEqual(re.Problems, probs) {
		t.Errorf("Reserve problems %v != Check problems %v", re.Problems, probs)
	}
	found := false
	for _, p := range probs {
		if p.Field != field {
			continue
		}
		all := true
		for _, w := range want {
			all = all && strings.Contains(p.Message, w)
		}
		found = found || all
	}
	if !found {
		t.Errorf("problems %v: none on %q containing %q", probs, field, want)
	}
	if after := takeSnapshot(l); !reflect.DeepEqual(before, after) {
		t.Errorf("refused Reserve changed the ledger:\nbefore %+v\nafter  %+v", before, after)
	}
	if err := l.Verify(); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestNew(t *testing.T) {
	l := newTestLedger(t)
	if got := l.Housekeeping(); !reflect.DeepEqual(got, []int{0}) {
		t.Errorf("default housekeeping = %v, want [0]", got)
	}
	if o := l.Owner(0); o != Supervisor {
		t.Errorf("Owner(0) = %q", o)
	}
	if got, want := l.FreeCores(), []int{1, 2, 3, 4, 5, 6, 7}; !reflect.DeepEqual(got, want) {
		t.Errorf("FreeCores = %v, want %v", got, want)
	}
	if got := l.FreePages(0, 2*mib); got != 512 {
		t.Errorf("FreePages(0, 2M) = %d", got)
	}
	if got := l.FreePages(1, gib); got != 0 {
		t.Errorf("FreePages(1, 1G) = %d", got)
	}
	if err := l.Verify(); err != nil {
		t.Error(err)
	}

	for _, tc := range []struct {
		name string
		hk   []int
	}{
		{"empty", []int{}},
		{"missing", []int{42}},
		{"offline", []int{8}},
		{"twice", []int{1, 1}},
	} {
		if _, err := New(testInventory(), tc.hk); !errors.Is(err, ErrInvalid) {
			t.Errorf("New(housekeeping %s %v) = %v, want ErrInvalid", tc.name, tc.hk, err)
		}
	}
	if _, err := New(nil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("New(nil) = %v", err)
	}
	if _, err := New(&partitioner.Inventory{Nodes: []partitioner.Node{{ID: 0}}}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("New(no cpus) = %v", err)
	}
	l2, err := New(testInventory(), []int{5, 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := l2.Housekeeping(); !reflect.DeepEqual(got, []int{1, 5}) {
		t.Errorf("Housekeeping = %v", got)
	}
}

func TestNewCopiesInventory(t *testing.T) {
	inv := testInventory()
	l, err := New(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	inv.CPUs[1].Online = false
	inv.CPUs[2].Siblings[0] = 99
	a := mustReserve(t, l, Request{Name: "a", Cores: []int{1}, Node: -1, Memory: 2 * mib, PageSize: 2 * mib})
	if !reflect.DeepEqual(a.Cores, []int{1}) {
		t.Errorf("cores = %v", a.Cores)
	}
}

func TestReserveRelease(t *testing.T) {
	l := newTestLedger(t)
	a := mustReserve(t, l, Request{Name: "web", CPUs: 2, Node: -1, Memory: 64 * mib, PageSize: 2 * mib, Devices: []string{"0000:02:00.0"}})
	want := Allocation{Name: "web", Cores: []int{2, 3}, Node: 1, Memory: 64 * mib, PageSize: 2 * mib, Pages: 32, Devices: []string{"0000:02:00.0"}, Class: Batch}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("Reserve = %+v, want %+v", a, want)
	}
	if got, ok := l.Get("web"); !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("Get = %+v %v", got, ok)
	}
	if l.Owner(2) != "web" || l.Owner(3) != "web" || l.Owner(6) != "" {
		t.Errorf("owners: 2=%q 3=%q 6=%q", l.Owner(2), l.Owner(3), l.Owner(6))
	}
	if l.DeviceOwner("0000:02:00.0") != "web" {
		t.Errorf("DeviceOwner = %q", l.DeviceOwner("0000:02:00.0"))
	}
	if got := l.FreePages(1, 2*mib); got != 256-32 {
		t.Errorf("FreePages = %d", got)
	}
	// Returned slices are copies.
	a.Cores[0] = 7
	if got, _ := l.Get("web"); got.Cores[0] != 2 {
		t.Error("Reserve result aliases the ledger")
	}
	b := mustReserve(t, l, req("db", 1, 2*mib))
	if got := l.Allocations(); len(got) != 2 || got[0].Name != "db" || got[1].Name != "web" {
		t.Errorf("Allocations = %+v", got)
	}

	rel, err := l.Release("web")
	if err != nil || !reflect.DeepEqual(rel, want) {
		t.Fatalf("Release = %+v, %v", rel, err)
	}
	if l.Owner(2) != "" || l.DeviceOwner("0000:02:00.0") != "" || l.FreePages(1, 2*mib) != 256 {
		t.Error("Release left resources owned")
	}
	if _, err := l.Release("web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Release = %v, want ErrNotFound", err)
	}
	if _, err := l.Release(Supervisor); !errors.Is(err, ErrNotFound) {
		t.Errorf("Release(supervisor) = %v, want ErrNotFound", err)
	}
	if _, ok := l.Get("web"); ok {
		t.Error("Get after Release found it")
	}
	if _, err := l.Release(b.Name); err != nil {
		t.Fatal(err)
	}
	if err := l.Verify(); err != nil {
		t.Error(err)
	}
	if got := l.FreeCores(); len(got) != 7 {
		t.Errorf("FreeCores after releasing all = %v", got)
	}
}

func TestProblems(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "taken", Cores: []int{3}, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:01:00.1"}})

	explicit := func(cores ...int) Request {
		return Request{Name: "x", Cores: cores, Node: -1, Memory: 2 * mib, PageSize: 2 * mib}
	}
	withName := func(n string) Request { r := req(n, 1, 2*mib); return r }
	cases := []struct {
		name     string
		r        Request
		sentinel error
		field    string
		want     []string
	}{
		{"duplicate name", withName("taken"), ErrExists, "name", []string{`"taken" already exists`}},
		{"empty name", withName(""), ErrInvalid, "name", []string{"empty"}},
		{"uppercase name", withName("Web"), ErrInvalid, "name", []string{"not a valid subOS name"}},
		{"leading dash", withName("-web"), ErrInvalid, "name", []string{"not a valid"}},
		{"name too long", withName(strings.Repeat("a", 33)), ErrInvalid, "name", []string{"not a valid"}},
		{"name with slash", withName("a/b"), ErrInvalid, "name", []string{"not a valid"}},
		{"reserved name", withName(Supervisor), ErrInvalid, "name", []string{"reserved"}},
		{"core of another subOS", explicit(1, 3), ErrNoCores, "cores", []string{"cpu 3", `subOS "taken"`}},
		{"housekeeping core", explicit(0), ErrNoCores, "cores", []string{"cpu 0", "housekeeping"}},
		{"offline core", explicit(8), ErrInvalid, "cores", []string{"cpu 8 is offline"}},
		{"non-existent core", explicit(1, 42), ErrInvalid, "cores", []string{"cpu 42 does not exist"}},
		{"negative core", explicit(-1), ErrInvalid, "cores", []string{"cpu -1 does not exist"}},
		{"core twice", explicit(1, 1), ErrInvalid, "cores", []string{"cpu 1 listed twice"}},
		{"zero cpus", req("x", 0, 2*mib), ErrInvalid, "cpus", []string{"at least 1"}},
		{"too many cpus", req("x", 7, 2*mib), ErrNoCores, "cpus", []string{"want 7 cores, only 6 free"}},
		{"too many cpus on node", Request{Name: "x", CPUs: 4, Node: 1, Memory: 2 * mib, PageSize: 2 * mib}, ErrNoCores, "cpus", []string{"on node 1", "only 3 free"}},
		{"memory not page multiple", req("x", 1, 3*mib), ErrInvalid, "memory", []string{"not a multiple", "2 MiB"}},
		{"memory zero", req("x", 1, 0), ErrInvalid, "memory", []string{"more than 0"}},
		{"unsupported page size", Request{Name: "x", CPUs: 1, Node: -1, Memory: 4 * mib, PageSize: 4096}, ErrInvalid, "page_size", []string{"unsupported page size 4096"}},
		{"no pool of that size", Request{Name: "x", CPUs: 1, Node: 1, Memory: gib, PageSize: gib}, ErrNoMemory, "memory", []string{"node 1 has no 1 GiB"}},
		{"beyond pool capacity", Request{Name: "x", CPUs: 1, Node: -1, Memory: 3 * gib, PageSize: gib}, ErrNoMemory, "memory", []string{"3 pages", "node 0", "only 2 free"}},
		{"beyond 2M capacity", req("x", 1, 2*gib), ErrNoMemory, "memory", []string{"1024 pages"}},
		{"node does not exist", Request{Name: "x", CPUs: 1, Node: 2, Memory: 2 * mib, PageSize: 2 * mib}, ErrInvalid, "node", []string{"node 2 does not exist"}},
		{"bad node", Request{Name: "x", CPUs: 1, Node: -2, Memory: 2 * mib, PageSize: 2 * mib}, ErrInvalid, "node", []string{"-2"}},
		{"explicit node mismatch", Request{Name: "x", Cores: []int{1, 5}, Node: 1, Memory: 2 * mib, PageSize: 2 * mib}, ErrInvalid, "node", []string{"memory node 1", "node 0"}},
		{"device not found", Request{Name: "x", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:09:00.0"}}, ErrDevice, "devices", []string{"0000:09:00.0 not found"}},
		{"device not isolatable", Request{Name: "x", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:03:00.0"}}, ErrDevice, "devices", []string{"0000:03:00.0 is not isolatable: no IOMMU group"}},
		{"device group conflict", Request{Name: "x", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:01:00.0"}}, ErrDevice, "devices", []string{"0000:01:00.0", "0000:01:00.1", `subOS "taken"`, "IOMMU group 5"}},
		{"device owned", Request{Name: "x", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:01:00.1"}}, ErrDevice, "devices", []string{"0000:01:00.1", `owned by subOS "taken"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			expectRefused(t, l, tc.r, tc.sentinel, tc.field, tc.want...)
		})
	}
}

func TestAllProblemsReported(t *testing.T) {
	l := newTestLedger(t)
	r := Request{Name: "Bad!", Cores: []int{0, 8, 42}, Node: 3, Memory: 3 * mib, PageSize: 2 * mib, Devices: []string{"0000:03:00.0", "nope"}}
	probs := l.Check(r)
	fields := map[string]int{}
	for _, p := range probs {
		fields[p.Field]++
	}
	want := map[string]int{"name": 1, "cores": 3, "node": 1, "memory": 1, "devices": 2}
	if !reflect.DeepEqual(fields, want) {
		t.Errorf("problem fields = %v, want %v (%v)", fields, want, probs)
	}
	_, err := l.Reserve(r)
	for _, s := range []error{ErrInvalid, ErrNoCores, ErrDevice} {
		if !errors.Is(err, s) {
			t.Errorf("error %v does not wrap %v", err, s)
		}
	}
	if errors.Is(err, ErrExists) || errors.Is(err, ErrNoMemory) {
		t.Errorf("error %v wraps a sentinel of no problem", err)
	}
	if msg := probs[0].Error(); !strings.HasPrefix(msg, "name: ") {
		t.Errorf("Problem.Error = %q", msg)
	}
	if len(l.Check(req("ok", 1, 2*mib))) != 0 {
		t.Error("Check of a good request found problems")
	}
}

func TestDeviceGroupAssignedWhole(t *testing.T) {
	l := newTestLedger(t)
	a := mustReserve(t, l, Request{Name: "net", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib,
		Devices: []string{"0000:01:00.1", "0000:01:00.0", "0000:01:00.1"}})
	if want := []string{"0000:01:00.0", "0000:01:00.1"}; !reflect.DeepEqual(a.Devices, want) {
		t.Errorf("devices = %v, want %v", a.Devices, want)
	}
	b := mustReserve(t, l, Request{Name: "net2", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:01:00.0"}[:0]})
	if len(b.Devices) != 0 {
		t.Errorf("devices = %v", b.Devices)
	}
	// A device with a bound host driver nobody asked for is not an owner.
	c := mustReserve(t, l, Request{Name: "disk", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:00:1f.2"}})
	if !reflect.DeepEqual(c.Devices, []string{"0000:00:1f.2"}) {
		t.Errorf("devices = %v", c.Devices)
	}
	if _, err := l.Release("net"); err != nil {
		t.Fatal(err)
	}
	mustReserve(t, l, Request{Name: "net3", CPUs: 1, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Devices: []string{"0000:01:00.0"}})
}

func TestPolicyWholeCoresFirst(t *testing.T) {
	// Node 0: core {0,4} is shared with the supervisor (cpu 0), core {1,5}
	// is whole. Node 1: cores {2,6} and {3,7} are whole.
	l := newTestLedger(t)
	steps := []struct {
		r     Request
		cores []int
		node  int
	}{
		// Node 1 has two whole cores: one thread of each.
		{req("a", 2, 2*mib), []int{2, 3}, 1},
		// No node has 2 whole cores; node 0 (lowest) has whole core {1,5}:
		// its first thread, then its sibling before the thread shared with
		// the supervisor.
		{req("b", 2, 2*mib), []int{1, 5}, 0},
		// Only shared threads left: 4 (node 0) wins over 6,7 only by node order.
		{req("c", 1, 2*mib), []int{4}, 0},
		{req("d", 2, 2*mib), []int{6, 7}, 1},
	}
	for _, s := range steps {
		a := mustReserve(t, l, s.r)
		if !reflect.DeepEqual(a.Cores, s.cores) || a.Node != s.node {
			t.Errorf("Reserve(%s, %d cpus) = cores %v node %d, want %v node %d", s.r.Name, s.r.CPUs, a.Cores, a.Node, s.cores, s.node)
		}
	}
	expectRefused(t, l, req("e", 1, 2*mib), ErrNoCores, "cpus", "only 0 free")
}

func TestPolicyPrefersCleanNode(t *testing.T) {
	l := newTestLedger(t)
	// 3 threads: node 0 would need the thread shared with the supervisor;
	// node 1 has them on whole cores.
	a := mustReserve(t, l, req("a", 3, 2*mib))
	if want := []int{2, 3, 6}; !reflect.DeepEqual(a.Cores, want) || a.Node != 1 {
		t.Errorf("cores %v node %d, want %v node 1", a.Cores, a.Node, want)
	}
}

func TestPolicyMemoryOnCoresNode(t *testing.T) {
	l := newTestLedger(t)
	// 1 GiB pages exist only on node 0, so the cores go there too even
	// though node 1 has more whole cores.
	a := mustReserve(t, l, Request{Name: "big", CPUs: 1, Node: -1, Memory: gib, PageSize: gib})
	if a.Node != 0 || !reflect.DeepEqual(a.Cores, []int{1}) || l.FreePages(0, gib) != 1 {
		t.Errorf("got %+v, free 1G pages on node 0: %d", a, l.FreePages(0, gib))
	}
	// Explicit cores on node 1: memory on node 1.
	b := mustReserve(t, l, Request{Name: "b", Cores: []int{6}, Node: -1, Memory: 4 * mib, PageSize: 2 * mib})
	if b.Node != 1 || l.FreePages(1, 2*mib) != 254 {
		t.Errorf("got %+v", b)
	}
	// Explicit cores and node.
	c := mustReserve(t, l, Request{Name: "c", Cores: []int{5, 4}, Node: 0, Memory: 4 * mib, PageSize: 2 * mib})
	if c.Node != 0 || !reflect.DeepEqual(c.Cores, []int{4, 5}) {
		t.Errorf("got %+v", c)
	}
	// Explicit node without cores: cores come from that node, the whole
	// core {3,7} before {2,6} whose thread 6 is taken.
	d := mustReserve(t, l, Request{Name: "d", CPUs: 1, Node: 1, Memory: 4 * mib, PageSize: 2 * mib})
	if d.Node != 1 || !reflect.DeepEqual(d.Cores, []int{3}) {
		t.Errorf("got %+v", d)
	}
	// Node 1's 2 MiB pool full: cores go to node 0's pool... which has no
	// free core left, so the request fails on memory of node 1.
	if err := l.SetCapacity(1, 2*mib, 4); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, l, req("e", 1, 4*mib), ErrNoMemory, "memory", "node 1", "only 0 free")
}

func TestPolicyMemoryChoosesNode(t *testing.T) {
	l := newTestLedger(t)
	if err := l.SetCapacity(1, 2*mib, 1); err != nil {
		t.Fatal(err)
	}
	// Node 1 has two whole cores, but not the memory: node 0.
	a := mustReserve(t, l, req("a", 2, 4*mib))
	if a.Node != 0 || !reflect.DeepEqual(a.Cores, []int{1, 5}) {
		t.Errorf("got %+v", a)
	}
}

func TestPolicySpansNodesWhenNeeded(t *testing.T) {
	l := newTestLedger(t)
	a := mustReserve(t, l, req("wide", 6, 2*mib))
	if want := []int{1, 2, 3, 5, 6, 7}; !reflect.DeepEqual(a.Cores, want) || a.Node != 1 {
		t.Errorf("got cores %v node %d, want %v node 1", a.Cores, a.Node, want)
	}
	if err := l.Verify(); err != nil {
		t.Error(err)
	}
}

func TestSetCapacity(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "a", CPUs: 1, Node: 0, Memory: 20 * mib, PageSize: 2 * mib}) // 10 pages
	if err := l.SetCapacity(0, 2*mib, 9); !errors.Is(err, ErrNoMemory) {
		t.Errorf("SetCapacity below use = %v", err)
	}
	if err := l.SetCapacity(0, 2*mib, 10); err != nil {
		t.Error(err)
	}
	if l.FreePages(0, 2*mib) != 0 || l.Capacity(0, 2*mib) != 10 {
		t.Errorf("free %d capacity %d", l.FreePages(0, 2*mib), l.Capacity(0, 2*mib))
	}
	if err := l.SetCapacity(1, gib, 4); err != nil {
		t.Error(err)
	}
	if l.FreePages(1, gib) != 4 {
		t.Error("new 1 GiB pool not usable")
	}
	if err := l.SetCapacity(5, gib, 4); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetCapacity(no node) = %v", err)
	}
	if err := l.SetCapacity(0, 4096, 4); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetCapacity(4 KiB) = %v", err)
	}
	if err := l.Verify(); err != nil {
		t.Error(err)
	}
}

func TestAdopt(t *testing.T) {
	l := newTestLedger(t)
	a := mustReserve(t, l, Request{Name: "web", CPUs: 2, Node: -1, Memory: 64 * mib, PageSize: 2 * mib, Devices: []string{"0000:01:00.0"}})
	b := mustReserve(t, l, Request{Name: "db", Cores: []int{5}, Node: 0, Memory: gib, PageSize: gib})

	// A restarted supervisor adopts both.
	l2 := newTestLedger(t)
	for _, x := range []Allocation{b, a} {
		if err := l2.Adopt(x); err != nil {
			t.Fatalf("Adopt(%+v): %v", x, err)
		}
	}
	if !reflect.DeepEqual(l.Allocations(), l2.Allocations()) || !reflect.DeepEqual(takeSnapshot(l), takeSnapshot(l2)) {
		t.Errorf("adopted ledger differs:\n%+v\n%+v", l.Allocations(), l2.Allocations())
	}
	if err := l2.Verify(); err != nil {
		t.Error(err)
	}

	before := takeSnapshot(l2)
	bad := []struct {
		name     string
		a        Allocation
		sentinel error
	}{
		{"again", a, ErrExists},
		{"overlapping cores", Allocation{Name: "x", Cores: []int{2}, Node: 1, Memory: 2 * mib, PageSize: 2 * mib, Pages: 1}, ErrNoCores},
		{"no cores", Allocation{Name: "x", Node: 1, Memory: 2 * mib, PageSize: 2 * mib, Pages: 1}, ErrInvalid},
		{"no node", Allocation{Name: "x", Cores: []int{7}, Node: -1, Memory: 2 * mib, PageSize: 2 * mib, Pages: 1}, ErrInvalid},
		{"pages mismatch", Allocation{Name: "x", Cores: []int{7}, Node: 1, Memory: 2 * mib, PageSize: 2 * mib, Pages: 2}, ErrInvalid},
		{"memory", Allocation{Name: "x", Cores: []int{7}, Node: 1, Memory: gib, PageSize: 2 * mib, Pages: 512}, ErrNoMemory},
		{"device", Allocation{Name: "x", Cores: []int{7}, Node: 1, Memory: 2 * mib, PageSize: 2 * mib, Pages: 1, Devices: []string{"0000:01:00.1"}}, ErrDevice},
		{"housekeeping", Allocation{Name: "x", Cores: []int{0}, Node: 0, Memory: 2 * mib, PageSize: 2 * mib, Pages: 1}, ErrNoCores},
	}
	for _, tc := range bad {
		if err := l2.Adopt(tc.a); !errors.Is(err, tc.sentinel) {
			t.Errorf("Adopt %s = %v, want %v", tc.name, err, tc.sentinel)
		}
	}
	if !reflect.DeepEqual(before, takeSnapshot(l2)) {
		t.Error("refused Adopt changed the ledger")
	}
}

func TestVerifyCatchesCorruption(t *testing.T) {
	corruptions := []struct {
		name string
		mess func(l *Ledger)
	}{
		{"core owned twice", func(l *Ledger) {
			a := l.allocs["b"]
			a.Cores = append(a.Cores, 2)
			l.allocs["b"] = a
		}},
		{"owner without allocation", func(l *Ledger) { l.owner[7] = "ghost" }},
		{"allocation core not owned", func(l *Ledger) { delete(l.owner, 2) }},
		{"housekeeping taken", func(l *Ledger) { l.owner[0] = "a" }},
		{"supervisor owns extra", func(l *Ledger) { l.owner[7] = Supervisor }},
		{"empty owner", func(l *Ledger) { l.owner[7] = "" }},
		{"pages over capacity", func(l *Ledger) { l.capacity[poolKey{1, 2 * mib}] = 1 }},
		{"used drift", func(l *Ledger) { l.used[poolKey{1, 2 * mib}]++ }},
		{"used without allocation", func(l *Ledger) { l.used[poolKey{1, gib}] = 1 }},
		{"pages not memory", func(l *Ledger) { a := l.allocs["a"]; a.Pages++; l.allocs["a"] = a }},
		{"device owner drift", func(l *Ledger) { l.deviceOwner["0000:00:1f.2"] = "a" }},
		{"device not owned", func(l *Ledger) { delete(l.deviceOwner, "0000:02:00.0") }},
		{"renamed", func(l *Ledger) { l.allocs["zz"] = l.allocs["a"] }},
		{"offline core", func(l *Ledger) {
			c := l.cpus[2]
			c.Online = false
			l.cpus[2] = c
		}},
		{"no housekeeping", func(l *Ledger) { l.housekeeping = nil; delete(l.owner, 0) }},
	}
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			l := newTestLedger(t)
			mustReserve(t, l, Request{Name: "a", Cores: []int{2, 3}, Node: -1, Memory: 4 * mib, PageSize: 2 * mib, Devices: []string{"0000:02:00.0"}})
			mustReserve(t, l, Request{Name: "b", Cores: []int{1}, Node: -1, Memory: gib, PageSize: gib})
			c.mess(l)
			err := l.Verify()
			if err == nil {
				t.Fatal("Verify found nothing")
			}
			t.Log(err)
		})
	}
}

func TestRequestErrorMessage(t *testing.T) {
	l := newTestLedger(t)
	_, err := l.Reserve(Request{Name: "x", CPUs: 1, Node: -1, Memory: 1 << 40, PageSize: gib})
	want := `ledger: reserve "x": memory: 1024 pages of 1 GiB wanted on node 0, only 2 free of 2`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant    %s", err, want)
	}
	for ps, name := range map[uint64]string{2 * mib: "2 MiB", gib: "1 GiB", 4096: "4 KiB", 100: "100 B"} {
		if got := sizeName(ps); got != name {
			t.Errorf("sizeName(%d) = %q", ps, got)
		}
	}
}
