package lxc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTools records the commands run; fail maps a program to the error it
// returns, and attachFailures is how often lxc-attach fails first.
type fakeTools struct {
	mu             sync.Mutex
	calls          []string
	fail           map[string]error
	attachFailures int
}

func (f *fakeTools) exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	if name == "lxc-attach" && f.attachFailures > 0 {
		f.attachFailures--
		return []byte("Failed to get init pid"), errors.New("exit status 1")
	}
	if err := f.fail[name]; err != nil {
		return []byte("lxc-start: some reason\n"), err
	}
	return nil, nil
}

func (f *fakeTools) programs() []string {
	var p []string
	for _, c := range f.calls {
		p = append(p, strings.Fields(c)[0])
	}
	return p
}

func testConfig(f *fakeTools) Config {
	return Config{NamePrefix: "rf-t-", ConfigFile: "/tmp/c.conf", Timeout: time.Second, Poll: time.Millisecond, Exec: f.exec}
}

func TestCycle(t *testing.T) {
	f := &fakeTools{attachFailures: 2}
	s := Cycle(context.Background(), testConfig(f), 3)
	if !s.OK() {
		t.Fatalf("cycle failed: %s", s.Error)
	}
	want := []string{"lxc-create", "lxc-start", "lxc-attach", "lxc-attach", "lxc-attach", "lxc-stop", "lxc-destroy"}
	if got := f.programs(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ran %v, want %v", got, want)
	}
	if f.calls[0] != "lxc-create -t busybox -n rf-t-3 -f /tmp/c.conf" || f.calls[1] != "lxc-start -n rf-t-3 -d" ||
		f.calls[2] != "lxc-attach -n rf-t-3 -- true" || f.calls[5] != "lxc-stop -k -n rf-t-3" {
		t.Errorf("commands %q", f.calls)
	}
	if s.System != System || s.Run != 3 || s.CreateReturn > s.CreateInit || s.DestroyReturn > s.Destroy {
		t.Errorf("sample %+v", s)
	}
}

func TestCycleStartFailsCleansUp(t *testing.T) {
	f := &fakeTools{fail: map[string]error{"lxc-start": errors.New("exit status 1")}}
	s := Cycle(context.Background(), testConfig(f), 1)
	if s.OK() || !strings.Contains(s.Error, "lxc-start -n rf-t-1 -d") || !strings.Contains(s.Error, "some reason") {
		t.Errorf("error %q", s.Error)
	}
	got := f.programs()
	if n := len(got); n < 2 || got[n-2] != "lxc-stop" || got[n-1] != "lxc-destroy" {
		t.Errorf("no cleanup: %v", f.calls)
	}
	if f.calls[len(f.calls)-1] != "lxc-destroy -f -n rf-t-1" {
		t.Errorf("cleanup %q", f.calls[len(f.calls)-1])
	}
}

func TestCycleAttachTimesOut(t *testing.T) {
	f := &fakeTools{attachFailures: 1 << 30}
	cfg := testConfig(f)
	cfg.Timeout = 20 * time.Millisecond
	s := Cycle(context.Background(), cfg, 1)
	if s.OK() || !strings.Contains(s.Error, "still failing") {
		t.Errorf("error %q", s.Error)
	}
	if got := f.programs(); got[len(got)-1] != "lxc-destroy" {
		t.Errorf("no cleanup: %v", got)
	}
}

func TestWriteConfigAndCommands(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lxc.conf")
	if err := WriteConfig(p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || !strings.Contains(string(b), "lxc.net.0.type = empty") || !strings.Contains(string(b), "lxc.apparmor.profile = unconfined") {
		t.Errorf("config %q err %v", b, err)
	}
	cmds := Commands(Config{ConfigFile: p}, "n")
	if !strings.Contains(cmds["create"], "lxc-create -t busybox -n n -f "+p) || !strings.Contains(cmds["destroy"], "lxc-destroy -n n") {
		t.Errorf("commands %v", cmds)
	}
}

// With a cpuset and a memory resize, a cycle times the lxc-cgroup
// changes of the running container: cpuset first, then the memory limit.
func TestCycleResizes(t *testing.T) {
	f := &fakeTools{}
	cfg := testConfig(f)
	cfg.ResizeFrom, cfg.ResizeTo = "0", "0-1"
	cfg.Memory = MemoryResize{Key: "memory.max", From: "268435456", To: "805306368"}
	s := Cycle(context.Background(), cfg, 2)
	if !s.OK() || s.CPUOnline <= 0 || s.CPUOffline <= 0 || s.MemOnline <= 0 || s.MemOffline <= 0 {
		t.Fatalf("sample %+v", s)
	}
	var cgroup []string
	for _, c := range f.calls {
		if rest, ok := strings.CutPrefix(c, "lxc-cgroup -n rf-t-2 "); ok {
			cgroup = append(cgroup, rest)
		}
	}
	want := "cpuset.cpus 0|cpuset.cpus 0-1|cpuset.cpus 0|memory.max 268435456|memory.max 805306368|memory.max 268435456"
	if strings.Join(cgroup, "|") != want {
		t.Errorf("lxc-cgroup calls %q, want %q", cgroup, want)
	}
	cmds := Commands(cfg, "n")
	if cmds["memory online"] != "lxc-cgroup -n n memory.max 805306368 (from 268435456)" || cmds["memory offline"] != "lxc-cgroup -n n memory.max 268435456" {
		t.Errorf("commands %v", cmds)
	}

	f = &fakeTools{fail: map[string]error{"lxc-cgroup": errors.New("exit status 1")}}
	cfg.Exec, cfg.ResizeFrom = f.exec, ""
	if s := Cycle(context.Background(), cfg, 3); !strings.Contains(s.Error, "memory.max") {
		t.Errorf("refused limit: %+v", s)
	}
}

func TestMemoryLimits(t *testing.T) {
	root := t.TempDir()
	if got := MemoryLimits(root, 256<<20, 512<<20); got != (MemoryResize{Key: "memory.max", From: "268435456", To: "805306368"}) {
		t.Errorf("cgroup v2: %+v", got)
	}
	if err := os.MkdirAll(filepath.Join(root, "fs", "cgroup", "memory"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := MemoryLimits(root, 256<<20, 512<<20); got.Key != "memory.limit_in_bytes" || got.To != "805306368" {
		t.Errorf("cgroup v1: %+v", got)
	}
}
