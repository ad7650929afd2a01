package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/rfm/share"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
)

// StartBackend plays ExecLauncher's: a fake process, moved by prepare,
// whose argv is recorded.
func (l *fakeLauncher) StartBackend(_ context.Context, argv []string, logPath string, files []*os.File, prepare func(int) error) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failBackend {
		return nil, errors.New("fake: virtiofsd exited before starting")
	}
	if l.procs == nil {
		l.procs = map[int]*fakeProcess{}
	}
	l.next++
	p := &fakeProcess{pid: 1000 + l.next, done: make(chan struct{})}
	if err := prepare(p.pid); err != nil {
		return nil, err
	}
	if len(files) != 1 {
		return nil, fmt.Errorf("fake: virtiofsd given %d files, want its listener", len(files))
	}
	l.procs[p.pid] = p
	l.backendArgv = append(l.backendArgv, argv)
	os.WriteFile(logPath, []byte("virtiofsd: serving\n"), 0o600)
	return p, nil
}

// OpenGroup plays the actuator's.
func (a *fakeActuator) OpenGroup(name string) (Group, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.groups[name]; !ok {
		return nil, fmt.Errorf("fake: no group %s", name)
	}
	return fakeGroup{name, a}, nil
}

// AttachShare plays the VMM's (vmmctl.ShareHandler).
func (p *fakeProcess) AttachShare(_ context.Context, s config.Share, sock *os.File) (vmmctl.Device, error) {
	sock.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.devices[s.ID]; ok {
		return vmmctl.Device{}, fmt.Errorf("%w: %q", vmmctl.ErrExists, s.ID)
	}
	dev := vmmctl.Device{ID: s.ID, Kind: "share", Name: s.Tag, Slot: 10 + len(p.devices)}
	p.devices[s.ID] = dev
	return dev, nil
}

// shareHost is a fake host whose supervisors start a fake virtiofsd and
// make views as directories (no mounts), recording them.
type shareHost struct {
	*fakeHost
	binary string
	mu     sync.Mutex
	views  map[string]string // view -> source, while it exists
}

func newShareHost(t *testing.T) *shareHost {
	h := &shareHost{fakeHost: newFakeHost(t), views: map[string]string{}}
	h.binary = filepath.Join(t.TempDir(), "virtiofsd")
	if err := os.WriteFile(h.binary, []byte("#!/bin/sh\necho 'usage: virtiofsd [options]'\necho '    -o source=PATH             shared directory tree'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *shareHost) start(t *testing.T) *Supervisor {
	t.Helper()
	cfg := Config{StateDir: h.dir, RunDir: filepath.Join(h.dir, "run"), Inventory: testInventory(), Actuator: h.act, Launcher: h.l,
		Jail: JailConfig{KVMPath: filepath.Join(h.dir, "kvm")}, Virtiofsd: []string{h.binary}, ShareSandbox: share.SandboxChroot}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.makeView = func(src, dst string) error {
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.views[dst] = src
		return nil
	}
	s.removeView = func(dst string) error {
		h.mu.Lock()
		delete(h.views, dst)
		h.mu.Unlock()
		return os.Remove(dst)
	}
	s.backendGrace = 0
	return s
}

// viewCount counts the views made that are still there (a successor
// supervisor recovering in New removes them before the test's hooks are
// in place).
func (h *shareHost) viewCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for v := range h.views {
		if _, err := os.Stat(v); err == nil {
			n++
		}
	}
	return n
}

// backendArgs returns the fake virtiofsd command lines started.
func (h *shareHost) backendArgs() [][]string {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	return slices.Clone(h.l.backendArgv)
}

func shareSpec(t *testing.T, name string, shares ...ShareSpec) Spec {
	spec := testSpec(t, name, 1)
	spec.Shares = shares
	return spec
}

func TestCreateWithShares(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	rw, ro := t.TempDir(), t.TempDir()
	info, err := s.Create(t.Context(), shareSpec(t, "a", ShareSpec{Path: rw, Tag: "data"}, ShareSpec{Path: ro, Tag: "docs", ReadOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Spec.Shares) != 2 || info.Spec.Shares[0].ID != "share0" || info.Spec.Shares[1].ID != "share1" {
		t.Fatalf("created shares %+v", info.Spec.Shares)
	}
	args := h.backendArgs()
	if len(args) != 2 {
		t.Fatalf("virtiofsd started %d times: %v", len(args), args)
	}
	view := filepath.Join(s.shareDir("a"), "share1")
	want := [][]string{
		{h.binary, "-f", "--fd=4", "-o", "source=" + rw, "-o", "sandbox=chroot", "-o", "cache=auto", "--thread-pool-size=0"},
		{h.binary, "-f", "--fd=4", "-o", "source=" + view, "-o", "sandbox=chroot", "-o", "cache=auto", "--thread-pool-size=0"},
	}
	for i := range want {
		if !slices.Equal(args[i], want[i]) {
			t.Errorf("virtiofsd %d: %q, want %q", i, args[i], want[i])
		}
	}
	h.mu.Lock()
	if h.views[view] != ro || len(h.views) != 1 {
		t.Errorf("views %v, want %s of %s", h.views, view, ro)
	}
	h.mu.Unlock()
	// Both virtiofsd went into the subOS's cgroup, before its VMM.
	h.act.mu.Lock()
	members := slices.Clone(h.act.members["a"])
	h.act.mu.Unlock()
	if len(members) != 3 || members[2] != info.PID {
		t.Errorf("cgroup members %v, want the two virtiofsd and then the VMM %d", members, info.PID)
	}
	// The VMM got a share each, on its descriptor, and the tags on the
	// guest's command line.
	p := h.proc(info.PID)
	for _, id := range []string{"share0", "share1"} {
		if _, ok := p.named[config.ShareFile(id)]; !ok {
			t.Errorf("no descriptor %q: %v", config.ShareFile(id), p.named)
		}
	}
	if sh := p.doc.WithShareIDs(); len(sh) != 2 || sh[0].Tag != "data" || sh[1].Tag != "docs" || sh[0].Socket != "" {
		t.Errorf("VMM shares %+v", sh)
	}
	if !strings.Contains(p.doc.Append, "rf.shares=data,docs") {
		t.Errorf("command line %q does not name the tags", p.doc.Append)
	}
	got, _ := s.Get("a")
	if len(got.Shares) != 2 || got.Shares[0].State != ShareServing || got.Shares[0].PID != members[0] || got.Shares[1].PID != members[1] || !got.Shares[1].ReadOnly {
		t.Errorf("Info shares %+v", got.Shares)
	}
	// The record names the virtiofsd processes.
	rec, err := s.store.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	var ps persisted
	if err := json.Unmarshal(rec.Spec, &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps.Backends) != 2 || ps.Backends[0].PID != members[0] || ps.Backends[1].View != view {
		t.Errorf("recorded back ends %+v", ps.Backends)
	}
	// Destroy: the VMM, then virtiofsd, then the views.
	if err := s.Destroy(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	if alive := h.alive(); len(alive) != 0 {
		t.Errorf("processes left after destroy: %v", alive)
	}
	if n := h.viewCount(); n != 0 {
		t.Errorf("%d views left after destroy", n)
	}
	if _, err := os.Stat(s.shareDir("a")); !os.IsNotExist(err) {
		t.Errorf("share directory left: %v", err)
	}
}

func TestShareProblems(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	bad := shareSpec(t, "a",
		ShareSpec{Path: filepath.Join(dir, "missing"), Tag: "a"},
		ShareSpec{Path: file, Tag: "b"},
		ShareSpec{Path: dir, Tag: "b"},
		ShareSpec{Path: dir, Tag: strings.Repeat("t", 37)},
		ShareSpec{Path: "/", Tag: "root"},
		ShareSpec{Path: h.dir, Tag: "state"},
	)
	want := []string{"shares[0].path", "shares[1].path", "shares[2].tag", "shares[3].tag", "shares[4].path", "shares[5].path"}
	var got []string
	for _, p := range s.Check(bad) {
		if strings.HasPrefix(p.Field, "shares") {
			got = append(got, p.Field)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("Check's share problems %v, want %v", got, want)
	}
	_, err := s.Create(t.Context(), bad)
	var pe *ProblemsError
	if !errors.As(err, &pe) || len(pe.Problems) != len(want) {
		t.Fatalf("Create: %v", err)
	}
	if strings.Contains(err.Error(), "shares[4].path") && !strings.Contains(err.Error(), "allow_root") {
		t.Errorf("sharing / without allow_root: %v", err)
	}
	// Nothing was made.
	if len(h.backendArgs()) != 0 || len(h.alive()) != 0 || h.viewCount() != 0 {
		t.Errorf("a refused create started %v, left %v alive, %d views", h.backendArgs(), h.alive(), h.viewCount())
	}
	h.act.mu.Lock()
	groups := len(h.act.groups)
	h.act.mu.Unlock()
	if groups != 0 {
		t.Errorf("a refused create left %d cgroups", groups)
	}
	// / with allow_root is taken.
	if probs := s.Check(shareSpec(t, "b", ShareSpec{Path: "/", Tag: "root", AllowRoot: true, ReadOnly: true})); len(probs) != 0 {
		t.Errorf("/ with allow_root: %v", probs)
	}
	// A supervisor without a virtiofsd refuses shares, clearly.
	s.Close()
	h.binary = filepath.Join(t.TempDir(), "none")
	s2 := h.start(t)
	defer s2.Close()
	if probs := s2.Check(shareSpec(t, "c", ShareSpec{Path: dir, Tag: "d"})); len(probs) != 1 || !strings.Contains(probs[0].Message, "no virtiofsd") {
		t.Errorf("no virtiofsd: %v", probs)
	}
}

// A virtiofsd that fails to start undoes the whole create.
func TestShareStartFails(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	h.l.failBackend = true
	_, err := s.Create(t.Context(), shareSpec(t, "a", ShareSpec{Path: t.TempDir(), Tag: "x", ReadOnly: true}))
	if err == nil || !strings.Contains(err.Error(), "virtiofsd") {
		t.Fatalf("create with a failing virtiofsd: %v", err)
	}
	if h.viewCount() != 0 || len(h.alive()) != 0 || len(s.List()) != 0 {
		t.Errorf("left behind: %d views, %v alive, %v listed", h.viewCount(), h.alive(), s.List())
	}
	if recs, _ := s.store.Records(); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// waitShare polls until share tag of subOS name is in state.
func waitShare(t *testing.T, s *Supervisor, name, tag, state string) ShareInfo {
	t.Helper()
	for {
		info, err := s.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, sh := range info.Shares {
			if sh.Tag == tag && sh.State == state {
				return sh
			}
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("share %s of %s never %s: %+v", tag, name, state, info.Shares)
		default:
		}
		time.Sleep(time.Millisecond)
	}
}

func TestShareFailure(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	info, err := s.Create(t.Context(), shareSpec(t, "a", ShareSpec{Path: t.TempDir(), Tag: "data"}, ShareSpec{Path: t.TempDir(), Tag: "more"}))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get("a")
	h.l.kill(got.Shares[0].PID)
	sh := waitShare(t, s, "a", "data", ShareFailed)
	if !strings.Contains(sh.Error, "virtiofsd") || !strings.Contains(sh.Error, "exited") || sh.PID != 0 {
		t.Errorf("failed share %+v", sh)
	}
	var failed []string
	for len(failed) == 0 { // the event follows the state
		evs, _ := s.Events(0, 100)
		for _, e := range evs {
			if e.What == "share-failed" {
				failed = append(failed, e.Detail)
			}
		}
		time.Sleep(time.Millisecond)
	}
	if len(failed) != 1 || !strings.Contains(failed[0], "share0 (tag data") {
		t.Errorf("share-failed events %q", failed)
	}
	// The subOS runs on; its other share too. A restarted supervisor
	// still knows the failed one, and adopts the other's virtiofsd.
	s.Close()
	s = h.start(t)
	got, _ = s.Get("a")
	if got.State != StateRunning || got.PID != info.PID || len(got.Shares) != 2 || got.Shares[0].State != ShareFailed || got.Shares[1].State != ShareServing || got.Shares[1].PID == 0 {
		t.Fatalf("after a restart: %+v", got)
	}
	// A virtiofsd that ends while no supervisor runs fails its share at
	// the next start.
	s.Close()
	h.l.kill(got.Shares[1].PID)
	s = h.start(t)
	sh = waitShare(t, s, "a", "more", ShareFailed)
	if !strings.Contains(sh.Error, "gone at supervisor start") {
		t.Errorf("share whose virtiofsd ended meanwhile: %+v", sh)
	}
}

// A VMM that ends takes its virtiofsd with it: the subOS is reclaimed,
// no share failure is reported.
func TestShareEndsWithVMM(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	s.backendGrace = 1 << 62 // only the VMM's end stops the watcher
	info, err := s.Create(t.Context(), shareSpec(t, "a", ShareSpec{Path: t.TempDir(), Tag: "data", ReadOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get("a")
	h.l.kill(got.Shares[0].PID) // virtiofsd sees the socket close first
	h.l.kill(info.PID)
	for {
		if i, err := s.Get("a"); err == nil && i.State == StateExited {
			break
		}
		time.Sleep(time.Millisecond)
	}
	evs, _ := s.Events(0, 100)
	for _, e := range evs {
		if e.What == "share-failed" {
			t.Errorf("share failure reported for a subOS that ended: %s", e.Detail)
		}
	}
	if h.viewCount() != 0 {
		t.Errorf("views left: %d", h.viewCount())
	}
}

func TestAddRemoveShare(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	ctx := t.Context()
	info, err := s.Create(ctx, shareSpec(t, "a", ShareSpec{Path: t.TempDir(), Tag: "data"}))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := s.AddShare(ctx, "a", ShareSpec{Path: dir, Tag: "data"}); !errors.Is(err, ErrDeviceExists) {
		t.Errorf("a second share of tag data: %v", err)
	}
	if _, err := s.AddShare(ctx, "a", ShareSpec{Path: filepath.Join(dir, "missing"), Tag: "x"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "shares[1].path") {
		t.Errorf("a missing directory: %v", err)
	}
	sp, err := s.AddShare(ctx, "a", ShareSpec{Path: dir, Tag: "extra", ReadOnly: true})
	if err != nil || sp.ID != "share1" {
		t.Fatalf("AddShare = %+v, %v", sp, err)
	}
	p := h.proc(info.PID)
	if !p.has("share1") {
		t.Error("the VMM did not get the share")
	}
	got, _ := s.Get("a")
	if len(got.Shares) != 2 || got.Shares[1].Tag != "extra" || got.Shares[1].PID == 0 || h.viewCount() != 1 {
		t.Fatalf("after AddShare: %+v, %d views", got.Shares, h.viewCount())
	}
	pid := got.Shares[1].PID
	h.act.mu.Lock()
	inGroup := slices.Contains(h.act.members["a"], pid)
	h.act.mu.Unlock()
	if !inGroup {
		t.Error("the hot-added virtiofsd is not in the subOS's cgroup")
	}
	// Re-adopted after a restart, as shares made at create.
	s.Close()
	s = h.start(t)
	if got, _ := s.Get("a"); len(got.Shares) != 2 || got.Shares[1].PID != pid {
		t.Fatalf("after a restart: %+v", got.Shares)
	}
	// A guest that holds on to it keeps it.
	p.setRefuse(true)
	if err := s.RemoveShare(ctx, "a", "extra", 20*time.Millisecond); !errors.Is(err, ErrInUse) {
		t.Errorf("removal the guest refuses: %v", err)
	}
	p.setRefuse(false)
	if err := s.RemoveShare(ctx, "a", "nope", 0); !errors.Is(err, ErrNoDevice) {
		t.Errorf("removing a share it has not: %v", err)
	}
	if err := s.RemoveShare(ctx, "a", "extra", 0); err != nil {
		t.Fatal(err)
	}
	if p.has("share1") || h.l.alive(pid) || h.viewCount() != 0 {
		t.Errorf("after RemoveShare: device %v, virtiofsd alive %v, %d views", p.has("share1"), h.l.alive(pid), h.viewCount())
	}
	got, _ = s.Get("a")
	if len(got.Shares) != 1 || got.Shares[0].Tag != "data" {
		t.Errorf("shares after removal: %+v", got.Shares)
	}
	evs, _ := s.Events(0, 100)
	var whats []string
	for _, e := range evs {
		if strings.HasPrefix(e.What, "share") {
			whats = append(whats, e.What)
		}
	}
	if !slices.Equal(whats, []string{"share-add", "share-remove-failed", "share-remove"}) {
		t.Errorf("share events %v", whats)
	}
}

// A supervisor that crashes in the middle of a hot-add leaves a subOS its
// successor settles by what the VMM has.
func TestAddShareCrash(t *testing.T) {
	for _, step := range []string{"share:backend", "share:vmm", "share:record"} {
		t.Run(step, func(t *testing.T) {
			h := newShareHost(t)
			s := h.start(t)
			info, err := s.Create(t.Context(), shareSpec(t, "a"))
			if err != nil {
				t.Fatal(err)
			}
			s.crashPoint = func(at string) {
				if at == step {
					panic(crashed{at})
				}
			}
			if got := run(func() { _, _ = s.AddShare(t.Context(), "a", ShareSpec{Path: t.TempDir(), Tag: "x", ReadOnly: true}) }); got != step {
				t.Fatalf("crashed at %q", got)
			}
			crash(s)
			s = h.start(t)
			got, err := s.Get("a")
			if err != nil || got.PID != info.PID {
				t.Fatalf("subOS lost: %+v %v", got, err)
			}
			present := h.proc(info.PID).has("share0")
			if present != (step == "share:record") {
				t.Fatalf("the VMM has the share: %v", present)
			}
			if present {
				if len(got.Shares) != 1 || got.Shares[0].State != ShareServing || got.Shares[0].PID == 0 {
					t.Errorf("settled shares %+v", got.Shares)
				}
				return
			}
			if len(got.Shares) != 0 || h.viewCount() != 0 {
				t.Errorf("settled shares %+v, %d views", got.Shares, h.viewCount())
			}
			if alive := h.alive(); len(alive) != 1 || alive[0] != info.PID {
				t.Errorf("processes alive %v, want only the VMM %d", alive, info.PID)
			}
		})
	}
}

func TestProcessTreeCPU(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)
	}
	// pid 10 (utime 5, stime 3) has a thread whose child is 11 (7, 1).
	write("10/stat", "10 (virtiofsd) S 1 10 10 0 -1 4194560 0 0 0 0 5 3 0 0 20 0 1 0 100 0 0")
	write("10/task/10/children", "")
	write("10/task/12/children", "11 ")
	write("11/stat", "11 (virtio fs) S 10 10 10 0 -1 4194560 0 0 0 0 7 1 0 0 20 0 1 0 100 0 0")
	if got := processTreeCPUUsec(root, 10); got != 16*10000 {
		t.Errorf("CPU time %d us, want %d", got, 16*10000)
	}
}

// ExecLauncher starts the real virtiofsd as the supervisor does: it does
// not run before prepare returns, keeps its pid, and ends when the front
// end's connection closes.
func TestExecLauncherStartBackend(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("virtiofsd's sandbox needs root")
	}
	bin, err := share.Find(t.Context())
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "rfsh")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	ln, conn, err := share.Socket(filepath.Join(sockDir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	logPath := filepath.Join(t.TempDir(), "virtiofsd.log")
	argv := append([]string{bin.Path}, bin.Args(BackendFirstFD, dir, false, share.DefaultSandbox())...)
	var before string
	p, err := ExecLauncher{}.StartBackend(t.Context(), argv, logPath, []*os.File{ln}, func(pid int) error {
		before, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(before, "virtiofsd") {
		t.Errorf("virtiofsd ran before prepare returned (%s)", before)
	}
	// The same process becomes virtiofsd.
	for {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID()))
		if exe == bin.Path {
			break
		}
		select {
		case <-p.Done():
			b, _ := os.ReadFile(logPath)
			t.Fatalf("exited: %s", b)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	if st, err := procStartTime("/proc", p.PID()); err != nil || st != p.StartTime() {
		t.Errorf("start time %d %v, recorded %d", st, err, p.StartTime())
	}
	conn.Close()
	<-p.Done()
	if s := p.(*childProcess).ExitStatus(); s != "exit status 0" {
		b, _ := os.ReadFile(logPath)
		t.Errorf("virtiofsd ended with %s: %s", s, b)
	}
	// A failing prepare kills it before it runs.
	ln2, conn2, err := share.Socket(filepath.Join(sockDir, "s2"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	defer conn2.Close()
	if _, err := (ExecLauncher{}).StartBackend(t.Context(), argv, logPath, []*os.File{ln2}, func(int) error { return errors.New("no cgroup") }); err == nil || err.Error() != "no cgroup" {
		t.Errorf("failing prepare: %v", err)
	}
}

// What the shares of a subOS that no longer exists left behind is
// removed at start; a live subOS's is kept.
func TestSweepShareDirs(t *testing.T) {
	h := newShareHost(t)
	s := h.start(t)
	if _, err := s.Create(t.Context(), shareSpec(t, "a", ShareSpec{Path: t.TempDir(), Tag: "x", ReadOnly: true})); err != nil {
		t.Fatal(err)
	}
	s.Close()
	ghost := filepath.Join(h.dir, "run", "shares", "ghost")
	if err := os.MkdirAll(filepath.Join(ghost, "share0"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ghost, "share0.log"), []byte("x"), 0o600)
	s = h.start(t)
	defer s.Close()
	if _, err := os.Stat(ghost); !os.IsNotExist(err) {
		t.Errorf("the gone subOS's share directory stays: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.shareDir("a"), "share0")); err != nil {
		t.Errorf("the live subOS's view went: %v", err)
	}
}
