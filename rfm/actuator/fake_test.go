package actuator

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"rainforest/internal/units"
)

// writeFiles creates files (path relative to root -> content), making dirs.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// fakeKernel makes a's mkdir populate new cgroup directories the way the
// kernel would, and rmdir remove them with their files.
func fakeKernel(a *Actuator) {
	a.mkdir = func(p string) error {
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
		files := map[string]string{"cgroup.procs": ""}
		for _, h := range a.hier {
			if !strings.HasPrefix(p, h.root+string(filepath.Separator)) {
				continue
			}
			if h.v2 {
				files["cgroup.subtree_control"] = ""
				files["cgroup.controllers"] = strings.Join(h.controllers, " ")
			}
			if h.has(cpusetController) {
				files["cpuset.cpus"] = ""
				files["cpuset.mems"] = ""
				if h.v2 {
					files["cpuset.cpus.partition"] = "member"
					files["cpuset.cpus.exclusive"] = ""
				} else {
					files["cpuset.cpu_exclusive"] = "0"
				}
			}
		}
		for f, c := range files {
			if err := os.WriteFile(filepath.Join(p, f), []byte(c), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	a.rmdir = os.RemoveAll
}

func fakeV1(t *testing.T) string {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"cpuset/cgroup.procs":            "1\n",
		"cpuset/cpuset.cpus":             "0-3\n",
		"cpuset/cpuset.mems":             "0\n",
		"cpuset/cpuset.cpu_exclusive":    "1\n",
		"memory/cgroup.procs":            "1\n",
		"memory/memory.limit_in_bytes":   "9223372036854771712\n",
		"unified/cgroup.controllers":     "hugetlb\n",
		"unified/cgroup.subtree_control": "",
	})
	return root
}

func fakeV2(t *testing.T) string {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory pids\n",
		"cgroup.subtree_control": "cpu memory\n",
		"cgroup.procs":           "1\n",
		"cpuset.cpus.effective":  "0-3\n",
	})
	return root
}

func newFake(t *testing.T, root string) *Actuator {
	t.Helper()
	a, err := New(Config{CgroupRoot: root, SysRoot: filepath.Join(root, "sys"), ProcRoot: filepath.Join(root, "proc")})
	if err != nil {
		t.Fatal(err)
	}
	fakeKernel(a)
	return a
}

func TestDetect(t *testing.T) {
	v1 := fakeV1(t)
	a := newFake(t, v1)
	if a.Version() != "v1" || len(a.hier) != 2 || a.hier[1].root != filepath.Join(v1, "memory") || a.hier[1].v2 {
		t.Errorf("v1: got %s %v", a.Version(), a.Hierarchies())
	}

	hybrid := t.TempDir() // v1 cpuset, memory only on the unified hierarchy
	writeFiles(t, hybrid, map[string]string{
		"cpuset/cpuset.cpus": "0-1", "cpuset/cpuset.mems": "0", "cpuset/cgroup.procs": "",
		"unified/cgroup.controllers": "memory hugetlb", "unified/cgroup.subtree_control": "",
	})
	a = newFake(t, hybrid)
	if a.Version() != "v1" || len(a.hier) != 2 || !a.hier[1].v2 || !a.hier[1].has(memoryController) {
		t.Errorf("hybrid: got %s %v", a.Version(), a.Hierarchies())
	}

	unifiedCpuset := t.TempDir() // cpuset on the unified hierarchy, memory on v1
	writeFiles(t, unifiedCpuset, map[string]string{
		"memory/cgroup.procs":        "",
		"unified/cgroup.controllers": "cpuset", "unified/cgroup.subtree_control": "",
	})
	a = newFake(t, unifiedCpuset)
	if a.Version() != "v2" || len(a.hier) != 2 || !a.hier[0].v2 || a.hier[1].v2 {
		t.Errorf("unified cpuset: got %s %v", a.Version(), a.Hierarchies())
	}

	a = newFake(t, fakeV2(t))
	if a.Version() != "v2" || len(a.hier) != 1 || !a.hier[0].has(memoryController) {
		t.Errorf("v2: got %s %v", a.Version(), a.Hierarchies())
	}

	if _, err := New(Config{CgroupRoot: t.TempDir()}); !errors.Is(err, ErrNoCgroup) {
		t.Errorf("empty root: err %v, want ErrNoCgroup", err)
	}
	noCpuset := t.TempDir()
	writeFiles(t, noCpuset, map[string]string{"cgroup.controllers": "cpu memory"})
	if _, err := New(Config{CgroupRoot: noCpuset}); !errors.Is(err, ErrNoCgroup) {
		t.Errorf("v2 without cpuset: err %v, want ErrNoCgroup", err)
	}
	if _, err := New(Config{CgroupRoot: v1, Parent: "../x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad parent: err %v, want ErrInvalid", err)
	}
}

func TestGroupV1(t *testing.T) {
	root := fakeV1(t)
	a := newFake(t, root)
	g, err := a.CreateGroup("vm1", []int{2, 1}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	cs := filepath.Join(root, "cpuset", "rainforest")
	for file, want := range map[string]string{
		cs + "/cpuset.cpus":              "0-3", // copied from the root
		cs + "/cpuset.mems":              "0",
		cs + "/cpuset.cpu_exclusive":     "1",
		cs + "/vm1/cpuset.cpus":          "1-2",
		cs + "/vm1/cpuset.mems":          "0",
		cs + "/vm1/cpuset.cpu_exclusive": "1",
	} {
		if got := readFile(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if g.Path() != cs+"/vm1" || !g.Exclusive() || g.ExclusiveNote() != "" {
		t.Errorf("group: path %s exclusive %v note %q", g.Path(), g.Exclusive(), g.ExclusiveNote())
	}
	if !exists(filepath.Join(root, "memory", "rainforest", "vm1")) {
		t.Error("no memory group")
	}
	if cores, err := g.Cores(); err != nil || !equalLists(cores, []int{1, 2}) {
		t.Errorf("Cores = %v, %v", cores, err)
	}

	if _, err := a.CreateGroup("vm1", []int{3}, []int{0}); !errors.Is(err, ErrExists) {
		t.Errorf("second create: %v, want ErrExists", err)
	}
	if _, err := a.CreateGroup("vm8", []int{2, 3}, []int{0}); !errors.Is(err, ErrOverlap) {
		t.Errorf("overlapping cores: %v, want ErrOverlap", err)
	}
	if exists(filepath.Join(cs, "vm8")) {
		t.Error("refused group vm8 was made")
	}
	if _, err := a.CreateGroup("Bad/Name", []int{3}, []int{0}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad name: %v, want ErrInvalid", err)
	}
	if _, err := a.CreateGroup("vm9", nil, []int{0}); !errors.Is(err, ErrInvalid) {
		t.Errorf("no cores: %v, want ErrInvalid", err)
	}

	if err := g.AddProcess(1234); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"cpuset", "memory"} {
		if got := readFile(t, filepath.Join(root, h, "rainforest/vm1/cgroup.procs")); got != "1234" {
			t.Errorf("%s cgroup.procs = %q", h, got)
		}
	}
	if pids, err := g.Processes(); err != nil || len(pids) != 1 || pids[0] != 1234 {
		t.Errorf("Processes = %v, %v", pids, err)
	}

	o, err := a.OpenGroup("vm1")
	if err != nil || o.Path() != g.Path() || !o.Exclusive() {
		t.Fatalf("OpenGroup = %v, %v", o, err)
	}
	if err := a.RemoveGroup("vm1"); !errors.Is(err, ErrBusy) {
		t.Fatalf("remove with process: %v, want ErrBusy", err)
	}
	if !exists(g.Path()) {
		t.Fatal("busy remove removed the group")
	}
	writeFiles(t, root, map[string]string{"cpuset/rainforest/vm1/cgroup.procs": "", "memory/rainforest/vm1/cgroup.procs": ""})
	if err := a.RemoveGroup("vm1"); err != nil {
		t.Fatal(err)
	}
	for _, d := range g.Paths() {
		if exists(d) {
			t.Errorf("%s left", d)
		}
	}
	if !exists(cs) {
		t.Error("parent removed")
	}
	if _, err := a.OpenGroup("vm1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("open removed: %v", err)
	}
	if err := a.RemoveGroup("vm1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove removed: %v", err)
	}
}

func TestGroupV1WidensParent(t *testing.T) {
	root := fakeV1(t)
	a := newFake(t, root)
	writeFiles(t, root, map[string]string{
		"cpuset/rainforest/cgroup.procs":         "",
		"cpuset/rainforest/cpuset.cpus":          "0",
		"cpuset/rainforest/cpuset.mems":          "0",
		"cpuset/rainforest/cpuset.cpu_exclusive": "0",
	})
	if _, err := a.CreateGroup("vm2", []int{2}, []int{0}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "cpuset/rainforest/cpuset.cpus")); got != "0,2" {
		t.Errorf("parent cpus = %q, want 0,2", got)
	}
}

func TestGroupV1ExclusiveRefused(t *testing.T) {
	root := fakeV1(t)
	a := newFake(t, root)
	mkdir := a.mkdir
	a.mkdir = func(p string) error { // a kernel without cpu_exclusive in the group
		if err := mkdir(p); err != nil {
			return err
		}
		os.Remove(filepath.Join(p, "cpuset.cpu_exclusive"))
		return nil
	}
	g, err := a.CreateGroup("vm3", []int{3}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if g.Exclusive() || g.ExclusiveNote() == "" {
		t.Errorf("exclusive %v note %q", g.Exclusive(), g.ExclusiveNote())
	}
}

// TestGroupV1Rollback fails the last step (the memory group) and checks that
// everything made before it is gone again.
func TestGroupV1Rollback(t *testing.T) {
	root := fakeV1(t)
	a := newFake(t, root)
	mkdir := a.mkdir
	a.mkdir = func(p string) error {
		if strings.HasPrefix(p, filepath.Join(root, "memory")+"/") && filepath.Base(p) == "vm1" {
			return errors.New("injected failure")
		}
		return mkdir(p)
	}
	if _, err := a.CreateGroup("vm1", []int{1}, []int{0}); err == nil {
		t.Fatal("no error")
	}
	for _, d := range []string{"cpuset/rainforest", "memory/rainforest"} {
		if exists(filepath.Join(root, d)) {
			t.Errorf("%s left behind", d)
		}
	}
	if got := readFile(t, filepath.Join(root, "cpuset/cpuset.cpus")); got != "0-3" {
		t.Errorf("root cpus changed to %q", got)
	}
}

func TestAddProcessRollback(t *testing.T) {
	root := fakeV1(t)
	a := newFake(t, root)
	g, err := a.CreateGroup("vm1", []int{1}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{
		"proc/77/cgroup":      "4:memory:/\n3:cpuset:/\n0::/\n",
		"cpuset/cgroup.procs": "",
	})
	// The memory group refuses the process.
	if err := os.Remove(filepath.Join(root, "memory/rainforest/vm1/cgroup.procs")); err != nil {
		t.Fatal(err)
	}
	if err := g.AddProcess(77); err == nil {
		t.Fatal("no error")
	}
	if got := readFile(t, filepath.Join(root, "cpuset/cgroup.procs")); got != "77" {
		t.Errorf("process not moved back to the root cpuset: %q", got)
	}
}

func TestGroupV2(t *testing.T) {
	root := fakeV2(t)
	a := newFake(t, root)
	g, err := a.CreateGroup("vm1", []int{1, 2}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "rainforest")
	for file, want := range map[string]string{
		root + "/cgroup.subtree_control": "+pids", // memory was already on; the fake keeps the last write
		p + "/cgroup.subtree_control":    "+pids",
		p + "/cpuset.cpus":               "", // inherits everything
		p + "/cpuset.cpus.exclusive":     "1-2",
		p + "/vm1/cpuset.cpus":           "1-2",
		p + "/vm1/cpuset.mems":           "0",
		p + "/vm1/cpuset.cpus.exclusive": "1-2",
		p + "/vm1/cpuset.cpus.partition": "root",
	} {
		if got := readFile(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if !g.Exclusive() || g.Path() != p+"/vm1" {
		t.Errorf("exclusive %v note %q path %s", g.Exclusive(), g.ExclusiveNote(), g.Path())
	}
	if err := g.AddProcess(99); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p+"/vm1/cgroup.procs"); got != "99" {
		t.Errorf("cgroup.procs = %q", got)
	}
	writeFiles(t, root, map[string]string{"rainforest/vm1/cgroup.procs": ""})
	if err := a.RemoveGroup("vm1"); err != nil {
		t.Fatal(err)
	}
	if exists(p + "/vm1") {
		t.Error("group left")
	}
	if got := readFile(t, p+"/cpuset.cpus.exclusive"); got != "" {
		t.Errorf("parent exclusive cpus not given back: %q", got)
	}
}

func TestGroupV2WithoutPartitions(t *testing.T) {
	root := fakeV2(t)
	a := newFake(t, root)
	mkdir := a.mkdir
	a.mkdir = func(p string) error { // an old kernel: no partitions
		if err := mkdir(p); err != nil {
			return err
		}
		os.Remove(filepath.Join(p, "cpuset.cpus.exclusive"))
		return os.Remove(filepath.Join(p, "cpuset.cpus.partition"))
	}
	writeFiles(t, root, map[string]string{"cgroup.subtree_control": "cpuset memory pids"})
	g, err := a.CreateGroup("vm1", []int{3}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if g.Exclusive() || !strings.Contains(g.ExclusiveNote(), "not supported") {
		t.Errorf("exclusive %v note %q", g.Exclusive(), g.ExclusiveNote())
	}
	if got := readFile(t, filepath.Join(root, "cgroup.subtree_control")); got != "cpuset memory pids" {
		t.Errorf("root subtree_control rewritten: %q", got)
	}
}

func TestLists(t *testing.T) {
	for _, c := range []struct {
		in, out string
	}{{"", ""}, {"0", "0"}, {"0-3,5,7-8", "0-3,5,7-8"}, {"3,1,2\n", "1-3"}} {
		l, err := parseList(c.in)
		if err != nil || units.FormatCPUList(l) != c.out {
			t.Errorf("parseList(%q) = %v, %v; formatted %q, want %q", c.in, l, err, units.FormatCPUList(l), c.out)
		}
	}
	for _, bad := range []string{"a", "3-1", "-1", "0-99999999", "0-1,1-2"} {
		if _, err := parseList(bad); !errors.Is(err, ErrInvalid) || !errors.Is(err, units.ErrCPUList) {
			t.Errorf("parseList(%q): %v, want ErrInvalid and units.ErrCPUList", bad, err)
		}
	}
	m, err := parseMask("00000001,00000003")
	if err != nil || units.FormatCPUList(m) != "0-1,32" {
		t.Errorf("parseMask = %v, %v", m, err)
	}
	if got := formatMask([]int{0, 1, 32}); got != "1,00000003" {
		t.Errorf("formatMask = %q", got)
	}
}

// Limit writes memory.max and pids.max on v2, memory.limit_in_bytes and
// (where a pids hierarchy is mounted) pids.max on v1.
func TestGroupLimit(t *testing.T) {
	root := fakeV2(t)
	a := newFake(t, root)
	g, err := a.CreateGroup("vm1", []int{1}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{"rainforest/vm1/memory.max": "max", "rainforest/vm1/pids.max": "max"})
	if err := g.Limit(256<<20, 300); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "rainforest/vm1/memory.max")); got != "268435456" {
		t.Errorf("memory.max = %q", got)
	}
	if got := readFile(t, filepath.Join(root, "rainforest/vm1/pids.max")); got != "300" {
		t.Errorf("pids.max = %q", got)
	}

	root = fakeV1(t)
	a = newFake(t, root)
	if g, err = a.CreateGroup("vm1", []int{1}, []int{0}); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{"memory/rainforest/vm1/memory.limit_in_bytes": "9223372036854771712"})
	if err := g.Limit(128<<20, 300); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "memory/rainforest/vm1/memory.limit_in_bytes")); got != "134217728" {
		t.Errorf("memory.limit_in_bytes = %q", got)
	}

	// v1 with a pids hierarchy, whose root has no pids.max.
	root = fakeV1(t)
	writeFiles(t, root, map[string]string{"pids/cgroup.procs": "1\n"})
	a = newFake(t, root)
	if g, err = a.CreateGroup("vm1", []int{1}, []int{0}); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{"memory/rainforest/vm1/memory.limit_in_bytes": "9223372036854771712", "pids/rainforest/vm1/pids.max": "max"})
	if err := g.Limit(128<<20, 300); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "pids/rainforest/vm1/pids.max")); got != "300" {
		t.Errorf("v1 pids.max = %q", got)
	}
}

// A group whose killed process is still exiting is empty in cgroup.procs
// but busy for a moment: RemoveGroup waits for it instead of leaving it.
func TestRemoveGroupWaitsForExit(t *testing.T) {
	root := fakeV1(t)
	a := newFake(t, root)
	if _, err := a.CreateGroup("vm1", []int{1}, []int{0}); err != nil {
		t.Fatal(err)
	}
	busy := 3
	remove := a.rmdir
	a.rmdir = func(p string) error {
		if busy > 0 {
			busy--
			return &os.PathError{Op: "remove", Path: p, Err: syscall.EBUSY}
		}
		return remove(p)
	}
	if err := a.RemoveGroup("vm1"); err != nil || busy != 0 {
		t.Fatalf("remove: %v (busy answers left %d)", err, busy)
	}
	if _, err := a.OpenGroup("vm1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("group still there: %v", err)
	}
}
