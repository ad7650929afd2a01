package layout

import (
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/partitioner"
)

func TestDefault(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inv    *partitioner.Inventory
		cores  [][]int // per subOS
		memory uint64
	}{
		{"1 cpu", fixture(1, 1, 1, 1<<30), nil, 0},
		{"2 cpus", fixture(2, 1, 1, 2<<30), [][]int{{1}}, 256 << 20},
		{"2 threads of one core", fixture(2, 2, 1, 4<<30), [][]int{{1}}, 512 << 20},
		{"3 cpus", fixture(3, 1, 1, 24<<30), [][]int{{1}, {2}}, 512 << 20},
		{"4 cpus", fixture(4, 1, 1, 8<<30), [][]int{{1, 2}, {3}}, 512 << 20},
		// Cores 0 and 1, threads {0,2} and {1,3}: the supervisor's core's
		// other thread is one subOS, the whole free core the other.
		{"4 cpus smt", fixture(4, 2, 1, 8<<30), [][]int{{2}, {1, 3}}, 512 << 20},
		// 8 cores with threads c and c+8, cores 0-3 on node 0, 4-7 on
		// node 1: cut at the node boundary, siblings kept together.
		{"16 cpus smt 2 nodes", fixture(16, 2, 2, 16<<30), [][]int{{1, 2, 3, 8, 9, 10, 11}, {4, 5, 6, 7, 12, 13, 14, 15}}, 512 << 20},
		{"16 cpus", fixture(16, 1, 1, 64<<30), [][]int{{1, 2, 3, 4, 5, 6, 7, 8}, {9, 10, 11, 12, 13, 14, 15}}, 512 << 20},
		// Nodes 0 (0-3), 1 (4-7), 2 (8-11): cut at the boundary nearest
		// the middle.
		{"12 cpus 3 nodes", fixture(12, 1, 3, 4<<30), [][]int{{1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11}}, 512 << 20},
		{"odd memory", fixture(4, 1, 1, 1000<<20), [][]int{{1, 2}, {3}}, 124 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, "vmlinux", "initramfs.cpio.gz", "disk.img")
			l := Default(tc.inv, dir)
			if !slices.Equal(l.Supervisor.Cores, []int{0}) {
				t.Errorf("supervisor cores = %v", l.Supervisor.Cores)
			}
			if len(l.SubOSes) != len(tc.cores) {
				t.Fatalf("%d subOSes, want %d: %+v", len(l.SubOSes), len(tc.cores), l.SubOSes)
			}
			for i, s := range l.SubOSes {
				wantName := []string{DefaultSubOSA, DefaultSubOSB}[i]
				if s.Name != wantName || !slices.Equal(s.Cores, tc.cores[i]) || s.Memory != tc.memory ||
					s.PageSize != PageSize2M || s.Node != -1 {
					t.Errorf("subOS %d = %+v, want %s on %v with %s", i, s, wantName, tc.cores[i], units.FormatSize(tc.memory))
				}
				if s.Kernel != filepath.Join(dir, "vmlinux") || s.Initrd != filepath.Join(dir, "initramfs.cpio.gz") ||
					!slices.Equal(s.Disks, []Disk{{Path: filepath.Join(dir, "disk.img"), ReadOnly: true}}) {
					t.Errorf("subOS %d images: %+v", i, s)
				}
				want := []NIC{{User: true}}
				if len(tc.cores) == 2 {
					want = append(want, NIC{Loop: DefaultLoopNetwork, LoopMembers: []string{DefaultSubOSA, DefaultSubOSB}})
				}
				if !reflect.DeepEqual(s.Nets, want) {
					t.Errorf("subOS %d NICs %+v, want %+v", i, s.Nets, want)
				}
			}
			led, err := ledger.New(tc.inv, l.Supervisor.Cores)
			if err != nil {
				t.Fatal(err)
			}
			if ps := l.Check(tc.inv, led); len(ps) != 0 {
				t.Errorf("default layout has problems:\n%s", strings.Join(problemStrings(ps), "\n"))
			}
			if got := len(led.Allocations()); got != len(tc.cores) {
				t.Errorf("%d allocations reserved, want %d", got, len(tc.cores))
			}
		})
	}
}

func TestDefaultSkipsOfflineAndHousekeeping(t *testing.T) {
	inv := fixture(4, 1, 1, 8<<30)
	inv.CPUs[0].Online = false
	inv.CPUs[2].Online = false
	l := Default(inv, "img")
	if !slices.Equal(l.Supervisor.Cores, []int{1}) || len(l.SubOSes) != 1 || !slices.Equal(l.SubOSes[0].Cores, []int{3}) {
		t.Errorf("got supervisor %v, subOSes %+v", l.Supervisor.Cores, l.SubOSes)
	}
	if l := Default(nil, "img"); len(l.SubOSes) != 0 || l.Defaults.Kernel != filepath.Join("img", "vmlinux") {
		t.Errorf("nil inventory: %+v", l)
	}
}
