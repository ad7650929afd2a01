package layout

import (
	"cmp"
	"path/filepath"
	"slices"

	"rainforest/images"
	"rainforest/partitioner"
)

// Names of the subOSes of the default layout.
const (
	DefaultSubOSA = "subos-a"
	DefaultSubOSB = "subos-b"
)

// DefaultMaxMemory caps the memory of each subOS of the default layout.
const DefaultMaxMemory = 512 << 20

// DefaultHotplugMemory is how much each subOS of the default layout can
// grow by while it runs (rfm resize --memory): its max_memory is its
// memory plus this. It costs nothing until plugged.
const DefaultHotplugMemory = 512 << 20

// Default returns the built-in layout for inv: the supervisor keeps the
// first online CPU, and the other online CPUs are split between two
// subOSes, DefaultSubOSA and DefaultSubOSB, by explicit placement.
//
// The split keeps each physical core (SMT siblings) within one subOS and,
// when the free cores span NUMA nodes, cuts at the node boundary nearest
// the middle. With a single free physical core its threads are split
// between the two; with a single free CPU there is only DefaultSubOSA;
// with none (a one-CPU machine) the layout has no subOS at all. SubOSes
// never share a CPU.
//
// Each subOS gets min(DefaultMaxMemory, MemTotal/8) of 2M pages (at least
// one page), can grow by DefaultHotplugMemory while it runs, has a NIC on
// the rootless uplink (outbound network, no host setup) and, with two
// subOSes, a second on the loop network DefaultLoopNetwork between them
// (RFloop, the supervisor's default subnet), boots images/vmlinux with
// images/initramfs.cpio.gz, and has images/disk.img read-only, where
// images is imagesDir.
func Default(inv *partitioner.Inventory, imagesDir string) *Layout {
	l := &Layout{Defaults: Defaults{
		Kernel:   filepath.Join(imagesDir, images.VmlinuxName),
		Initrd:   filepath.Join(imagesDir, images.InitramfsName),
		PageSize: DefaultPageSize,
	}}
	if inv == nil {
		return l
	}
	hk := l.Housekeeping(inv)
	if len(hk) == 0 {
		return l
	}
	l.Supervisor.Cores = hk

	var total uint64
	for _, n := range inv.Nodes {
		total += n.MemTotal
	}
	mem := min(uint64(DefaultMaxMemory), total/8)
	mem -= mem % DefaultPageSize
	mem = max(mem, DefaultPageSize)

	parts := splitFree(inv, hk)
	for i, cores := range parts {
		name := DefaultSubOSA
		if i == 1 {
			name = DefaultSubOSB
		}
		l.SubOSes = append(l.SubOSes, SubOS{
			Name:      name,
			Cores:     cores,
			Node:      -1,
			Memory:    mem,
			MaxMemory: mem + DefaultHotplugMemory,
			PageSize:  DefaultPageSize,
			Kernel:    l.Defaults.Kernel,
			Initrd:    l.Defaults.Initrd,
			Disks:     []Disk{{Path: filepath.Join(imagesDir, images.DiskName), ReadOnly: true}},
			Segments:  []Segment{{Name: DefaultSegment, Size: DefaultSegmentSize}},
			Nets:      []NIC{{User: true}},
		})
	}
	if len(l.SubOSes) == 2 {
		for i := range l.SubOSes {
			l.SubOSes[i].Nets = append(l.SubOSes[i].Nets, NIC{Loop: DefaultLoopNetwork})
		}
		l.fillLoopMembers()
	}
	return l
}

// The default layout's subOSes share one segment.
const (
	DefaultSegment     = "shared"
	DefaultSegmentSize = 1 << 20
)

// physCore is a physical core's free threads.
type physCore struct {
	node    int
	key     int // lowest sibling ID: identifies the core
	threads []int
}

// splitFree splits the online CPUs of inv other than hk into at most two
// non-empty, disjoint, sorted sets (see Default).
func splitFree(inv *partitioner.Inventory, hk []int) [][]int {
	byKey := map[int]*physCore{}
	var cores []*physCore
	for _, c := range inv.CPUs {
		if !c.Online || slices.Contains(hk, c.ID) {
			continue
		}
		key := c.ID
		if len(c.Siblings) > 0 {
			key = min(key, slices.Min(c.Siblings))
		}
		pc, ok := byKey[key]
		if !ok {
			pc = &physCore{node: c.Node, key: key}
			byKey[key] = pc
			cores = append(cores, pc)
		}
		pc.threads = append(pc.threads, c.ID)
	}
	slices.SortFunc(cores, func(a, b *physCore) int {
		return cmp.Or(cmp.Compare(a.node, b.node), cmp.Compare(a.key, b.key))
	})
	flatten := func(cs []*physCore) []int {
		var out []int
		for _, c := range cs {
			out = append(out, c.threads...)
		}
		slices.Sort(out)
		return out
	}
	switch {
	case len(cores) == 0:
		return nil
	case len(cores) == 1:
		t := cores[0].threads
		slices.Sort(t)
		if len(t) == 1 {
			return [][]int{t}
		}
		half := (len(t) + 1) / 2
		return [][]int{slices.Clone(t[:half]), slices.Clone(t[half:])}
	}
	n := len(cores)
	cut := (n + 1) / 2
	best := -1
	for i := 1; i < n; i++ {
		if cores[i].node != cores[i-1].node {
			if best < 0 || absDiff(2*i, n) < absDiff(2*best, n) {
				best = i
			}
		}
	}
	if best > 0 {
		cut = best
	}
	return [][]int{flatten(cores[:cut]), flatten(cores[cut:])}
}

func absDiff(a, b int) int {
	if a > b {
		return a - b
	}
	return b - a
}
