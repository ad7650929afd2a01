package hostcpu

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseList(t *testing.T) {
	for in, want := range map[string][]int{
		"0": {0}, "0-3": {0, 1, 2, 3}, "0-1,4,6-7\n": {0, 1, 4, 6, 7}, "": nil,
	} {
		got, err := ParseList(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseList(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"a", "3-1", "1,1", "-1", "0-99999999"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q): no error", bad)
		}
	}
	if s := FormatList([]int{7, 0, 1, 2, 4}); s != "0-2,4,7" {
		t.Errorf("FormatList = %q", s)
	}
}

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

func itoa(i int) string { return FormatList([]int{i}) }

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
