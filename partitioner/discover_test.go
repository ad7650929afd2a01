package partitioner

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fixture builds a fake sysfs and procfs tree in a temporary directory.
type fixture struct {
	t    *testing.T
	root string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return &fixture{t: t, root: t.TempDir()}
}

func (f *fixture) roots() Roots {
	return Roots{Sys: filepath.Join(f.root, "sys"), Proc: filepath.Join(f.root, "proc")}
}

// file writes content to the file at rel (under the fixture root), creating
// directories.
func (f *fixture) file(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// dir creates the directory rel.
func (f *fixture) dir(rel string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Join(f.root, rel), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

// link makes rel a symlink to target (relative to rel's directory, as in
// sysfs); the target need not exist.
func (f *fixture) link(rel, target string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		f.t.Fatal(err)
	}
}

// cpuLists writes devices/system/cpu/{possible,present,online}.
func (f *fixture) cpuLists(possible, present, online string) {
	f.file("sys/devices/system/cpu/possible", possible+"\n")
	f.file("sys/devices/system/cpu/present", present+"\n")
	f.file("sys/devices/system/cpu/online", online+"\n")
}

// cpu writes cpuN/topology and, when node >= 0, the cpuN/nodeM link.
func (f *fixture) cpu(id, pkg, core int, siblings string, node int) {
	d := fmt.Sprintf("sys/devices/system/cpu/cpu%d", id)
	f.file(d+"/topology/core_id", fmt.Sprintf("%d\n", core))
	f.file(d+"/topology/physical_package_id", fmt.Sprintf("%d\n", pkg))
	f.file(d+"/topology/thread_siblings_list", siblings+"\n")
	if node >= 0 {
		f.link(fmt.Sprintf("%s/node%d", d, node), fmt.Sprintf("../../node/node%d", node))
	}
}

// node writes nodeN/{cpulist,meminfo}; memory in kB.
func (f *fixture) node(id int, cpulist string, totalKB, freeKB uint64) {
	d := fmt.Sprintf("sys/devices/system/node/node%d", id)
	f.file(d+"/cpulist", cpulist+"\n")
	f.file(d+"/meminfo", fmt.Sprintf(
		"Node %d MemTotal:       %d kB\nNode %d MemFree:        %d kB\nNode %d MemUsed:        %d kB\n",
		id, totalKB, id, freeKB, id, totalKB-freeKB))
}

// pool writes a hugepages-<kB>kB directory under dir (relative to root).
func (f *fixture) pool(dir string, kb, total, free uint64) {
	d := fmt.Sprintf("%s/hugepages-%dkB", dir, kb)
	f.file(d+"/nr_hugepages", fmt.Sprintf("%d\n", total))
	f.file(d+"/free_hugepages", fmt.Sprintf("%d\n", free))
	f.file(d+"/surplus_hugepages", "0\n")
}

// pci writes a PCI function the way sysfs does: a directory under
// devices/pci0000:00 and a link to it in bus/pci/devices.
func (f *fixture) pci(addr string, vendor, device uint16, class uint32, numa int, driver string, group int) {
	d := "sys/devices/pci0000:00/" + addr
	f.file(d+"/vendor", fmt.Sprintf("0x%04x\n", vendor))
	f.file(d+"/device", fmt.Sprintf("0x%04x\n", device))
	f.file(d+"/class", fmt.Sprintf("0x%06x\n", class))
	f.file(d+"/numa_node", fmt.Sprintf("%d\n", numa))
	if driver != "" {
		f.link(d+"/driver", "../../../bus/pci/drivers/"+driver)
	}
	if group >= 0 {
		f.link(d+"/iommu_group", fmt.Sprintf("../../../kernel/iommu_groups/%d", group))
	}
	f.link("sys/bus/pci/devices/"+addr, "../../../devices/pci0000:00/"+addr)
}

func discover(t *testing.T, f *fixture) *Inventory {
	t.Helper()
	inv, err := Discover(f.roots())
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	return inv
}

const (
	size2M = 2 << 20
	size1G = 1 << 30
)

func TestDiscoverNoNUMA(t *testing.T) {
	f := newFixture(t)
	f.cpuLists("0-1", "0-1", "0-1")
	f.cpu(0, 0, 0, "0", -1)
	f.cpu(1, 0, 1, "1", -1)
	f.file("proc/meminfo", "MemTotal:        4000000 kB\nMemFree:         3000000 kB\nMemAvailable:    3500000 kB\nHugePages_Total:       4\n")
	f.pool("sys/kernel/mm/hugepages", 2048, 4, 3)
	f.pool("sys/kernel/mm/hugepages", 1048576, 0, 0)

	inv := discover(t, f)
	want := &Inventory{
		CPUs: []CPU{
			{ID: 0, Online: true, Core: 0, Package: 0, Node: 0, Siblings: []int{0}},
			{ID: 1, Online: true, Core: 1, Package: 0, Node: 0, Siblings: []int{1}},
		},
		Nodes: []Node{{
			ID: 0, CPUs: []int{0, 1}, MemTotal: 4000000 << 10, MemFree: 3000000 << 10,
			HugePages: []HugePool{{PageSize: size2M, Total: 4, Free: 3}, {PageSize: size1G}},
		}},
		Devices: []PCIDevice{},
	}
	if !reflect.DeepEqual(inv, want) {
		t.Fatalf("got  %+v\nwant %+v", inv, want)
	}
	sum := inv.Summary()
	for _, s := range []string{"2 CPUs (2 online) in 1 package, 2 cores, 1 NUMA node.", "Node 0: CPUs 0-1", "2M 3/4 free, 1G 0/0 free.", "0 PCI devices"} {
		if !strings.Contains(sum, s) {
			t.Errorf("Summary %q lacks %q", sum, s)
		}
	}
}

// twoNodes builds 2 nodes x 2 cores x 2 SMT threads: node n is package n,
// with CPUs n*2+{0,1} and their siblings n*2+{4,5}.
func twoNodes(f *fixture) {
	f.cpuLists("0-7", "0-7", "0-7")
	for id := 0; id < 8; id++ {
		thread := id % 4
		pkg, core := thread/2, thread%2
		f.cpu(id, pkg, core, fmt.Sprintf("%d,%d", thread, thread+4), pkg)
	}
	for n := 0; n < 2; n++ {
		f.node(n, fmt.Sprintf("%d-%d,%d-%d", 2*n, 2*n+1, 2*n+4, 2*n+5), 8<<20, uint64(6-n)<<20)
		f.pool(fmt.Sprintf("sys/devices/system/node/node%d/hugepages", n), 1048576, uint64(n+1), uint64(n))
		f.pool(fmt.Sprintf("sys/devices/system/node/node%d/hugepages", n), 2048, 512, 500)
	}
	f.file("sys/devices/system/node/online", "0-1\n")
	f.file("sys/devices/system/node/possible", "0-1\n")
	f.file("proc/meminfo", "MemTotal:        16777216 kB\nMemFree:         11534336 kB\n")
}

func TestDiscoverTwoNodesSMT(t *testing.T) {
	f := newFixture(t)
	twoNodes(f)
	inv := discover(t, f)

	if len(inv.CPUs) != 8 {
		t.Fatalf("got %d CPUs, want 8", len(inv.CPUs))
	}
	for _, c := range inv.CPUs {
		thread := c.ID % 4
		want := CPU{ID: c.ID, Online: true, Core: thread % 2, Package: thread / 2, Node: thread / 2, Siblings: []int{thread, thread + 4}}
		if !reflect.DeepEqual(c, want) {
			t.Errorf("cpu %d: got %+v, want %+v", c.ID, c, want)
		}
	}
	wantNodes := []Node{
		{ID: 0, CPUs: []int{0, 1, 4, 5}, MemTotal: 8 << 30, MemFree: 6 << 30,
			HugePages: []HugePool{{PageSize: size2M, Total: 512, Free: 500}, {PageSize: size1G, Total: 1, Free: 0}}},
		{ID: 1, CPUs: []int{2, 3, 6, 7}, MemTotal: 8 << 30, MemFree: 5 << 30,
			HugePages: []HugePool{{PageSize: size2M, Total: 512, Free: 500}, {PageSize: size1G, Total: 2, Free: 1}}},
	}
	if !reflect.DeepEqual(inv.Nodes, wantNodes) {
		t.Fatalf("nodes:\ngot  %+v\nwant %+v", inv.Nodes, wantNodes)
	}

	if c, ok := inv.CPU(6); !ok || c.Node != 1 || c.Core != 0 {
		t.Errorf("CPU(6) = %+v, %v", c, ok)
	}
	if _, ok := inv.CPU(8); ok {
		t.Error("CPU(8) found")
	}
	if n, ok := inv.Node(1); !ok || n.ID != 1 {
		t.Errorf("Node(1) = %+v, %v", n, ok)
	}
	if _, ok := inv.Node(2); ok {
		t.Error("Node(2) found")
	}
	if p, ok := inv.Pool(1, size1G); !ok || p.Total != 2 || p.Free != 1 {
		t.Errorf("Pool(1, 1G) = %+v, %v", p, ok)
	}
	if _, ok := inv.Pool(0, 4096); ok {
		t.Error("Pool(0, 4K) found")
	}
	if _, ok := inv.Pool(5, size2M); ok {
		t.Error("Pool(5, 2M) found")
	}
	sum := inv.Summary()
	for _, s := range []string{"8 CPUs (8 online) in 2 packages, 4 cores, 2 NUMA nodes.",
		"Node 0: CPUs 0-1,4-5, 8.0 GiB memory (6.0 GiB free), hugepages 2M 500/512 free, 1G 0/1 free.",
		"Node 1: CPUs 2-3,6-7"} {
		if !strings.Contains(sum, s) {
			t.Errorf("Summary %q lacks %q", sum, s)
		}
	}
}

func TestDiscoverOfflineCPUs(t *testing.T) {
	f := newFixture(t)
	// 8 possible, 6 present; 2 and 5 offline. CPU 2 keeps its node link,
	// CPU 5 has none and is in no node's cpulist.
	f.cpuLists("0-7", "0-5", "0-1,3-4")
	f.cpu(0, 0, 0, "0,3", 0)
	f.cpu(1, 0, 1, "1,4", 0)
	f.cpu(3, 0, 0, "0,3", 0)
	// CPU 4 has no node link: its node comes from node 0's cpulist.
	f.cpu(4, 0, 1, "1,4", -1)
	f.dir("sys/devices/system/cpu/cpu2")
	f.link("sys/devices/system/cpu/cpu2/node0", "../../node/node0")
	f.dir("sys/devices/system/cpu/cpu5")
	f.node(0, "0-1,3-4", 1<<20, 1<<19)

	inv := discover(t, f)
	want := []CPU{
		{ID: 0, Online: true, Core: 0, Package: 0, Node: 0, Siblings: []int{0, 3}},
		{ID: 1, Online: true, Core: 1, Package: 0, Node: 0, Siblings: []int{1, 4}},
		{ID: 2, Online: false, Core: -1, Package: -1, Node: 0, Siblings: []int{2}},
		{ID: 3, Online: true, Core: 0, Package: 0, Node: 0, Siblings: []int{0, 3}},
		{ID: 4, Online: true, Core: 1, Package: 0, Node: 0, Siblings: []int{1, 4}},
		{ID: 5, Online: false, Core: -1, Package: -1, Node: -1, Siblings: []int{5}},
	}
	if !reflect.DeepEqual(inv.CPUs, want) {
		t.Fatalf("CPUs:\ngot  %+v\nwant %+v", inv.CPUs, want)
	}
	if got := inv.Nodes[0].CPUs; !reflect.DeepEqual(got, []int{0, 1, 2, 3, 4}) {
		t.Errorf("node 0 CPUs = %v", got)
	}
	if len(inv.Nodes[0].HugePages) != 0 || inv.Nodes[0].HugePages == nil {
		t.Errorf("node 0 pools = %#v, want empty", inv.Nodes[0].HugePages)
	}
	if sum := inv.Summary(); !strings.Contains(sum, "6 CPUs (4 online) in 1 package, 2 cores, 1 NUMA node.") ||
		!strings.Contains(sum, "no hugepages") {
		t.Errorf("Summary = %q", sum)
	}
}

func TestDiscoverPCI(t *testing.T) {
	f := newFixture(t)
	f.cpuLists("0", "0", "0")
	f.cpu(0, 0, 0, "0", 0)
	f.node(0, "0", 1<<20, 1<<19)
	// Two functions of one card share group 7; one device has no group;
	// one is bound to a driver. Created out of order on purpose.
	f.pci("0000:3b:00.1", 0x15b3, 0x1018, 0x020000, 0, "", 7)
	f.pci("0000:3b:00.0", 0x15b3, 0x1017, 0x020000, 0, "", 7)
	f.pci("0000:00:1f.2", 0x8086, 0xa282, 0x010601, -1, "", -1)
	f.pci("0000:5e:00.0", 0x144d, 0xa808, 0x010802, 1, "nvme", 12)

	inv := discover(t, f)
	want := []PCIDevice{
		{Address: "0000:00:1f.2", Vendor: 0x8086, Device: 0xa282, Class: 0x010601, IOMMUGroup: -1, Node: -1},
		{Address: "0000:3b:00.0", Vendor: 0x15b3, Device: 0x1017, Class: 0x020000, IOMMUGroup: 7, Node: 0},
		{Address: "0000:3b:00.1", Vendor: 0x15b3, Device: 0x1018, Class: 0x020000, IOMMUGroup: 7, Node: 0},
		{Address: "0000:5e:00.0", Vendor: 0x144d, Device: 0xa808, Class: 0x010802, Driver: "nvme", IOMMUGroup: 12, Node: 1},
	}
	if !reflect.DeepEqual(inv.Devices, want) {
		t.Fatalf("devices:\ngot  %+v\nwant %+v", inv.Devices, want)
	}
	if got := inv.IOMMUGroupMembers(7); !reflect.DeepEqual(got, []string{"0000:3b:00.0", "0000:3b:00.1"}) {
		t.Errorf("IOMMUGroupMembers(7) = %v", got)
	}
	if got := inv.IOMMUGroupMembers(12); !reflect.DeepEqual(got, []string{"0000:5e:00.0"}) {
		t.Errorf("IOMMUGroupMembers(12) = %v", got)
	}
	if got := inv.IOMMUGroupMembers(-1); got != nil {
		t.Errorf("IOMMUGroupMembers(-1) = %v, want nil", got)
	}
	if got := inv.IOMMUGroupMembers(3); got != nil {
		t.Errorf("IOMMUGroupMembers(3) = %v, want nil", got)
	}
	if d, ok := inv.Device("0000:5e:00.0"); !ok || d.Driver != "nvme" {
		t.Errorf("Device(0000:5e:00.0) = %+v, %v", d, ok)
	}
	if _, ok := inv.Device("0000:99:00.0"); ok {
		t.Error("Device(0000:99:00.0) found")
	}
	if sum := inv.Summary(); !strings.Contains(sum, "4 PCI devices, 1 bound to drivers, 3 in IOMMU groups.") {
		t.Errorf("Summary = %q", sum)
	}
}

func TestDiscoverErrorsNameFile(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(f *fixture)
		file   string
	}{
		{"bad online list", func(f *fixture) { f.file("sys/devices/system/cpu/online", "0-x\n") }, "cpu/online"},
		{"missing online", func(f *fixture) {
			if err := os.Remove(filepath.Join(f.root, "sys/devices/system/cpu/online")); err != nil {
				f.t.Fatal(err)
			}
		}, "cpu/online"},
		{"bad core_id", func(f *fixture) { f.file("sys/devices/system/cpu/cpu3/topology/core_id", "zero\n") }, "cpu3/topology/core_id"},
		{"bad meminfo", func(f *fixture) { f.file("sys/devices/system/node/node1/meminfo", "Node 1 MemUsed: 5 kB\n") }, "node1/meminfo"},
		{"bad pool", func(f *fixture) {
			f.file("sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages", "-1\n")
		}, "hugepages-2048kB/free_hugepages"},
		{"bad pool size", func(f *fixture) { f.pool("sys/devices/system/node/node0/hugepages", 0, 1, 1) }, "hugepages-0kB"},
		{"bad vendor", func(f *fixture) {
			f.pci("0000:00:02.0", 0, 1, 2, 0, "", -1)
			f.file("sys/devices/pci0000:00/0000:00:02.0/vendor", "0x123456\n")
		}, "0000:00:02.0/vendor"},
		{"bad iommu group", func(f *fixture) {
			f.pci("0000:00:02.0", 0, 1, 2, 0, "", -1)
			f.link("sys/devices/pci0000:00/0000:00:02.0/iommu_group", "../../../kernel/iommu_groups/x")
		}, "0000:00:02.0/iommu_group"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			twoNodes(f)
			tc.mutate(f)
			_, err := Discover(f.roots())
			if err == nil {
				t.Fatal("Discover succeeded")
			}
			if !strings.Contains(err.Error(), tc.file) {
				t.Errorf("error %q does not name %q", err, tc.file)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("error %q is neither ErrMalformed nor ErrNotExist", err)
			}
		})
	}
}

func TestDiscoverNoPresentFile(t *testing.T) {
	f := newFixture(t)
	f.file("sys/devices/system/cpu/possible", "0-1\n")
	f.file("sys/devices/system/cpu/online", "0\n")
	f.cpu(0, 0, 0, "0", -1)
	f.file("proc/meminfo", "MemTotal: 1024 kB\nMemFree: 512 kB\n")
	inv := discover(t, f)
	if len(inv.CPUs) != 2 || !inv.CPUs[0].Online || inv.CPUs[1].Online || inv.CPUs[1].Node != 0 {
		t.Errorf("CPUs = %+v", inv.CPUs)
	}
	if n := inv.Nodes[0]; n.MemTotal != 1<<20 || n.MemFree != 1<<19 || len(n.HugePages) != 0 {
		t.Errorf("node 0 = %+v", n)
	}
}

// TestDiscoverThisMachine runs Discover on the real /sys and /proc.
func TestDiscoverThisMachine(t *testing.T) {
	inv, err := Discover(Roots{})
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	online := 0
	for _, c := range inv.CPUs {
		if c.Online {
			online++
		}
	}
	if online < 1 {
		t.Errorf("no online CPU in %+v", inv.CPUs)
	}
	if _, ok := inv.Node(0); !ok {
		t.Errorf("no node 0 in %+v", inv.Nodes)
	}
	t.Log(inv.Summary())
}
