package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"rainforest/ledger/store"
)

// crashed is what a simulated crash panics with.
type crashed struct{ step string }

// fakeHost is the machine a supervisor runs on: cgroups and hugepages
// (the actuator) and VMM processes (the launcher) outlive the supervisor.
type fakeHost struct {
	dir string
	act *fakeActuator
	l   *fakeLauncher
}

func newFakeHost(t *testing.T) *fakeHost {
	h := &fakeHost{dir: t.TempDir(), act: &fakeActuator{}, l: &fakeLauncher{}}
	h.act.host = h.l
	return h
}

func (h *fakeHost) start(t *testing.T) *Supervisor {
	t.Helper()
	return newTestSupervisor(t, h.dir, h.act, h.l)
}

// crash abandons s as a killed supervisor would leave things: nothing is
// undone; only its own goroutines stop and its store file is closed (so
// that a successor can open it).
func crash(s *Supervisor) {
	s.mu.Lock()
	for _, so := range s.subos {
		select {
		case <-so.stopped:
		default:
			close(so.stopped)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.opMu.Lock()
	s.stopSharing()
	s.opMu.Unlock()
	s.store.Close()
}

// crashAt makes s crash at its n-th step (1-based) from now.
func crashAt(s *Supervisor, n int) {
	s.crashPoint = func(step string) {
		n--
		if n == 0 {
			panic(crashed{step})
		}
	}
}

// run runs op; it returns the step it crashed at, or "".
func run(op func()) (step string) {
	defer func() {
		if r := recover(); r != nil {
			c, ok := r.(crashed)
			if !ok {
				panic(r)
			}
			step = c.step
		}
	}()
	op()
	return ""
}

// alive lists the fake VMMs that run, sorted.
func (h *fakeHost) alive() []int {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	var out []int
	for pid, p := range h.l.procs {
		select {
		case <-p.done:
		default:
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

func (h *fakeHost) proc(pid int) *fakeProcess {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	return h.l.procs[pid]
}

// checkConsistent checks that s's records, its ledger, its list and the
// host agree: every record is running with nothing under way, each has
// its live VMM in its cgroup, no other VMM runs, no other cgroup exists,
// the pool holds exactly the pages the records say were added, and each
// VMM has the devices its record says.
func checkConsistent(t *testing.T, s *Supervisor, h *fakeHost) {
	t.Helper()
	recs, err := s.store.Records()
	if err != nil {
		t.Fatal(err)
	}
	var names, ledgerNames, listed []string
	var pids []int
	var pages int64
	for _, r := range recs {
		names = append(names, r.Allocation.Name)
		if !r.Running() || r.Intent != nil {
			t.Errorf("record %s: phase %q intent %s after the operation", r.Allocation.Name, r.Phase, r.Intent)
		}
		var p persisted
		if err := json.Unmarshal(r.Spec, &p); err != nil {
			t.Fatal(err)
		}
		pages += int64(p.AddedPages)
		pids = append(pids, r.PID)
		h.act.mu.Lock()
		live := h.act.live(r.Allocation.Name)
		_, grouped := h.act.groups[r.Allocation.Name]
		h.act.mu.Unlock()
		if !grouped || !slices.Equal(live, []int{r.PID}) {
			t.Errorf("%s: cgroup exists %v with live pids %v, want [%d]", r.Allocation.Name, grouped, live, r.PID)
		}
		fp := h.proc(r.PID)
		if fp == nil {
			t.Errorf("%s: no VMM %d", r.Allocation.Name, r.PID)
			continue
		}
		var want, have []string
		for _, d := range p.Spec.Disks {
			want = append(want, d.ID)
		}
		for _, g := range p.Spec.Segments {
			want = append(want, "region/"+g.Name)
		}
		for _, d := range fp.Devices() {
			if d.ID != "region/"+FICMRegion {
				have = append(have, d.ID)
			}
		}
		sort.Strings(want)
		sort.Strings(have)
		if !slices.Equal(want, have) {
			t.Errorf("%s: record says devices %v, VMM has %v", r.Allocation.Name, want, have)
		}
	}
	for _, a := range s.ledger.Allocations() {
		ledgerNames = append(ledgerNames, a.Name)
	}
	for _, i := range s.List() {
		listed = append(listed, i.Name)
		if i.State != StateRunning {
			t.Errorf("%s is %s", i.Name, i.State)
		}
	}
	sort.Strings(ledgerNames)
	sort.Ints(pids)
	if !slices.Equal(names, ledgerNames) || !slices.Equal(names, listed) {
		t.Errorf("records %v, ledger %v, listed %v", names, ledgerNames, listed)
	}
	if alive := h.alive(); !slices.Equal(alive, pids) {
		t.Errorf("VMMs running %v, recorded %v", alive, pids)
	}
	groups, _ := h.act.Groups()
	if !slices.Equal(groups, names) {
		t.Errorf("cgroups %v, records %v", groups, names)
	}
	h.act.mu.Lock()
	added := h.act.pages
	h.act.mu.Unlock()
	if added != pages {
		t.Errorf("pool has %d pages added, records say %d", added, pages)
	}
	if err := s.ledger.Verify(); err != nil {
		t.Error(err)
	}
}

// recordsIn reads the records of a store file no supervisor holds.
func recordsIn(t *testing.T, dir string) map[string]store.Record {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.Records()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]store.Record{}
	for _, r := range recs {
		out[r.Allocation.Name] = r
	}
	return out
}

func eventsSince(t *testing.T, s *Supervisor, seq uint64) []store.Event {
	t.Helper()
	es, err := s.Events(seq, 0)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func hasEvent(es []store.Event, what, name string) bool {
	return slices.ContainsFunc(es, func(e store.Event) bool { return e.What == what && e.Name == name })
}

// Finding: Create started the VMM (which outlives the supervisor) before
// writing its record, so a crash in between left a VMM, its cgroup and its
// hugepages that the restarted supervisor did not know of.
func TestCrashAfterVMMStart(t *testing.T) {
	h := newFakeHost(t)
	s := h.start(t)
	h.l.afterStart = func() { panic(crashed{"vmm started"}) }
	if step := run(func() { _, _ = s.Create(context.Background(), testSpec(t, "web", 1)) }); step == "" {
		t.Fatal("no crash")
	}
	h.l.afterStart = nil
	crash(s)
	if len(h.alive()) != 1 {
		t.Fatalf("VMMs running after the crash: %v", h.alive())
	}
	s = h.start(t)
	defer s.Close()
	checkConsistent(t, s, h)
	if es := eventsSince(t, s, 0); !hasEvent(es, "rollback", "web") {
		t.Errorf("no rollback event: %+v", es)
	}
	// Its cores are free again.
	if _, err := s.Create(context.Background(), testSpec(t, "web", 3)); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, s, h)
}

// Every step of every operation, crashed at in turn: the successor adopts
// or cleanly undoes, and says so.
func TestCrashAtEveryStep(t *testing.T) {
	ops := map[string]func(t *testing.T, s *Supervisor, disk string){
		"create": func(t *testing.T, s *Supervisor, _ string) {
			_, _ = s.Create(context.Background(), testSpec(t, "new", 1))
		},
		"destroy": func(t *testing.T, s *Supervisor, _ string) { _ = s.Destroy(context.Background(), "web") },
		"attach": func(t *testing.T, s *Supervisor, disk string) {
			_, _ = s.AttachDisk(context.Background(), "web", Disk{Path: disk})
		},
		"detach": func(t *testing.T, s *Supervisor, _ string) {
			_ = s.DetachDisk(context.Background(), "web", "old", 0)
		},
		"grant": func(t *testing.T, s *Supervisor, _ string) {
			_ = s.Grant(context.Background(), "web", SegmentGrant{Name: "seg2", Size: 8192})
		},
		"revoke": func(t *testing.T, s *Supervisor, _ string) { _ = s.Revoke(context.Background(), "web", "seg", 0) },
	}
	for name, op := range ops {
		for n := 1; ; n++ {
			h := newFakeHost(t)
			s := h.start(t)
			disk := filepath.Join(t.TempDir(), "disk.img")
			os.WriteFile(disk, make([]byte, 4096), 0o600)
			old := filepath.Join(t.TempDir(), "old.img")
			os.WriteFile(old, make([]byte, 4096), 0o600)
			spec := testSpec(t, "web", 1)
			spec.Disks = []Disk{{ID: "old", Path: old}}
			spec.Segments = []SegmentGrant{{Name: "seg", Size: 4096}}
			if _, err := s.Create(context.Background(), spec); err != nil {
				t.Fatal(err)
			}
			crashAt(s, n)
			step := run(func() { op(t, s, disk) })
			if step == "" {
				s.Close()
				if n == 1 {
					t.Errorf("%s has no steps", name)
				}
				break
			}
			t.Run(fmt.Sprintf("%s/%d-%s", name, n, step), func(t *testing.T) {
				crash(s)
				before := recordsIn(t, h.dir)
				s := h.start(t)
				defer s.Close()
				checkConsistent(t, s, h)
				es := eventsSince(t, s, 0)
				for nm, r := range before {
					if r.Running() && r.Intent == nil {
						if _, err := s.Get(nm); err != nil {
							t.Errorf("%s, running before the crash, lost: %v", nm, err)
						}
					}
				}
				if _, ok := before["new"]; ok && !hasEvent(es, "rollback", "new") {
					t.Errorf("interrupted create not reported: %+v", es)
				}
				if r, ok := before["web"]; ok && r.Intent != nil && name != "destroy" && !hasEvent(es, "recover", "web") {
					t.Errorf("interrupted %s not reported: %+v", name, es)
				}
				if r, ok := before["web"]; ok && r.Phase == store.PhaseDestroying && !hasEvent(es, "destroy", "web") {
					t.Errorf("interrupted destroy not reported: %+v", es)
				}
			})
		}
	}
}

// Random operation sequences with random crashes: after each operation
// (crashed or not, the supervisor restarted after a crash) the records,
// the ledger and the host agree, and nothing running was lost.
func TestCrashProperty(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	h := newFakeHost(t)
	s := h.start(t)
	defer func() { s.Close() }()
	names := []string{"a", "b", "c"}
	disks := make([]string, 3)
	for i := range disks {
		disks[i] = filepath.Join(t.TempDir(), fmt.Sprintf("d%d.img", i))
		os.WriteFile(disks[i], make([]byte, 4096), 0o600)
	}
	kernel := testSpec(t, "x", 1).Kernel
	const ops = 200
	crashes := 0
	for i := 0; i < ops; i++ {
		name := names[rng.IntN(len(names))]
		ctx := context.Background()
		var desc string
		var op func()
		exit := false
		switch rng.IntN(8) {
		case 7:
			desc, exit = "VMM of "+name+" exits", true
			op = func() {
				info, err := s.Get(name)
				if err != nil || info.State != StateRunning {
					return
				}
				h.l.kill(info.PID)
				for { // the supervisor's watcher reclaims it
					if info, err := s.Get(name); err != nil || info.State == StateExited {
						return
					}
					time.Sleep(time.Millisecond)
				}
			}
		case 0, 1:
			desc = "create " + name
			op = func() { _, _ = s.Create(ctx, Spec{Name: name, CPUs: 1, Memory: 32 << 20, Kernel: kernel}) }
		case 2:
			desc = "destroy " + name
			op = func() { _ = s.Destroy(ctx, name) }
		case 3:
			d := disks[rng.IntN(len(disks))]
			desc = "attach " + d + " to " + name
			op = func() { _, _ = s.AttachDisk(ctx, name, Disk{Path: d}) }
		case 4:
			d := disks[rng.IntN(len(disks))]
			desc = "detach " + d + " from " + name
			op = func() { _ = s.DetachDisk(ctx, name, d, 0) }
		case 5:
			seg := []string{"s1", "s2"}[rng.IntN(2)]
			desc = "grant " + seg + " to " + name
			op = func() { _ = s.Grant(ctx, name, SegmentGrant{Name: seg, Size: 4096}) }
		case 6:
			seg := []string{"s1", "s2"}[rng.IntN(2)]
			desc = "revoke " + seg + " from " + name
			op = func() { _ = s.Revoke(ctx, name, seg, 0) }
		}
		if !exit && rng.IntN(2) == 0 { // (a crash in the watcher would end the test binary)
			crashAt(s, 1+rng.IntN(6))
		}
		step := run(op)
		s.crashPoint = nil
		if step == "" {
			checkConsistent(t, s, h)
			if t.Failed() {
				t.Fatalf("op %d (%s), no crash", i, desc)
			}
			continue
		}
		crashes++
		running := map[string]int{}
		for nm, r := range recordsInAfterCrash(t, s, h) {
			if r.Running() && r.Intent == nil {
				running[nm] = r.PID
			}
		}
		s = h.start(t)
		checkConsistent(t, s, h)
		for nm, pid := range running {
			if info, err := s.Get(nm); err != nil || info.PID != pid {
				t.Errorf("%s (pid %d), running before the crash, lost: %+v %v", nm, pid, info, err)
			}
		}
		if t.Failed() {
			t.Fatalf("op %d (%s), crashed at %s", i, desc, step)
		}
	}
	t.Logf("%d operations, %d crashes", ops, crashes)
}

// recordsInAfterCrash crashes s and returns its records.
func recordsInAfterCrash(t *testing.T, s *Supervisor, h *fakeHost) map[string]store.Record {
	crash(s)
	return recordsIn(t, h.dir)
}

// putRawRecord writes bytes as name's record in the store file in dir.
func putRawRecord(t *testing.T, dir, name string, v []byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "ledger.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(store.RecordsBucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(name), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Finding: one undecodable record made New fail, leaving every subOS
// unmanaged. It is quarantined, verbatim, and the others are managed.
func TestCorruptRecordQuarantined(t *testing.T) {
	h := newFakeHost(t)
	s := h.start(t)
	if _, err := s.Create(context.Background(), testSpec(t, "web", 1)); err != nil {
		t.Fatal(err)
	}
	crash(s)
	// A record that decodes but whose spec does not.
	r := recordsIn(t, h.dir)["web"]
	bad := []byte(`{"allocation": {"name": "db", "cores": [2`)
	putRawRecord(t, h.dir, "db", bad)
	r.Allocation.Name, r.Allocation.Cores, r.Spec = "odd", []int{3}, json.RawMessage(`[1,2]`)
	raw, _ := json.Marshal(r)
	putRawRecord(t, h.dir, "odd", raw)

	s = h.start(t)
	defer s.Close()
	if _, err := s.Get("web"); err != nil {
		t.Fatalf("web not managed: %v", err)
	}
	qs, err := s.Quarantined()
	if err != nil || len(qs) != 2 {
		t.Fatalf("Quarantined = %+v, %v", qs, err)
	}
	byName := map[string]store.Quarantined{}
	for _, q := range qs {
		byName[q.Name] = q
	}
	if q := byName["db"]; string(q.Raw) != string(bad) || !strings.Contains(q.Reason, "corrupt") {
		t.Errorf("db quarantined as %+v", q)
	}
	if q := byName["odd"]; string(q.Raw) != string(raw) || !strings.Contains(q.Reason, "spec") {
		t.Errorf("odd quarantined as %+v", q)
	}
	es := eventsSince(t, s, 0)
	if !hasEvent(es, "quarantine", "db") || !hasEvent(es, "quarantine", "odd") {
		t.Errorf("events: %+v", es)
	}
	checkConsistent(t, s, h)
	// The supervisor still manages: destroy and create work.
	if err := s.Destroy(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(context.Background(), testSpec(t, "web", 3)); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, s, h)
}

// A record the ledger refuses (its cores overlap another's) is quarantined
// and its VMM killed as an orphan, its hugepages given back; the other is
// adopted.
func TestRefusedRecordQuarantined(t *testing.T) {
	h := newFakeHost(t)
	s := h.start(t)
	for _, n := range []string{"a", "b"} {
		if _, err := s.Create(context.Background(), testSpec(t, n, 1)); err != nil {
			t.Fatal(err)
		}
	}
	crash(s)
	recs := recordsIn(t, h.dir)
	b := recs["b"]
	b.Allocation.Cores = recs["a"].Allocation.Cores
	raw, _ := json.Marshal(b)
	putRawRecord(t, h.dir, "b", raw)
	s = h.start(t)
	defer s.Close()
	qs, _ := s.Quarantined()
	if len(qs) != 1 || qs[0].Name != "b" || !strings.Contains(qs[0].Reason, "ledger") {
		t.Fatalf("Quarantined = %+v", qs)
	}
	es := eventsSince(t, s, 0)
	if !hasEvent(es, "quarantine", "b") || !hasEvent(es, "orphan", "b") || !hasEvent(es, "adopt", "a") {
		t.Errorf("events: %+v", es)
	}
	checkConsistent(t, s, h)
}

// A cgroup no record owns is an orphan: what runs there is killed, the
// group removed, and the event names both.
func TestOrphanKilled(t *testing.T) {
	h := newFakeHost(t)
	s := h.start(t)
	if _, err := s.Create(context.Background(), testSpec(t, "web", 1)); err != nil {
		t.Fatal(err)
	}
	info, _ := s.Get("web")
	crash(s)
	st, err := store.Open(filepath.Join(h.dir, "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	st.Delete("web")
	st.Close()
	s = h.start(t)
	defer s.Close()
	es := eventsSince(t, s, 0)
	i := slices.IndexFunc(es, func(e store.Event) bool { return e.What == "orphan" })
	if i < 0 || es[i].Name != "web" || !strings.Contains(es[i].Detail, fmt.Sprint(info.PID)) {
		t.Fatalf("orphan event: %+v", es)
	}
	if len(h.alive()) != 0 {
		t.Errorf("orphan still runs: %v", h.alive())
	}
	groups, _ := h.act.Groups()
	if len(groups) != 0 {
		t.Errorf("orphan cgroup left: %v", groups)
	}
}

// A record written before phases existed is a running subOS.
func TestRecordWithoutPhaseAdopted(t *testing.T) {
	h := newFakeHost(t)
	s := h.start(t)
	if _, err := s.Create(context.Background(), testSpec(t, "web", 1)); err != nil {
		t.Fatal(err)
	}
	crash(s)
	r := recordsIn(t, h.dir)["web"]
	var old map[string]any
	raw, _ := json.Marshal(r)
	json.Unmarshal(raw, &old)
	delete(old, "phase")
	raw, _ = json.Marshal(old)
	putRawRecord(t, h.dir, "web", raw)
	s = h.start(t)
	defer s.Close()
	if info, err := s.Get("web"); err != nil || info.PID != r.PID {
		t.Fatalf("not adopted: %+v %v", info, err)
	}
	checkConsistent(t, s, h)
}
