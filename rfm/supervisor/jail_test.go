package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/vmm/config"
)

// Create opens the VMM's files and sends them as descriptors with a jail
// (its own empty directory, an unprivileged identity), puts the console
// on a log file and a socket the supervisor made, limits the cgroup; the
// jail directory goes with the subOS.
func TestCreateConfinesVMM(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	defer s.Close()
	os.WriteFile(filepath.Join(dir, "kvm"), nil, 0o600) // the fake KVM device
	ctx := context.Background()
	spec := testSpec(t, "a", 2)
	img := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(img, make([]byte, 4096), 0o600)
	spec.Disks = []Disk{{ID: "data", Path: img, ReadOnly: true}}
	spec.ConsoleLogSize, spec.ConsoleLogRate = 64<<10, 1<<10
	info, err := s.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	p := l.procs[info.PID]
	for _, name := range []string{config.FileKVM, config.FileKernel, config.DiskFile("data"), config.FileConsoleLog, config.FileConsoleSocket} {
		if _, ok := p.named[name]; !ok {
			t.Errorf("no %q descriptor (got %v)", name, p.named)
		}
	}
	doc := p.doc
	uid, gid := DefaultVMMIDs()
	if doc.Jail == nil || doc.Jail.Root != s.jailDir("a") || doc.Jail.UID != uid || doc.Jail.GID != gid || doc.Jail.HostMountNS == "" || doc.NoSeccomp {
		t.Errorf("jail %+v no_seccomp %v", doc.Jail, doc.NoSeccomp)
	}
	if doc.Console.Mode != config.ConsoleFile || doc.Console.Path != info.Log || info.VMMLog == info.Log ||
		doc.Console.LogSize != 64<<10 || doc.Console.LogRate != 1<<10 {
		t.Errorf("console %+v, log %s, VMM log %s", doc.Console, info.Log, info.VMMLog)
	}
	if fi, err := os.Stat(info.ConsoleSocket); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("console socket: %v %v", fi, err)
	}
	if ents, err := os.ReadDir(s.jailDir("a")); err != nil || len(ents) != 0 {
		t.Errorf("jail directory: %v %v", ents, err)
	}
	mem, pids := vmmLimits(doc)
	if got := act.limits["a"]; got != [2]uint64{mem, uint64(pids)} || pids <= 2*len(doc.Cores) || mem < vmmOverhead {
		t.Errorf("limits %v, want %d %d", got, mem, pids)
	}
	// Hot-added disks travel as descriptors too.
	extra := filepath.Join(t.TempDir(), "extra.img")
	os.WriteFile(extra, []byte("EXTRA..."), 0o600)
	if _, err := s.AttachDisk(ctx, "a", Disk{ID: "x", Path: extra}); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	got := p.backings["x"]
	p.mu.Unlock()
	if got != "EXTRA..." {
		t.Errorf("hot-added disk's descriptor reads %q", got)
	}
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.jailDir("a")); !os.IsNotExist(err) {
		t.Errorf("jail directory left: %v", err)
	}
}

func TestJailDisabledAndNoSeccomp(t *testing.T) {
	dir := t.TempDir()
	l := &fakeLauncher{}
	s, err := New(Config{StateDir: dir, RunDir: filepath.Join(dir, "run"), Inventory: testInventory(), Actuator: &fakeActuator{}, Launcher: l,
		Jail: JailConfig{Disabled: true, KVMPath: filepath.Join(dir, "kvm")}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	info, err := s.Create(context.Background(), testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	if doc := l.procs[info.PID].doc; doc.Jail != nil || len(doc.Files) == 0 {
		t.Errorf("disabled jail: %+v, files %v", doc.Jail, doc.Files)
	}
	s.cfg.Jail = JailConfig{UID: 5000, GID: 5001, NoSeccomp: true, KVMPath: filepath.Join(dir, "kvm")}
	info, err = s.Create(context.Background(), testSpec(t, "b", 1))
	if err != nil {
		t.Fatal(err)
	}
	if doc := l.procs[info.PID].doc; doc.Jail == nil || doc.Jail.UID != 5000 || doc.Jail.GID != 5001 || !doc.NoSeccomp {
		t.Errorf("configured jail: %+v no_seccomp %v", doc.Jail, doc.NoSeccomp)
	}
}

// A VMM killed by its seccomp filter: the supervisor names the system call
// in an audit event, and inspecting the gone subOS shows how it ended.
func TestSeccompExitRecorded(t *testing.T) {
	dir := t.TempDir()
	l := &fakeLauncher{}
	s := newTestSupervisor(t, dir, &fakeActuator{}, l)
	defer s.Close()
	info, err := s.Create(context.Background(), testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	crash := strings.Repeat("noise\n", 20000) + "SIGSYS: bad system call\nPC=0x47f2ae m=3 sigcode=1\n\ngoroutine 7 [syscall, locked to thread]:\n\nrax    0x65\nrbx    0x0\n"
	os.WriteFile(info.VMMLog, []byte(crash), 0o600)
	l.procs[info.PID].exit()
	deadline := time.Now().Add(10 * time.Second)
	var got Info
	for {
		if got, err = s.Get("a"); err == nil && got.State == StateExited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not exited: %+v %v", got, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got.LastExit == nil || got.LastExit.Seccomp != "ptrace" {
		t.Errorf("last exit %+v", got.LastExit)
	}
	if ev := eventsOf(t, s); !strings.Contains(ev, "seccomp a VMM killed by its seccomp filter: system call ptrace") {
		t.Errorf("events:\n%s", ev)
	}
	if len(s.List()) != 0 {
		t.Errorf("listed: %v", s.List())
	}
	// A new subOS of the name forgets the old exit.
	if _, err := s.Create(context.Background(), testSpec(t, "a", 1)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("a"); got.LastExit != nil || got.State != StateRunning {
		t.Errorf("re-created: %+v", got)
	}
}

func TestVMMExitWithoutViolation(t *testing.T) {
	log := filepath.Join(t.TempDir(), "a.vmm.log")
	os.WriteFile(log, []byte("level=ERROR msg=\"vcpu 0: internal error\"\n"), 0o600)
	if e := vmmExit(log, 0); e.Seccomp != "" || !strings.Contains(e.Log, "internal error") {
		t.Errorf("exit %+v", e)
	}
	// An earlier VMM's crash, before this one's part of the log, is not
	// this one's.
	old := "SIGSYS: bad system call\nrax    0x65\n"
	os.WriteFile(log, []byte(old+"level=INFO msg=stopped\n"), 0o600)
	if e := vmmExit(log, int64(len(old))); e.Seccomp != "" {
		t.Errorf("earlier crash attributed: %+v", e)
	}
	if e := vmmExit(log, 0); e.Seccomp != "ptrace" {
		t.Errorf("crash not found: %+v", e)
	}
}

// A VMM its filter kills while starting: Create fails, and the system
// call is named all the same.
func TestSeccompDuringStart(t *testing.T) {
	l := &fakeLauncher{crash: "SIGSYS: bad system call\nPC=0x1 m=0 sigcode=1\n\nrax    0x65\n"}
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, l)
	defer s.Close()
	if _, err := s.Create(context.Background(), testSpec(t, "a", 1)); err == nil {
		t.Fatal("created")
	}
	if got, err := s.Get("a"); err != nil || got.LastExit == nil || got.LastExit.Seccomp != "ptrace" {
		t.Errorf("Get = %+v, %v", got, err)
	}
	if ev := eventsOf(t, s); !strings.Contains(ev, "seccomp a VMM killed by its seccomp filter: system call ptrace") {
		t.Errorf("events:\n%s", ev)
	}
}
