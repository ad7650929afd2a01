package partitioner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"rainforest/internal/units"
)

// ErrMalformed is returned when a sysfs or procfs file does not hold what
// the kernel documents for it. The error names the file.
var ErrMalformed = errors.New("malformed kernel file")

// Roots names the filesystem roots that Discover reads. Tests point them
// at fixture trees; the zero value means the real machine.
type Roots struct {
	Sys  string // sysfs mount point; "" means "/sys"
	Proc string // procfs mount point; "" means "/proc"
}

func (r Roots) sys(rel ...string) string {
	root := r.Sys
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(append([]string{root}, rel...)...)
}

func (r Roots) proc(rel ...string) string {
	root := r.Proc
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(append([]string{root}, rel...)...)
}

// Discover reads the machine's CPUs, NUMA nodes with their memory and
// hugepage pools, and PCI devices from sysfs and procfs under r.
//
// CPUs are the present CPUs (the possible ones when the kernel has no
// "present" file), offline ones included with Online=false. A CPU without
// a topology directory (offline CPUs) gets Core and Package -1 and
// Siblings [id];
// its Node is -1 when the kernel no longer says which node it is on.
// Without /sys/devices/system/node (a kernel without NUMA) the inventory
// has one node 0 holding every CPU, with memory from /proc/meminfo and
// hugepage pools from /sys/kernel/mm/hugepages. A machine without
// /sys/bus/pci has no devices.
func Discover(r Roots) (*Inventory, error) {
	cpus, err := discoverCPUs(r)
	if err != nil {
		return nil, err
	}
	nodes, numa, err := discoverNodes(r)
	if err != nil {
		return nil, err
	}
	if !numa {
		node, err := discoverFlatNode(r)
		if err != nil {
			return nil, err
		}
		nodes = []Node{node}
	}
	if err := placeCPUs(r, cpus, nodes, numa); err != nil {
		return nil, err
	}
	devices, err := discoverPCI(r)
	if err != nil {
		return nil, err
	}
	return &Inventory{CPUs: cpus, Nodes: nodes, Devices: devices}, nil
}

// discoverCPUs reads the CPU lists and each CPU's topology. Node is filled
// in later by placeCPUs.
func discoverCPUs(r Roots) ([]CPU, error) {
	base := r.sys("devices/system/cpu")
	present, err := readList(filepath.Join(base, "present"))
	if errors.Is(err, fs.ErrNotExist) {
		present, err = readList(filepath.Join(base, "possible"))
	}
	if err != nil {
		return nil, err
	}
	online, err := readList(filepath.Join(base, "online"))
	if err != nil {
		return nil, err
	}
	isOnline := make(map[int]bool, len(online))
	ids := append([]int(nil), present...)
	known := make(map[int]bool, len(present))
	for _, id := range present {
		known[id] = true
	}
	for _, id := range online {
		isOnline[id] = true
		if !known[id] {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)

	cpus := make([]CPU, 0, len(ids))
	for _, id := range ids {
		c := CPU{ID: id, Online: isOnline[id], Core: -1, Package: -1, Node: -1, Siblings: []int{id}}
		topo := filepath.Join(base, fmt.Sprintf("cpu%d", id), "topology")
		if _, err := os.Stat(topo); err == nil {
			if c.Core, err = readInt(filepath.Join(topo, "core_id")); err != nil {
				return nil, err
			}
			if c.Package, err = readInt(filepath.Join(topo, "physical_package_id")); err != nil {
				return nil, err
			}
			sib, err := readList(filepath.Join(topo, "thread_siblings_list"))
			if err != nil {
				return nil, err
			}
			c.Siblings = withID(sib, id)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", topo, err)
		}
		cpus = append(cpus, c)
	}
	return cpus, nil
}

// withID returns the sorted list with id in it.
func withID(list []int, id int) []int {
	for _, x := range list {
		if x == id {
			return list
		}
	}
	out := append(list, id)
	sort.Ints(out)
	return out
}

// discoverNodes reads /sys/devices/system/node/nodeN. numa is false when
// the kernel has no node directory (or it holds no nodes).
func discoverNodes(r Roots) (nodes []Node, numa bool, err error) {
	base := r.sys("devices/system/node")
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", base, err)
	}
	for _, e := range entries {
		id, ok := numberAfter(e.Name(), "node")
		if !ok {
			continue
		}
		dir := filepath.Join(base, e.Name())
		n := Node{ID: id}
		if n.CPUs, err = readList(filepath.Join(dir, "cpulist")); err != nil {
			return nil, false, err
		}
		if n.MemTotal, n.MemFree, err = readMeminfo(filepath.Join(dir, "meminfo")); err != nil {
			return nil, false, err
		}
		if n.HugePages, err = readPools(filepath.Join(dir, "hugepages")); err != nil {
			return nil, false, err
		}
		nodes = append(nodes, n)
	}
	if len(nodes) == 0 {
		return nil, false, nil
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	return nodes, true, nil
}

// discoverFlatNode builds node 0 of a kernel without NUMA.
func discoverFlatNode(r Roots) (Node, error) {
	n := Node{ID: 0}
	var err error
	if n.MemTotal, n.MemFree, err = readMeminfo(r.proc("meminfo")); err != nil {
		return Node{}, err
	}
	if n.HugePages, err = readPools(r.sys("kernel/mm/hugepages")); err != nil {
		return Node{}, err
	}
	return n, nil
}

// placeCPUs sets each CPU's node and each node's CPU list. A CPU's node is
// taken from its cpuN/nodeM link, else from the node cpulist that holds
// it; without NUMA every CPU is on node 0.
func placeCPUs(r Roots, cpus []CPU, nodes []Node, numa bool) error {
	nodeOf := map[int]int{}
	if numa {
		for _, n := range nodes {
			for _, c := range n.CPUs {
				nodeOf[c] = n.ID
			}
		}
	}
	index := make(map[int]int, len(nodes))
	for i, n := range nodes {
		index[n.ID] = i
		nodes[i].CPUs = nil
	}
	for i := range cpus {
		c := &cpus[i]
		switch {
		case !numa:
			c.Node = 0
		default:
			dir := r.sys("devices/system/cpu", fmt.Sprintf("cpu%d", c.ID))
			node, ok, err := linkedNode(dir)
			if err != nil {
				return err
			}
			if !ok {
				node, ok = nodeOf[c.ID]
			}
			if ok {
				c.Node = node
			}
		}
		if j, ok := index[c.Node]; ok {
			nodes[j].CPUs = append(nodes[j].CPUs, c.ID)
		}
	}
	for i := range nodes {
		if nodes[i].CPUs == nil {
			nodes[i].CPUs = []int{}
		}
	}
	return nil
}

// linkedNode finds the nodeM entry in a cpuN directory.
func linkedNode(cpuDir string) (int, bool, error) {
	entries, err := os.ReadDir(cpuDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", cpuDir, err)
	}
	for _, e := range entries {
		if id, ok := numberAfter(e.Name(), "node"); ok {
			return id, true, nil
		}
	}
	return 0, false, nil
}

// discoverPCI reads /sys/bus/pci/devices, sorted by address.
func discoverPCI(r Roots) ([]PCIDevice, error) {
	base := r.sys("bus/pci/devices")
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return []PCIDevice{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", base, err)
	}
	devices := make([]PCIDevice, 0, len(entries))
	for _, e := range entries {
		dir := filepath.Join(base, e.Name())
		d := PCIDevice{Address: e.Name(), IOMMUGroup: -1, Node: -1}
		v, err := readHex(filepath.Join(dir, "vendor"), 16)
		if err != nil {
			return nil, err
		}
		d.Vendor = uint16(v)
		if v, err = readHex(filepath.Join(dir, "device"), 16); err != nil {
			return nil, err
		}
		d.Device = uint16(v)
		if v, err = readHex(filepath.Join(dir, "class"), 32); err != nil {
			return nil, err
		}
		d.Class = uint32(v)
		if node, err := readInt(filepath.Join(dir, "numa_node")); err == nil {
			if node >= 0 {
				d.Node = node
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if d.Driver, err = linkBase(filepath.Join(dir, "driver")); err != nil {
			return nil, err
		}
		group, err := linkBase(filepath.Join(dir, "iommu_group"))
		if err != nil {
			return nil, err
		}
		if group != "" {
			g, err := strconv.Atoi(group)
			if err != nil || g < 0 {
				return nil, fmt.Errorf("%s: iommu group %q: %w", filepath.Join(dir, "iommu_group"), group, ErrMalformed)
			}
			d.IOMMUGroup = g
		}
		devices = append(devices, d)
	}
	sort.Slice(devices, func(i, j int) bool { return devices[i].Address < devices[j].Address })
	return devices, nil
}

// readPools reads the hugepages-<size>kB directories under dir, sorted by
// size. A missing dir means no hugepage support: no pools.
func readPools(dir string) ([]HugePool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return []HugePool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	pools := []HugePool{}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "hugepages-") {
			continue
		}
		sub := filepath.Join(dir, name)
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "hugepages-"), "kB"), 10, 64)
		if err != nil || !strings.HasSuffix(name, "kB") || kb == 0 || kb > 1<<44 {
			return nil, fmt.Errorf("%s: bad hugepage size: %w", sub, ErrMalformed)
		}
		p := HugePool{PageSize: kb << 10}
		if p.Total, err = readUint(filepath.Join(sub, "nr_hugepages")); err != nil {
			return nil, err
		}
		if p.Free, err = readUint(filepath.Join(sub, "free_hugepages")); err != nil {
			return nil, err
		}
		pools = append(pools, p)
	}
	sort.Slice(pools, func(i, j int) bool { return pools[i].PageSize < pools[j].PageSize })
	return pools, nil
}

// readMeminfo returns MemTotal and MemFree in bytes from /proc/meminfo
// ("MemTotal:  123 kB") or a node's meminfo ("Node 0 MemTotal:  123 kB").
func readMeminfo(path string) (total, free uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	var haveTotal, haveFree bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			var dst *uint64
			switch f[i] {
			case "MemTotal:":
				dst, haveTotal = &total, true
			case "MemFree:":
				dst, haveFree = &free, true
			default:
				continue
			}
			kb, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil || kb > 1<<53 || (i+2 < len(f) && f[i+2] != "kB") {
				return 0, 0, fmt.Errorf("%s: bad line %q: %w", path, line, ErrMalformed)
			}
			*dst = kb << 10
			break
		}
	}
	if !haveTotal || !haveFree {
		return 0, 0, fmt.Errorf("%s: no MemTotal or MemFree: %w", path, ErrMalformed)
	}
	return total, free, nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func readList(path string) ([]int, error) {
	s, err := readTrimmed(path)
	if err != nil {
		return nil, err
	}
	list, err := units.ParseCPUList(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, ErrMalformed, err)
	}
	return list, nil
}

func readInt(path string) (int, error) {
	s, err := readTrimmed(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number: %w", path, s, ErrMalformed)
	}
	return v, nil
}

func readUint(path string) (uint64, error) {
	s, err := readTrimmed(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a count: %w", path, s, ErrMalformed)
	}
	return v, nil
}

func readHex(path string, bits int) (uint64, error) {
	s, err := readTrimmed(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, bits)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a %d-bit hex number: %w", path, s, bits, ErrMalformed)
	}
	return v, nil
}

// linkBase returns the base name of the symlink's target, "" when there is
// no link.
func linkBase(path string) (string, error) {
	target, err := os.Readlink(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return filepath.Base(target), nil
}

// numberAfter parses names like "node3" into 3.
func numberAfter(name, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return 0, false
	}
	for _, ch := range rest {
		if ch < '0' || ch > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}
