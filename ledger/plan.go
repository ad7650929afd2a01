package ledger

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// problem is a Problem with the sentinel that classifies it.
type problem struct {
	Problem
	kind error
}

type problems []problem

func (ps *problems) add(kind error, field, msg string) {
	*ps = append(*ps, problem{Problem{Field: field, Message: msg}, kind})
}

func (ps problems) list() []Problem {
	if len(ps) == 0 {
		return nil
	}
	out := make([]Problem, len(ps))
	for i, p := range ps {
		out[i] = p.Problem
	}
	return out
}

func (ps problems) err(op, name string) *RequestError {
	e := &RequestError{Op: op, Name: name, Problems: ps.list()}
	for _, p := range ps {
		e.kinds = append(e.kinds, p.kind)
	}
	return e
}

// NameProblem says what is wrong with a subOS name, "" when nothing. The
// supervisor names shared segments by the same rule.
func NameProblem(name string) string {
	if name == "" {
		return "must not be empty"
	}
	if name == Supervisor {
		return fmt.Sprintf("%q is reserved for the supervisor", name)
	}
	ok := len(name) <= MaxNameLen
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0:
		default:
			ok = false
		}
	}
	if !ok {
		return fmt.Sprintf("%q is not a valid subOS name: want 1 to %d of a-z, 0-9 and '-', not starting with '-'", name, MaxNameLen)
	}
	return ""
}

// plan works out the allocation req would get, or every problem with it.
// It changes nothing; the caller holds l.mu.
func (l *Ledger) plan(req Request) (Allocation, problems) {
	var ps problems

	if msg := NameProblem(req.Name); msg != "" {
		ps.add(ErrInvalid, "name", msg)
	} else if _, exists := l.allocs[req.Name]; exists {
		ps.add(ErrExists, "name", fmt.Sprintf("subOS %q already exists", req.Name))
	}

	// Memory shape.
	memOK := true
	var pages uint64
	if !supportedPageSize(req.PageSize) {
		ps.add(ErrInvalid, "page_size", fmt.Sprintf("unsupported page size %d: want %d (2 MiB) or %d (1 GiB)", req.PageSize, PageSize2M, PageSize1G))
		memOK = false
	}
	switch {
	case req.Memory == 0:
		ps.add(ErrInvalid, "memory", "must be more than 0 bytes")
		memOK = false
	case memOK && req.Memory%req.PageSize != 0:
		ps.add(ErrInvalid, "memory", fmt.Sprintf("%d bytes is not a multiple of the page size %s", req.Memory, sizeName(req.PageSize)))
		memOK = false
	}
	if memOK {
		pages = req.Memory / req.PageSize
	}

	nodeOK := true
	switch {
	case req.Node < -1:
		ps.add(ErrInvalid, "node", fmt.Sprintf("%d is not a node (want -1 or a node ID)", req.Node))
		nodeOK = false
	case req.Node >= 0 && !l.hasNode(req.Node):
		ps.add(ErrInvalid, "node", fmt.Sprintf("node %d does not exist", req.Node))
		nodeOK = false
	}

	// Cores, and the memory node.
	var cores []int
	memNode := -1
	if len(req.Cores) > 0 {
		cores, memNode = l.planExplicitCores(req, nodeOK, &ps)
	} else {
		var fits func(node int) bool
		if memOK {
			fits = func(node int) bool { return pages <= l.freePages(poolKey{node, req.PageSize}) }
		}
		cores, memNode = l.planCores(req, nodeOK, fits, &ps)
	}

	// Memory on memNode.
	if memOK && memNode >= 0 {
		k := poolKey{memNode, req.PageSize}
		capacity, pool := l.capacity[k]
		switch {
		case !l.hasNode(memNode):
			ps.add(ErrInvalid, "node", fmt.Sprintf("the cores' node %d is not in the inventory", memNode))
		case !pool:
			ps.add(ErrNoMemory, "memory", fmt.Sprintf("node %d has no %s hugepage pool", memNode, sizeName(req.PageSize)))
		case pages > l.freePages(k):
			ps.add(ErrNoMemory, "memory", fmt.Sprintf("%d pages of %s wanted on node %d, only %d free of %d",
				pages, sizeName(req.PageSize), memNode, l.freePages(k), capacity))
		}
	}

	devices := l.planDevices(req.Devices, &ps)

	class := req.Class
	switch class {
	case "":
		class = Batch
	case Batch, LatencyCritical:
	default:
		ps.add(ErrInvalid, "class", fmt.Sprintf("unknown class %q: want %q or %q", class, LatencyCritical, Batch))
	}

	if len(ps) > 0 {
		return Allocation{}, ps
	}
	return Allocation{
		Name:     req.Name,
		Cores:    cores,
		Node:     memNode,
		Memory:   req.Memory,
		PageSize: req.PageSize,
		Pages:    pages,
		Devices:  devices,
		Class:    class,
	}, nil
}

// planExplicitCores validates req.Cores and picks the memory node: req.Node
// when given (it must be a node of one of the cores), else the node holding
// most of the cores (the lowest such on a tie). It returns the sorted cores.
func (l *Ledger) planExplicitCores(req Request, nodeOK bool, ps *problems) ([]int, int) {
	seen := make(map[int]bool, len(req.Cores))
	perNode := make(map[int]int)
	var cores []int
	for _, c := range req.Cores {
		if seen[c] {
			ps.add(ErrInvalid, "cores", fmt.Sprintf("cpu %d listed twice", c))
			continue
		}
		seen[c] = true
		cpu, exists := l.cpus[c]
		switch owner := l.owner[c]; {
		case !exists:
			ps.add(ErrInvalid, "cores", fmt.Sprintf("cpu %d does not exist", c))
			continue
		case !cpu.Online:
			ps.add(ErrInvalid, "cores", fmt.Sprintf("cpu %d is offline", c))
		case owner == Supervisor:
			ps.add(ErrNoCores, "cores", fmt.Sprintf("cpu %d is the supervisor's housekeeping core", c))
		case owner != "":
			ps.add(ErrNoCores, "cores", fmt.Sprintf("cpu %d is owned by subOS %q", c, owner))
		}
		cores = append(cores, c)
		perNode[cpu.Node]++
	}
	sort.Ints(cores)
	if len(perNode) == 0 {
		return cores, -1
	}
	if req.Node >= 0 {
		if !nodeOK {
			return cores, -1
		}
		if perNode[req.Node] == 0 && !req.anyNode {
			nodes := make([]string, 0, len(perNode))
			for _, n := range sortedKeys(perNode) {
				nodes = append(nodes, fmt.Sprint(n))
			}
			ps.add(ErrInvalid, "node", fmt.Sprintf("memory node %d is not the node of cores %v (node %s)", req.Node, cores, strings.Join(nodes, ", ")))
			return cores, -1
		}
		return cores, req.Node
	}
	best, bestN := -1, 0
	for _, n := range sortedKeys(perNode) {
		if perNode[n] > bestN {
			best, bestN = n, perNode[n]
		}
	}
	return cores, best
}

func sortedKeys(m map[int]int) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// planDevices validates the requested PCI addresses and returns the sorted
// union of their IOMMU groups.
func (l *Ledger) planDevices(addrs []string, ps *problems) []string {
	var out []string
	inOut := make(map[string]bool)
	reported := make(map[string]bool) // conflicting group members already reported
	for _, addr := range addrs {
		if inOut[addr] {
			continue // listed twice, or a member of a group already taken in
		}
		dev, ok := l.devices[addr]
		if !ok {
			ps.add(ErrDevice, "devices", fmt.Sprintf("device %s not found", addr))
			continue
		}
		if dev.IOMMUGroup < 0 {
			ps.add(ErrDevice, "devices", fmt.Sprintf("device %s is not isolatable: no IOMMU group", addr))
			continue
		}
		for _, m := range l.groups[dev.IOMMUGroup] {
			if o := l.deviceOwner[m]; o != "" && !reported[m] {
				reported[m] = true
				who := fmt.Sprintf("subOS %q", o)
				if o == Supervisor {
					who = "the supervisor"
				}
				if m == addr {
					ps.add(ErrDevice, "devices", fmt.Sprintf("device %s (IOMMU group %d) is owned by %s", addr, dev.IOMMUGroup, who))
				} else {
					ps.add(ErrDevice, "devices", fmt.Sprintf("device %s shares IOMMU group %d with %s, owned by %s", addr, dev.IOMMUGroup, m, who))
				}
			}
			if !inOut[m] {
				inOut[m] = true
				out = append(out, m)
			}
		}
	}
	sort.Strings(out)
	return out
}

// planCores chooses req.CPUs cores by the allocation policy and returns them
// sorted with the memory node:
//   - all cores on one NUMA node when possible (req.Node when given, then
//     only that node), preferring a node whose free memory fits (fits; nil
//     means do not care), then a node with enough wholly free cores to
//     take one thread of each, then one with enough threads on wholly free
//     cores, then the lowest node;
//   - within a node, one thread of each wholly free core first, then the
//     other threads of those cores, then free threads of cores shared with
//     another owner;
//   - when no node has enough free threads (and req.Node is -1), cores from
//     the nodes with the most free threads first; memory on the node that
//     holds most of them.
func (l *Ledger) planCores(req Request, nodeOK bool, fits func(int) bool, ps *problems) ([]int, int) {
	n := req.CPUs
	if n < 1 {
		ps.add(ErrInvalid, "cpus", fmt.Sprintf("want at least 1 core, not %d", n))
		return nil, -1
	}
	if !nodeOK {
		return nil, -1
	}
	candidates := l.nodeIDs
	if req.Node >= 0 {
		candidates = []int{req.Node}
	}
	// A node's score: memory fits; enough wholly free cores for one
	// thread each; enough threads on wholly free cores; enough threads.
	type score struct{ mem, whole, clean, any bool }
	best, bestScore := -1, score{}
	better := func(a, b score) bool {
		switch {
		case a.mem != b.mem:
			return a.mem
		case a.whole != b.whole:
			return a.whole
		}
		return a.clean && !b.clean
	}
	for _, node := range candidates {
		whole, clean, free := l.freeOnNode(node)
		s := score{mem: fits == nil || fits(node), whole: whole >= n, clean: clean >= n, any: free >= n}
		if !s.any {
			continue
		}
		if best < 0 || better(s, bestScore) {
			best, bestScore = node, s
		}
	}
	if best >= 0 {
		cores := l.pickOnNode(best, n)
		sort.Ints(cores)
		return cores, best
	}

	total := 0
	type nodeFree struct{ node, free int }
	var byFree []nodeFree
	for _, node := range candidates {
		_, _, free := l.freeOnNode(node)
		total += free
		if free > 0 {
			byFree = append(byFree, nodeFree{node, free})
		}
	}
	if req.Node >= 0 {
		ps.add(ErrNoCores, "cpus", fmt.Sprintf("want %d cores on node %d, only %d free there", n, req.Node, total))
		return nil, -1
	}
	if total < n {
		ps.add(ErrNoCores, "cpus", fmt.Sprintf("want %d cores, only %d free", n, total))
		return nil, -1
	}
	sort.SliceStable(byFree, func(i, j int) bool { return byFree[i].free > byFree[j].free })
	var cores []int
	for _, nf := range byFree {
		take := min(n-len(cores), nf.free)
		if take == 0 {
			break
		}
		cores = append(cores, l.pickOnNode(nf.node, take)...)
	}
	sort.Ints(cores)
	return cores, byFree[0].node
}

// physCore is a physical core's free threads on one node.
type physCore struct {
	free  []int // free threads, sorted
	whole bool  // no online thread of the core is owned
}

// coresOnNode returns the physical cores of node that have a free thread,
// ordered by their lowest thread ID.
func (l *Ledger) coresOnNode(node int) []physCore {
	var out []physCore
	done := make(map[int]bool)
	for _, id := range l.cpuIDs {
		key := l.coreOf[id]
		if done[key] || l.cpus[id].Node != node {
			continue
		}
		done[key] = true
		pc := physCore{whole: true}
		for _, t := range l.coreThreads[key] {
			cpu := l.cpus[t]
			if !cpu.Online {
				continue
			}
			if l.owner[t] != "" {
				pc.whole = false
			} else if cpu.Node == node {
				pc.free = append(pc.free, t)
			}
		}
		if len(pc.free) > 0 {
			out = append(out, pc)
		}
	}
	return out
}

// freeOnNode counts node's wholly free physical cores, the free threads of
// those, and all free threads.
func (l *Ledger) freeOnNode(node int) (whole, clean, threads int) {
	for _, pc := range l.coresOnNode(node) {
		if pc.whole {
			whole++
			clean += len(pc.free)
		}
		threads += len(pc.free)
	}
	return whole, clean, threads
}

// pickOnNode takes n free threads of node (the caller made sure there are):
// one thread of each wholly free core, then the other threads of those
// cores, then threads of cores shared with another owner.
func (l *Ledger) pickOnNode(node, n int) []int {
	cores := l.coresOnNode(node)
	var out []int
	take := func(t int) bool {
		out = append(out, t)
		return len(out) == n
	}
	for _, pc := range cores {
		if pc.whole && take(pc.free[0]) {
			return out
		}
	}
	for _, pc := range cores {
		if !pc.whole {
			continue
		}
		for _, t := range pc.free[1:] {
			if take(t) {
				return out
			}
		}
	}
	for _, pc := range cores {
		if pc.whole {
			continue
		}
		for _, t := range pc.free {
			if take(t) {
				return out
			}
		}
	}
	return slices.Clip(out)
}
