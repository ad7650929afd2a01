package actuator

import (
	"errors"
	"path/filepath"
	"strconv"
	"testing"
)

// fakeHugeKernel emulates a pool that can grow to at most limit pages: after
// nr_hugepages is written, the kernel keeps what it could allocate and the
// new pages are free.
// used pages stay in use.
func fakeHugeKernel(t *testing.T, a *Actuator, limit, used uint64) {
	a.hugeSettle = func(dir string) {
		nr, _ := readUint(filepath.Join(dir, "nr_hugepages"))
		if nr > limit {
			nr = limit
		}
		writeFiles(t, dir, map[string]string{
			"nr_hugepages":   strconv.FormatUint(nr, 10),
			"free_hugepages": strconv.FormatUint(nr-used, 10),
		})
	}
}

func fakeSysNode(t *testing.T, nr, free uint64) (string, string) {
	root := t.TempDir()
	dir := "sys/devices/system/node/node0/hugepages/hugepages-2048kB"
	writeFiles(t, root, map[string]string{
		dir + "/nr_hugepages":   strconv.FormatUint(nr, 10),
		dir + "/free_hugepages": strconv.FormatUint(free, 10),
		"sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages": "0",
	})
	writeFiles(t, root, map[string]string{"cpuset/cpuset.cpus": "0", "cpuset/cpuset.mems": "0"})
	return root, filepath.Join(root, dir)
}

func TestEnsureHugePages(t *testing.T) {
	root, dir := fakeSysNode(t, 10, 2) // 8 in use
	a := newFake(t, root)
	fakeHugeKernel(t, a, 100, 8)

	added, err := a.EnsureHugePages(0, 2<<20, 5)
	if err != nil || added != 3 {
		t.Fatalf("EnsureHugePages = %d, %v; want 3", added, err)
	}
	if got := readFile(t, dir+"/nr_hugepages"); got != "13" {
		t.Errorf("nr_hugepages = %s, want 13", got)
	}
	if added, err := a.EnsureHugePages(0, 2<<20, 5); err != nil || added != 0 {
		t.Errorf("already free: %d, %v", added, err)
	}
	if err := a.ReleaseHugePages(0, 2<<20, 3); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, dir+"/nr_hugepages"); got != "10" {
		t.Errorf("after release nr_hugepages = %s, want 10", got)
	}

	// The kernel can only reach 12 pages: the raise is undone.
	fakeHugeKernel(t, a, 12, 8)
	writeFiles(t, dir, map[string]string{"free_hugepages": "2"})
	if _, err := a.EnsureHugePages(0, 2<<20, 6); !errors.Is(err, ErrNoHugePages) {
		t.Fatalf("short pool: %v, want ErrNoHugePages", err)
	}
	if got := readFile(t, dir+"/nr_hugepages"); got != "10" {
		t.Errorf("nr_hugepages not restored: %s", got)
	}

	if err := a.ReleaseHugePages(0, 2<<20, 5); !errors.Is(err, ErrHugePagesUsed) {
		t.Errorf("release of used pages: %v, want ErrHugePagesUsed", err)
	}
	if _, err := a.EnsureHugePages(1, 2<<20, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("missing node: %v, want ErrInvalid", err)
	}
	if _, err := a.EnsureHugePages(0, 3<<20, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad size: %v, want ErrInvalid", err)
	}
	if _, err := a.EnsureHugePages(0, 16<<10, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("unsupported size: %v, want ErrInvalid", err)
	}
}

func TestEnsureHugePagesGlobalPool(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sys/kernel/mm/hugepages/hugepages-1048576kB")
	writeFiles(t, root, map[string]string{
		"sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages":   "0",
		"sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages": "0",
		"cpuset/cpuset.cpus": "0", "cpuset/cpuset.mems": "0",
	})
	a := newFake(t, root)
	fakeHugeKernel(t, a, 4, 0)
	if added, err := a.EnsureHugePages(0, 1<<30, 2); err != nil || added != 2 {
		t.Fatalf("EnsureHugePages = %d, %v", added, err)
	}
	if got := readFile(t, dir+"/nr_hugepages"); got != "2" {
		t.Errorf("nr_hugepages = %s", got)
	}
	if err := a.ReleaseHugePages(0, 1<<30, 2); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, dir+"/nr_hugepages"); got != "0" {
		t.Errorf("nr_hugepages = %s", got)
	}
}
