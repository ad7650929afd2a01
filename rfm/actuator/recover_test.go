package actuator

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// fakeKill makes a's kill take the process out of every cgroup.procs under
// root, as the kernel does when it dies, and records it.
func fakeKill(t *testing.T, a *Actuator, root string, killed *[]int) {
	a.kill = func(pid int) error {
		*killed = append(*killed, pid)
		return filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.Name() != "cgroup.procs" {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			var keep []string
			for _, f := range strings.Fields(string(b)) {
				if f != strconv.Itoa(pid) {
					keep = append(keep, f)
				}
			}
			return os.WriteFile(p, []byte(strings.Join(keep, "\n")), 0o644)
		})
	}
}

// A restarted supervisor finds the groups under the parent, empties one
// (every hierarchy) and removes it.
func TestGroupsAndKillGroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		root func(*testing.T) string
	}{{"v1", fakeV1}, {"v2", fakeV2}} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.root(t)
			a := newFake(t, root)
			if gs, err := a.Groups(); err != nil || len(gs) != 0 {
				t.Fatalf("Groups before any: %v %v", gs, err)
			}
			for i, n := range []string{"vm2", "vm1"} {
				if _, err := a.CreateGroup(n, []int{i + 1}, []int{0}); err != nil {
					t.Fatal(err)
				}
			}
			// Not a group name: left alone.
			for _, h := range a.hier {
				os.Mkdir(filepath.Join(a.parentDir(h), "Foreign.dir"), 0o755)
			}
			gs, err := a.Groups()
			if err != nil || !reflect.DeepEqual(gs, []string{"vm1", "vm2"}) {
				t.Fatalf("Groups = %v, %v", gs, err)
			}
			for _, d := range a.groupDirs("vm1") {
				writeFiles(t, d, map[string]string{"cgroup.procs": "41\n42\n"})
			}
			var killed []int
			fakeKill(t, a, root, &killed)
			if err := a.RemoveGroup("vm1"); !errors.Is(err, ErrBusy) {
				t.Fatalf("RemoveGroup with processes: %v", err)
			}
			pids, err := a.KillGroup(context.Background(), "vm1")
			if err != nil || !reflect.DeepEqual(pids, []int{41, 42}) {
				t.Fatalf("KillGroup = %v, %v", pids, err)
			}
			if slices.Compare(killed, []int{41, 42}) != 0 {
				t.Errorf("killed %v, want each once", killed)
			}
			if err := a.RemoveGroup("vm1"); err != nil {
				t.Fatal(err)
			}
			if pids, err := a.KillGroup(context.Background(), "vm1"); err != nil || len(pids) != 0 {
				t.Errorf("KillGroup of a removed group = %v, %v", pids, err)
			}
			if gs, _ := a.Groups(); !reflect.DeepEqual(gs, []string{"vm2"}) {
				t.Errorf("Groups after removal = %v", gs)
			}
		})
	}
}

// KillGroup gives up when ctx ends with processes left (one that does
// not die), saying which.
func TestKillGroupStuck(t *testing.T) {
	root := fakeV2(t)
	a := newFake(t, root)
	if _, err := a.CreateGroup("vm1", []int{1}, []int{0}); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{"rainforest/vm1/cgroup.procs": "7\n"})
	ctx, cancel := context.WithCancel(context.Background())
	a.kill = func(int) error { cancel(); return nil }
	if _, err := a.KillGroup(ctx, "vm1"); !errors.Is(err, ErrBusy) || !errors.Is(err, context.Canceled) {
		t.Fatalf("KillGroup = %v", err)
	}
}

func TestPoolSize(t *testing.T) {
	root, _ := fakeSysNode(t, 10, 2)
	a := newFake(t, root)
	fakeHugeKernel(t, a, 100, 8)
	if n, err := a.PoolSize(0, 2<<20); err != nil || n != 10 {
		t.Fatalf("PoolSize = %d, %v", n, err)
	}
	if _, err := a.EnsureHugePages(0, 2<<20, 5); err != nil {
		t.Fatal(err)
	}
	if n, err := a.PoolSize(0, 2<<20); err != nil || n != 13 {
		t.Fatalf("PoolSize after growing = %d, %v", n, err)
	}
	if _, err := a.PoolSize(1, 2<<20); !errors.Is(err, ErrInvalid) {
		t.Errorf("PoolSize of a missing node: %v", err)
	}
}

// On the host: a process in a group is killed and the group removed, as a
// restarted supervisor does with an orphan.
func TestHostKillGroup(t *testing.T) {
	a := hostActuator(t)
	if _, err := a.CreateGroup("vm1", []int{0}, []int{0}); err != nil {
		t.Fatal(err)
	}
	defer a.RemoveGroup("vm1")
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // reaps it once killed
	defer func() { _ = cmd.Process.Kill(); <-done }()
	g, err := a.OpenGroup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.AddProcess(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if gs, err := a.Groups(); err != nil || !slices.Contains(gs, "vm1") {
		t.Fatalf("Groups = %v, %v", gs, err)
	}
	pids, err := a.KillGroup(context.Background(), "vm1")
	if err != nil || !reflect.DeepEqual(pids, []int{cmd.Process.Pid}) {
		t.Fatalf("KillGroup = %v, %v", pids, err)
	}
	<-done
	if err := a.RemoveGroup("vm1"); err != nil {
		t.Fatal(err)
	}
}
