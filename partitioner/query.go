package partitioner

import (
	"fmt"
	"sort"
	"strings"

	"rainforest/internal/units"
)

// CPU returns the CPU with the given ID.
func (inv *Inventory) CPU(id int) (CPU, bool) {
	i := sort.Search(len(inv.CPUs), func(i int) bool { return inv.CPUs[i].ID >= id })
	if i < len(inv.CPUs) && inv.CPUs[i].ID == id {
		return inv.CPUs[i], true
	}
	for _, c := range inv.CPUs { // an Inventory built by hand may be unsorted
		if c.ID == id {
			return c, true
		}
	}
	return CPU{}, false
}

// Node returns the NUMA node with the given ID.
func (inv *Inventory) Node(id int) (Node, bool) {
	for _, n := range inv.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// Device returns the PCI device at addr (domain:bus:slot.function).
func (inv *Inventory) Device(addr string) (PCIDevice, bool) {
	for _, d := range inv.Devices {
		if d.Address == addr {
			return d, true
		}
	}
	return PCIDevice{}, false
}

// IOMMUGroupMembers returns the sorted addresses of the devices in IOMMU
// group group; nil for a negative group (no group) or an unknown one.
func (inv *Inventory) IOMMUGroupMembers(group int) []string {
	if group < 0 {
		return nil
	}
	var out []string
	for _, d := range inv.Devices {
		if d.IOMMUGroup == group {
			out = append(out, d.Address)
		}
	}
	sort.Strings(out)
	return out
}

// Pool returns node's hugepage pool of pages of pageSize bytes.
func (inv *Inventory) Pool(node int, pageSize uint64) (HugePool, bool) {
	n, ok := inv.Node(node)
	if !ok {
		return HugePool{}, false
	}
	for _, p := range n.HugePages {
		if p.PageSize == pageSize {
			return p, true
		}
	}
	return HugePool{}, false
}

// Summary describes the inventory in one paragraph for people, e.g.
// "8 CPUs (8 online) in 1 package, 4 cores, 1 NUMA node. Node 0: CPUs 0-7,
// 15.6 GiB memory (12.1 GiB free), hugepages 2M 0/0 free, 1G 0/0 free.
// 6 PCI devices, 5 bound to drivers, 0 in IOMMU groups."
func (inv *Inventory) Summary() string {
	online := 0
	packages := map[int]bool{}
	type coreKey struct{ pkg, core, cpu int }
	cores := map[coreKey]bool{}
	for _, c := range inv.CPUs {
		if !c.Online {
			continue
		}
		online++
		packages[c.Package] = true
		k := coreKey{c.Package, c.Core, -1}
		if c.Core < 0 { // unknown topology: count each CPU as its own core
			k.cpu = c.ID
		}
		cores[k] = true
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d online) in %s, %s, %s.",
		plural(len(inv.CPUs), "CPU"), online, plural(len(packages), "package"),
		plural(len(cores), "core"), plural(len(inv.Nodes), "NUMA node"))
	for _, n := range inv.Nodes {
		cpus := units.FormatCPUList(n.CPUs)
		if cpus == "" {
			cpus = "none"
		}
		fmt.Fprintf(&b, " Node %d: CPUs %s, %s memory (%s free)", n.ID, cpus, gib(n.MemTotal), gib(n.MemFree))
		if len(n.HugePages) == 0 {
			b.WriteString(", no hugepages.")
			continue
		}
		b.WriteString(", hugepages")
		for i, p := range n.HugePages {
			sep := ","
			if i == len(n.HugePages)-1 {
				sep = "."
			}
			fmt.Fprintf(&b, " %s %d/%d free%s", pageSizeName(p.PageSize), p.Free, p.Total, sep)
		}
	}
	drivers, grouped := 0, 0
	for _, d := range inv.Devices {
		if d.Driver != "" {
			drivers++
		}
		if d.IOMMUGroup >= 0 {
			grouped++
		}
	}
	fmt.Fprintf(&b, " %s, %d bound to drivers, %d in IOMMU groups.", plural(len(inv.Devices), "PCI device"), drivers, grouped)
	return b.String()
}

func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func gib(bytes uint64) string {
	return fmt.Sprintf("%.1f GiB", float64(bytes)/(1<<30))
}

// pageSizeName writes a hugepage size as 2M, 1G or 64K.
func pageSizeName(size uint64) string {
	switch {
	case size >= 1<<30 && size%(1<<30) == 0:
		return fmt.Sprintf("%dG", size>>30)
	case size >= 1<<20 && size%(1<<20) == 0:
		return fmt.Sprintf("%dM", size>>20)
	case size%(1<<10) == 0:
		return fmt.Sprintf("%dK", size>>10)
	}
	return fmt.Sprintf("%dB", size)
}
