package hostcpu

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"rainforest/internal/units"
)

func fixture(t *testing.T, online string, nodes map[int]int) Topology {
	root := t.TempDir()
	d := filepath.Join(root, "devices/system/cpu")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d, "online"), []byte(online+"\n"), 0o644)
	for c, n := range nodes {
		os.MkdirAll(filepath.Join(d, "cpu"+itoa(c), "node"+itoa(n)), 0o755)
	}
	return Topology{Root: root}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestCheck(t *testing.T) {
	topo := fixture(t, "0-3", map[int]int{0: 0, 1: 0, 2: 1, 3: 1})
	if n, err := topo.Check([]int{2, 3}); err != nil || n != 1 {
		t.Errorf("Check(2,3) = %d, %v", n, err)
	}
	if n, err := topo.Check([]int{1, 2}); err != nil || n != -1 {
		t.Errorf("Check(1,2) = %d, %v; want -1", n, err)
	}
	for _, bad := range [][]int{{4}, {1, 1}, {}} {
		if _, err := topo.Check(bad); !errors.Is(err, ErrBadCPU) {
			t.Errorf("Check(%v) = %v; want ErrBadCPU", bad, err)
		}
	}
}

func TestOnline(t *testing.T) {
	if got, err := fixture(t, "0-1,4", nil).Online(); err != nil || !slices.Equal(got, []int{0, 1, 4}) {
		t.Errorf("Online() = %v, %v; want [0 1 4]", got, err)
	}
	if _, err := fixture(t, "0-3,2", nil).Online(); !errors.Is(err, units.ErrCPUList) {
		t.Errorf("Online() of a malformed list = %v; want units.ErrCPUList", err)
	}
}
