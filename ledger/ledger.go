// Package ledger is the supervisor's resource ledger: it divides a machine's
// discovered resources (cores, hugepage memory per NUMA node, PCI devices by
// IOMMU group) among subOSes and records who owns what.
//
// The ledger is pure: it decides and records in memory and touches no file,
// sysfs entry or process. An actuator applies its decisions and the
// ledger/store package persists them. A Ledger is safe for concurrent use.
package ledger

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"rainforest/partitioner"
)

// Supervisor is the owner of the supervisor's housekeeping cores. The empty
// owner means free; any other owner is a subOS name.
const Supervisor = "supervisor"

// Supported hugepage sizes.
const (
	PageSize2M uint64 = 2 << 20
	PageSize1G uint64 = 1 << 30
)

// MaxNameLen is the longest subOS name.
const MaxNameLen = 32

// Sentinel errors; the errors returned by the Ledger wrap them.
var (
	ErrExists   = errors.New("subOS already exists")
	ErrNotFound = errors.New("no such subOS")
	ErrInvalid  = errors.New("invalid request")
	ErrNoCores  = errors.New("cores not available")
	ErrNoMemory = errors.New("not enough hugepage memory")
	ErrDevice   = errors.New("device not assignable")
)

// Request asks for a subOS's resources.
type Request struct {
	Name     string   // subOS name: [a-z0-9][a-z0-9-]{0,31}
	CPUs     int      // number of cores wanted (when Cores is empty)
	Cores    []int    // explicit host CPUs (explicit placement); overrides CPUs
	Node     int      // NUMA node for memory; -1 = the node of the chosen cores
	Memory   uint64   // bytes, multiple of PageSize
	PageSize uint64   // 2<<20 or 1<<30
	Devices  []string // PCI addresses to pass through (whole IOMMU groups)
	Class    Class    // Batch or LatencyCritical; "" means Batch

	// anyNode lets Node be a node none of Cores is on: an adopted
	// allocation's cores may have moved off its memory node by resizes
	// and loans.
	anyNode bool
}

// Allocation is what a subOS owns.
type Allocation struct {
	Name     string   `json:"name"`
	Cores    []int    `json:"cores"` // sorted host CPU IDs
	Node     int      `json:"node"`  // NUMA node of the memory
	Memory   uint64   `json:"memory"`
	PageSize uint64   `json:"page_size"`
	Pages    uint64   `json:"pages"`   // Memory / PageSize
	Devices  []string `json:"devices"` // sorted PCI addresses, whole IOMMU groups
	// Class is Batch or LatencyCritical; a record written before classes
	// existed has none, which Reserve and Adopt read as Batch.
	Class Class `json:"class,omitempty"`
	// Borrowed lists the loans this subOS holds, most recent last. Cores,
	// Memory and Pages above include what they lend it; OwnedCores and
	// OwnedPages leave it out.
	Borrowed []Loan `json:"borrowed,omitempty"`
	// Lent lists the loans this subOS has made, as Get and Allocations
	// report them. It is a view of the borrowers' Borrowed: Adopt ignores
	// it, and a subOS's Cores and Memory do not include what it lent.
	Lent []Loan `json:"lent,omitempty"`
}

func (a Allocation) clone() Allocation {
	a.Cores = slices.Clone(a.Cores)
	a.Devices = slices.Clone(a.Devices)
	a.Borrowed = cloneLoans(a.Borrowed)
	a.Lent = cloneLoans(a.Lent)
	return a
}

// Problem is one reason a request cannot be satisfied; Check returns all of them.
type Problem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (p Problem) Error() string { return p.Field + ": " + p.Message }

// RequestError is the error of a refused Reserve or Adopt. It lists every
// problem and wraps the sentinel (ErrExists, ErrInvalid, ErrNoCores,
// ErrNoMemory, ErrDevice) of each, so errors.Is works for any of them.
type RequestError struct {
	Op       string // "reserve" or "adopt"
	Name     string
	Problems []Problem
	kinds    []error // sentinel of each problem, parallel to Problems
}

func (e *RequestError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return fmt.Sprintf("ledger: %s %q: %s", e.Op, e.Name, strings.Join(msgs, "; "))
}

// Unwrap returns the distinct sentinels of the problems.
func (e *RequestError) Unwrap() []error {
	var out []error
	for _, k := range e.kinds {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

// poolKey names one hugepage pool.
type poolKey struct {
	node     int
	pageSize uint64
}

// Ledger records who owns which resource. The zero value is not usable; use New.
type Ledger struct {
	mu sync.Mutex

	// Immutable after New.
	cpus         map[int]partitioner.CPU
	cpuIDs       []int         // sorted
	nodeIDs      []int         // sorted
	coreOf       map[int]int   // cpu -> physical core key (lowest sibling ID)
	coreThreads  map[int][]int // core key -> sorted thread IDs
	devices      map[string]partitioner.PCIDevice
	groups       map[int][]string // IOMMU group -> sorted addresses
	housekeeping []int            // sorted

	// Mutable state.
	capacity    map[poolKey]uint64    // pages
	used        map[poolKey]uint64    // pages
	owner       map[int]string        // cpu -> owner; absent = free
	deviceOwner map[string]string     // address -> owner; absent = free
	allocs      map[string]Allocation // Lent is never set here; see lentBy
	nextLoan    uint64                // the highest loan ID handed out or adopted
}

// New returns a ledger dividing inv. The housekeeping cores are owned by
// Supervisor; there is at least one (nil means the first online core). The
// capacity of every hugepage pool is its Total as discovered; SetCapacity
// changes it. The ledger keeps its own copy of inv.
func New(inv *partitioner.Inventory, housekeeping []int) (*Ledger, error) {
	if inv == nil {
		return nil, fmt.Errorf("ledger: nil inventory: %w", ErrInvalid)
	}
	l := &Ledger{
		cpus:        make(map[int]partitioner.CPU, len(inv.CPUs)),
		coreOf:      make(map[int]int, len(inv.CPUs)),
		coreThreads: make(map[int][]int),
		devices:     make(map[string]partitioner.PCIDevice, len(inv.Devices)),
		groups:      make(map[int][]string),
		capacity:    make(map[poolKey]uint64),
		used:        make(map[poolKey]uint64),
		owner:       make(map[int]string),
		deviceOwner: make(map[string]string),
		allocs:      make(map[string]Allocation),
	}
	for _, c := range inv.CPUs {
		if c.ID < 0 {
			return nil, fmt.Errorf("ledger: inventory: negative cpu id %d: %w", c.ID, ErrInvalid)
		}
		if _, dup := l.cpus[c.ID]; dup {
			return nil, fmt.Errorf("ledger: inventory: cpu %d listed twice: %w", c.ID, ErrInvalid)
		}
		c.Siblings = slices.Clone(c.Siblings)
		l.cpus[c.ID] = c
		l.cpuIDs = append(l.cpuIDs, c.ID)
	}
	sort.Ints(l.cpuIDs)
	for _, id := range l.cpuIDs {
		key := id
		for _, s := range l.cpus[id].Siblings {
			if _, ok := l.cpus[s]; ok && s < key {
				key = s
			}
		}
		l.coreOf[id] = key
		l.coreThreads[key] = append(l.coreThreads[key], id) // cpuIDs sorted, so threads are too
	}
	seenNode := make(map[int]bool)
	for _, n := range inv.Nodes {
		if seenNode[n.ID] {
			return nil, fmt.Errorf("ledger: inventory: node %d listed twice: %w", n.ID, ErrInvalid)
		}
		seenNode[n.ID] = true
		l.nodeIDs = append(l.nodeIDs, n.ID)
		for _, p := range n.HugePages {
			if supportedPageSize(p.PageSize) {
				l.capacity[poolKey{n.ID, p.PageSize}] = p.Total
			}
		}
	}
	sort.Ints(l.nodeIDs)
	for _, d := range inv.Devices {
		if _, dup := l.devices[d.Address]; dup {
			return nil, fmt.Errorf("ledger: inventory: device %s listed twice: %w", d.Address, ErrInvalid)
		}
		l.devices[d.Address] = d
		if d.IOMMUGroup >= 0 {
			l.groups[d.IOMMUGroup] = append(l.groups[d.IOMMUGroup], d.Address)
		}
	}
	for g := range l.groups {
		sort.Strings(l.groups[g])
	}

	if housekeeping == nil {
		for _, id := range l.cpuIDs {
			if l.cpus[id].Online {
				housekeeping = []int{id}
				break
			}
		}
		if housekeeping == nil {
			return nil, fmt.Errorf("ledger: inventory has no online cpu: %w", ErrInvalid)
		}
	}
	if len(housekeeping) == 0 {
		return nil, fmt.Errorf("ledger: at least one housekeeping core is needed: %w", ErrInvalid)
	}
	for _, c := range housekeeping {
		cpu, ok := l.cpus[c]
		switch {
		case !ok:
			return nil, fmt.Errorf("ledger: housekeeping cpu %d does not exist: %w", c, ErrInvalid)
		case !cpu.Online:
			return nil, fmt.Errorf("ledger: housekeeping cpu %d is offline: %w", c, ErrInvalid)
		case l.owner[c] != "":
			return nil, fmt.Errorf("ledger: housekeeping cpu %d listed twice: %w", c, ErrInvalid)
		}
		l.owner[c] = Supervisor
		l.housekeeping = append(l.housekeeping, c)
	}
	sort.Ints(l.housekeeping)
	return l, nil
}

func supportedPageSize(ps uint64) bool { return ps == PageSize2M || ps == PageSize1G }

func (l *Ledger) hasNode(id int) bool {
	_, ok := slices.BinarySearch(l.nodeIDs, id)
	return ok
}

// SetCapacity sets the number of pages of the pool (node, pageSize) that the
// ledger may hand out, e.g. a MemFree-based figure the supervisor chose. It
// fails when the node does not exist, the page size is not supported, or
// more pages than that are already allocated.
func (l *Ledger) SetCapacity(node int, pageSize uint64, pages uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.hasNode(node) {
		return fmt.Errorf("ledger: set capacity: node %d does not exist: %w", node, ErrInvalid)
	}
	if !supportedPageSize(pageSize) {
		return fmt.Errorf("ledger: set capacity: unsupported page size %d: %w", pageSize, ErrInvalid)
	}
	k := poolKey{node, pageSize}
	if used := l.used[k]; pages < used {
		return fmt.Errorf("ledger: set capacity: node %d %s pool: %d pages already allocated, more than %d: %w",
			node, sizeName(pageSize), used, pages, ErrNoMemory)
	}
	l.capacity[k] = pages
	return nil
}

// Capacity returns the number of pages of the pool (node, pageSize) the
// ledger may hand out; 0 when there is no such pool.
func (l *Ledger) Capacity(node int, pageSize uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.capacity[poolKey{node, pageSize}]
}

// FreePages returns the capacity of the pool (node, pageSize) not allocated.
func (l *Ledger) FreePages(node int, pageSize uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.freePages(poolKey{node, pageSize})
}

func (l *Ledger) freePages(k poolKey) uint64 {
	c, u := l.capacity[k], l.used[k]
	if u >= c {
		return 0
	}
	return c - u
}

// Check returns everything wrong with req; it changes nothing. An empty
// result means Reserve(req) would succeed now.
func (l *Ledger) Check(req Request) []Problem {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, probs := l.plan(req)
	return probs.list()
}

// Reserve allocates req's resources, all or nothing. A refusal is a
// *RequestError listing every problem and wrapping their sentinels.
func (l *Ledger) Reserve(req Request) (Allocation, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, probs := l.plan(req)
	if len(probs) > 0 {
		return Allocation{}, probs.err("reserve", req.Name)
	}
	l.commit(a)
	return a.clone(), nil
}

// Adopt records an allocation that already exists, e.g. of a subOS that
// kept running while the supervisor restarted. It is validated like an
// explicit Reserve (cores, node, memory, page size, devices; but the
// memory node need not be a node of the cores, which resizes and loans can
// move), and Pages must equal Memory/PageSize; its Borrowed loans must be
// consistent with it, their lenders need not exist (yet). Devices are recorded as whole IOMMU groups.
func (l *Ledger) Adopt(a Allocation) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pre problems
	if len(a.Cores) == 0 {
		pre.add(ErrInvalid, "cores", "an allocation must have at least one core")
	}
	if a.Node < 0 {
		pre.add(ErrInvalid, "node", fmt.Sprintf("an allocation must name its memory node, not %d", a.Node))
	}
	if supportedPageSize(a.PageSize) && a.Pages != a.Memory/a.PageSize {
		pre.add(ErrInvalid, "pages", fmt.Sprintf("%d pages of %s is not %d bytes", a.Pages, sizeName(a.PageSize), a.Memory))
	}
	l.checkBorrowed(a, &pre)
	req := Request{Name: a.Name, Cores: a.Cores, Node: a.Node, Memory: a.Memory, PageSize: a.PageSize, Devices: a.Devices, Class: a.Class, anyNode: true}
	if a.Node < 0 {
		req.Node = -1 // reported above; do not report it twice
	}
	planned, probs := l.plan(req)
	probs = append(pre, probs...)
	if len(probs) > 0 {
		return probs.err("adopt", a.Name)
	}
	planned.Borrowed = cloneLoans(a.Borrowed)
	for _, ln := range planned.Borrowed {
		l.nextLoan = max(l.nextLoan, ln.ID)
	}
	l.commit(planned)
	return nil
}

func (l *Ledger) commit(a Allocation) {
	for _, c := range a.Cores {
		l.owner[c] = a.Name
	}
	for _, d := range a.Devices {
		l.deviceOwner[d] = a.Name
	}
	l.used[poolKey{a.Node, a.PageSize}] += a.Pages
	l.allocs[a.Name] = a.clone()
}

// Release frees everything name owns and returns its allocation as it was.
// Its loans are unwound first, as Unwind does: what it borrowed goes back
// to the lenders, what it lent becomes the borrowers' own. A caller that
// must apply those moves calls Unwind before Release.
func (l *Ledger) Release(name string) (Allocation, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.allocs[name]
	if !ok {
		return Allocation{}, fmt.Errorf("ledger: release %q: %w", name, ErrNotFound)
	}
	released := a.clone()
	l.unwind(name, &Change{Op: "release"})
	a = l.allocs[name]
	for _, c := range a.Cores {
		delete(l.owner, c)
	}
	for _, d := range a.Devices {
		delete(l.deviceOwner, d)
	}
	k := poolKey{a.Node, a.PageSize}
	l.used[k] -= a.Pages
	if l.used[k] == 0 {
		delete(l.used, k)
	}
	delete(l.allocs, name)
	return released, nil
}

// Allocations returns every allocation, sorted by name, with Lent filled in.
func (l *Ledger) Allocations() []Allocation {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Allocation, 0, len(l.allocs))
	for _, a := range l.allocs {
		out = append(out, l.view(a))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns name's allocation, with Lent filled in.
func (l *Ledger) Get(name string) (Allocation, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.allocs[name]
	if !ok {
		return Allocation{}, false
	}
	return l.view(a), true
}

// Owner returns the owner of cpu: "" when free (or unknown), Supervisor for
// a housekeeping core, else a subOS name.
func (l *Ledger) Owner(cpu int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.owner[cpu]
}

// DeviceOwner returns the subOS that owns the PCI device at addr, "" when none.
func (l *Ledger) DeviceOwner(addr string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deviceOwner[addr]
}

// Housekeeping returns the supervisor's housekeeping cores.
func (l *Ledger) Housekeeping() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.housekeeping)
}

// FreeCores returns the online cores nobody owns, sorted.
func (l *Ledger) FreeCores() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for _, id := range l.cpuIDs {
		if l.isFree(id) {
			out = append(out, id)
		}
	}
	return out
}

func (l *Ledger) isFree(cpu int) bool {
	c, ok := l.cpus[cpu]
	return ok && c.Online && l.owner[cpu] == ""
}

// Verify checks the ledger's invariants: every core and device has at most
// one owner and that owner exists; the housekeeping cores belong to the
// supervisor; each allocation is consistent; and the pages in use per pool
// are what the allocations add up to and within the pool's capacity.
func (l *Ledger) Verify() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if len(l.housekeeping) == 0 {
		bad("no housekeeping core")
	}
	for _, c := range l.housekeeping {
		if o := l.owner[c]; o != Supervisor {
			bad("housekeeping cpu %d owned by %q", c, o)
		}
	}
	coreClaims := make(map[int]string)
	devClaims := make(map[string]string)
	used := make(map[poolKey]uint64)
	for name, a := range l.allocs {
		if name != a.Name {
			bad("allocation %q recorded under %q", a.Name, name)
		}
		if msg := NameProblem(name); msg != "" {
			bad("allocation %q: %s", name, msg)
		}
		if len(a.Cores) == 0 {
			bad("allocation %q has no cores", name)
		}
		for _, c := range a.Cores {
			if prev, dup := coreClaims[c]; dup {
				bad("cpu %d allocated to both %q and %q", c, prev, name)
			}
			coreClaims[c] = name
			if cpu, ok := l.cpus[c]; !ok || !cpu.Online {
				bad("allocation %q holds cpu %d, which is not an online cpu", name, c)
			}
			if o := l.owner[c]; o != name {
				bad("allocation %q holds cpu %d, whose owner is %q", name, c, o)
			}
		}
		for _, d := range a.Devices {
			if prev, dup := devClaims[d]; dup {
				bad("device %s allocated to both %q and %q", d, prev, name)
			}
			devClaims[d] = name
			if o := l.deviceOwner[d]; o != name {
				bad("allocation %q holds device %s, whose owner is %q", name, d, o)
			}
		}
		if !supportedPageSize(a.PageSize) || a.Pages == 0 || a.Pages*a.PageSize != a.Memory {
			bad("allocation %q: %d pages of %s is not %d bytes", name, a.Pages, sizeName(a.PageSize), a.Memory)
		}
		used[poolKey{a.Node, a.PageSize}] += a.Pages
	}
	errs = append(errs, l.verifyLoans()...)
	for c, o := range l.owner {
		switch {
		case o == "":
			bad("cpu %d has an empty owner entry", c)
		case o == Supervisor:
			if _, ok := slices.BinarySearch(l.housekeeping, c); !ok {
				bad("cpu %d owned by the supervisor but not a housekeeping core", c)
			}
		case coreClaims[c] != o:
			bad("cpu %d owned by %q, which does not hold it", c, o)
		}
	}
	for d, o := range l.deviceOwner {
		if devClaims[d] != o {
			bad("device %s owned by %q, which does not hold it", d, o)
		}
	}
	for k, u := range used {
		if l.used[k] != u {
			bad("node %d %s pool: %d pages recorded in use, allocations hold %d", k.node, sizeName(k.pageSize), l.used[k], u)
		}
		if u > l.capacity[k] {
			bad("node %d %s pool: %d pages allocated, capacity %d", k.node, sizeName(k.pageSize), u, l.capacity[k])
		}
	}
	for k, u := range l.used {
		if _, ok := used[k]; !ok && u != 0 {
			bad("node %d %s pool: %d pages recorded in use, no allocation holds any", k.node, sizeName(k.pageSize), u)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("ledger: invariants violated: %w", errors.Join(errs...))
	}
	return nil
}

// sizeName names a page size for messages.
func sizeName(ps uint64) string {
	switch {
	case ps >= 1<<30 && ps%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", ps>>30)
	case ps >= 1<<20 && ps%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", ps>>20)
	case ps >= 1<<10 && ps%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", ps>>10)
	}
	return fmt.Sprintf("%d B", ps)
}
