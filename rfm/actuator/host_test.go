package actuator

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests change the real host's cgroups, hugepage pools and IRQ
// affinities, and put everything back. They need root.

func hostActuator(t *testing.T) *Actuator {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	parent := "rftest-" + strconv.Itoa(os.Getpid())
	a, err := New(Config{Parent: parent})
	if errors.Is(err, ErrNoCgroup) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cgroup %s: %v", a.Version(), a.Hierarchies())
	t.Cleanup(func() {
		for _, h := range a.hier {
			if err := os.Remove(a.parentDir(h)); err != nil && !os.IsNotExist(err) {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return a
}

func TestHostGroup(t *testing.T) {
	a := hostActuator(t)
	online, err := readList("/sys/devices/system/cpu/online")
	if err != nil || !containsAll(online, []int{1}) {
		t.Skipf("needs CPU 1 online (online %v, %v)", online, err)
	}
	g, err := a.CreateGroup("vm1", []int{1}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("group %v exclusive=%v note=%q", g.Paths(), g.Exclusive(), g.ExclusiveNote())
	removed := false
	defer func() {
		if !removed {
			_ = a.RemoveGroup("vm1")
		}
	}()

	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	pid := cmd.Process.Pid
	if h := a.hier[0]; h.v2 {
		part, _ := readString(filepath.Join(a.parentDir(h), "cpuset.cpus.partition"))
		cpus, _ := readString(filepath.Join(a.parentDir(h), "cpuset.cpus"))
		t.Logf("parent: partition %q cpus %q", part, cpus)
	}
	if err := g.AddProcess(pid); err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	allowed := ""
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			allowed = strings.TrimSpace(v)
		}
	}
	if allowed != "1" {
		t.Errorf("Cpus_allowed_list = %q, want 1", allowed)
	}
	if pids, err := g.Processes(); err != nil || len(pids) != 1 || pids[0] != pid {
		t.Errorf("Processes = %v, %v; want [%d]", pids, err, pid)
	}
	if cg, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup"); err == nil {
		t.Logf("/proc/PID/cgroup:\n%s", cg)
	}
	if err := a.RemoveGroup("vm1"); !errors.Is(err, ErrBusy) {
		t.Errorf("remove with a process in it: %v, want ErrBusy", err)
	}
	if o, err := a.OpenGroup("vm1"); err != nil || o.Exclusive() != g.Exclusive() {
		t.Errorf("OpenGroup = %v, %v", o, err)
	}

	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	killed = true
	// The kernel drops an exited task from cgroup.procs asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err = a.RemoveGroup("vm1")
		if !errors.Is(err, ErrBusy) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	removed = true
	if h := a.hier[0]; h.v2 {
		part, _ := readString(filepath.Join(a.parentDir(h), "cpuset.cpus.partition"))
		cpus, _ := readString(filepath.Join(a.parentDir(h), "cpuset.cpus"))
		t.Logf("parent after removal: partition %q cpus %q", part, cpus)
		if part == "root" {
			t.Errorf("parent still a partition root holding %q", cpus)
		}
	}
	for _, h := range a.hier {
		entries, err := os.ReadDir(a.parentDir(h))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IsDir() {
				t.Errorf("left under %s: %s", a.parentDir(h), e.Name())
			}
		}
	}
}

func TestHostHugePages(t *testing.T) {
	a := hostActuator(t)
	dir, err := a.hugePoolDir(0, 2<<20)
	if err != nil {
		t.Skip(err)
	}
	before, _ := readUint(filepath.Join(dir, "nr_hugepages"))
	added, err := a.EnsureHugePages(0, 2<<20, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseHugePages(0, 2<<20, added); err != nil {
		t.Fatal(err)
	}
	// Now make the pool grow for real: ask for 4 more than are free.
	free, err := readUint(filepath.Join(dir, "free_hugepages"))
	if err != nil {
		t.Fatal(err)
	}
	added, err = a.EnsureHugePages(0, 2<<20, free+4)
	if err != nil {
		t.Fatal(err)
	}
	nowFree, _ := readUint(filepath.Join(dir, "free_hugepages"))
	t.Logf("pool %s: nr %d, free %d -> added %d, free now %d", dir, before, free, added, nowFree)
	if added == 0 || nowFree < free+4 {
		t.Errorf("added %d, free %d; want %d free", added, nowFree, free+4)
	}
	if err := a.ReleaseHugePages(0, 2<<20, added); err != nil {
		t.Fatal(err)
	}
	if after, _ := readUint(filepath.Join(dir, "nr_hugepages")); after != before {
		t.Errorf("nr_hugepages %d after release, was %d", after, before)
	}
}

func TestHostSteerIRQs(t *testing.T) {
	a := hostActuator(t)
	online, err := readList("/sys/devices/system/cpu/online")
	if err != nil || len(online) < 2 {
		t.Skip("needs two CPUs")
	}
	avoid := online[len(online)-1:]
	snapshot := func() map[string]string {
		m := map[string]string{}
		paths, _ := filepath.Glob("/proc/irq/*/smp_affinity_list")
		for _, p := range paths {
			m[p], _ = readString(p)
		}
		return m
	}
	before := snapshot()
	restore, err := a.SteerIRQs(avoid)
	if err != nil {
		t.Fatal(err)
	}
	moved, kept := 0, 0
	for p, s := range snapshot() {
		l, _ := parseList(s)
		if containsAll(l, avoid) && len(l) > 0 {
			kept++ // a per-CPU or managed IRQ the kernel would not move
			t.Logf("%s still %s", p, s)
		} else if s != before[p] {
			moved++
		}
	}
	t.Logf("moved %d IRQs off CPU %v, %d refused", moved, avoid, kept)
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	after := snapshot()
	for p, s := range before {
		if after[p] != s {
			t.Errorf("%s = %s after restore, was %s", p, after[p], s)
		}
	}
}

func TestHostTwoGroups(t *testing.T) {
	a := hostActuator(t)
	online, err := readList("/sys/devices/system/cpu/online")
	if err != nil || !containsAll(online, []int{1, 2, 3}) {
		t.Skipf("needs CPUs 1-3 online (online %v, %v)", online, err)
	}
	g1, err := a.CreateGroup("vm1", []int{1}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	defer a.RemoveGroup("vm1")
	g2, err := a.CreateGroup("vm2", []int{2, 3}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	defer a.RemoveGroup("vm2")
	t.Logf("vm1 exclusive=%v %q, vm2 exclusive=%v %q", g1.Exclusive(), g1.ExclusiveNote(), g2.Exclusive(), g2.ExclusiveNote())
	if g1.Exclusive() != g2.Exclusive() {
		t.Errorf("exclusivity differs between the groups")
	}
	if _, err := a.CreateGroup("vm3", []int{3}, []int{0}); !errors.Is(err, ErrOverlap) {
		t.Errorf("overlapping group vm3: %v, want ErrOverlap", err)
		_ = a.RemoveGroup("vm3")
	}
	if err := a.RemoveGroup("vm1"); err != nil {
		t.Fatal(err)
	}
	if cpus, err := readList(filepath.Join(a.parentDir(a.hier[0]), "cpuset.cpus")); err == nil {
		t.Logf("parent cpus after removing vm1: %v", cpus)
	}
	if err := a.RemoveGroup("vm2"); err != nil {
		t.Fatal(err)
	}
}
