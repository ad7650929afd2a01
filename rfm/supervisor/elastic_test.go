package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/ledger"
	"rainforest/vmm/virtio/vsock"
)

// fakeGuest is a guest's agent that only changes its online CPUs (and
// sends heartbeats to a watch): it keeps the count, or refuses.
type fakeGuest struct {
	mu     sync.Mutex
	online int
	refuse bool
	// latency, when its Seq is set, goes in a stats report with each
	// heartbeat.
	latency agentproto.LatencySample
}

func (g *fakeGuest) setLatency(l agentproto.LatencySample) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.latency = l
}

func (g *fakeGuest) cpus() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.online
}

func (g *fakeGuest) setRefuse(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refuse = on
}

// serveFakeGuest answers agent connections on a subOS's vsock socket.
func serveFakeGuest(t *testing.T, path string, online int) *fakeGuest {
	t.Helper()
	g := &fakeGuest{online: online}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				g.serve(c)
			}()
		}
	}()
	return g
}

func (g *fakeGuest) serve(c net.Conn) {
	var buf []byte
	one := make([]byte, 1)
	for len(buf) < 32 {
		if _, err := c.Read(one); err != nil {
			return
		}
		if one[0] == '\n' {
			break
		}
		buf = append(buf, one[0])
	}
	if port, err := vsock.ParseConnect(string(buf)); err != nil || port != agentproto.Port {
		return
	}
	c.Write([]byte("OK 1073741824\n"))
	pc := agentproto.NewConn(c)
	if pc.Send(agentproto.NewHello("fake guest")) != nil {
		return
	}
	if m, err := pc.Recv(); err != nil {
		return
	} else if _, ok := m.(*agentproto.Hello); !ok {
		return
	}
	m, err := pc.Recv()
	if err != nil {
		return
	}
	switch m := m.(type) {
	case *agentproto.Watch:
		for seq := uint64(1); ; seq++ {
			if pc.Send(&agentproto.Heartbeat{Seq: seq}) != nil {
				return
			}
			g.mu.Lock()
			lat := g.latency
			g.mu.Unlock()
			if lat.Seq != 0 && pc.Send(&agentproto.Stats{Seq: seq, Latency: &lat}) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	case *agentproto.CPUs:
		g.mu.Lock()
		res := &agentproto.CPUsResult{}
		if g.refuse {
			res.Error = "write cpu1/online: device or resource busy"
		} else {
			g.online = m.Online
		}
		for i := range g.online {
			res.Online = append(res.Online, i)
		}
		g.mu.Unlock()
		pc.Send(res)
	}
}

// elasticHost is a supervisor with subOS a (1 core, room for 3) and b
// (1 core), each with a fake guest.
type elasticHost struct {
	s      *Supervisor
	act    *fakeActuator
	l      *fakeLauncher
	guests map[string]*fakeGuest
}

func newElasticHost(t *testing.T) *elasticHost {
	t.Helper()
	h := &elasticHost{act: &fakeActuator{}, l: &fakeLauncher{}, guests: map[string]*fakeGuest{}}
	h.s = newTestSupervisor(t, t.TempDir(), h.act, h.l)
	t.Cleanup(func() { h.s.Close() })
	a := testSpec(t, "a", 1)
	a.MaxCPUs = 3
	for _, spec := range []Spec{a, testSpec(t, "b", 1)} {
		if _, err := h.s.Create(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		h.guests[spec.Name] = serveFakeGuest(t, h.s.vsockPath(spec.Name), 1)
	}
	return h
}

// cores checks that the ledger, the cgroup, the VMM's first vCPUs and the
// guest agree that name holds want.
func (h *elasticHost) check(t *testing.T, step, name string, want []int) {
	t.Helper()
	info, err := h.s.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.Allocation.Cores, want) {
		t.Errorf("%s: ledger gives %s cores %v, want %v", step, name, info.Allocation.Cores, want)
	}
	h.act.mu.Lock()
	group := slices.Clone(h.act.groups[name])
	h.act.mu.Unlock()
	if !slices.Equal(group, want) {
		t.Errorf("%s: %s's cgroup holds %v, want %v", step, name, group, want)
	}
	pins := h.l.proc(info.PID).VCPUs()
	var pinned []int
	for _, p := range pins[:min(len(want), len(pins))] {
		pinned = append(pinned, p.Core)
	}
	slices.Sort(pinned)
	if !slices.Equal(pinned, want) {
		t.Errorf("%s: %s's vCPUs run on %v, want %v", step, name, pins, want)
	}
	if n := h.guests[name].cpus(); n != len(want) {
		t.Errorf("%s: %s's guest has %d CPUs online, want %d", step, name, n, len(want))
	}
}

func TestResizeCPUs(t *testing.T) {
	h := newElasticHost(t)
	ctx := context.Background()
	info, _ := h.s.Get("a")
	if info.Spec.MaxCPUs != 3 || h.l.proc(info.PID).doc.MaxVCPUs != 3 {
		t.Fatalf("a's max_cpus %d, its VMM's max_vcpus %d; want 3", info.Spec.MaxCPUs, h.l.proc(info.PID).doc.MaxVCPUs)
	}
	if b, _ := h.s.Get("b"); b.Spec.MaxCPUs != 3 {
		t.Errorf("b's default max_cpus is %d, want 3 (every core but the housekeeping one)", b.Spec.MaxCPUs)
	}
	h.check(t, "created", "a", info.Allocation.Cores)
	if _, err := h.s.ResizeCPUs(ctx, "a", 2); err != nil {
		t.Fatal(err)
	}
	grown, _ := h.s.Get("a")
	if len(grown.Allocation.Cores) != 2 || !slices.Contains(grown.Allocation.Cores, info.Allocation.Cores[0]) {
		t.Fatalf("grown to %v", grown.Allocation.Cores)
	}
	h.check(t, "grown", "a", grown.Allocation.Cores)
	// The record follows: a restarted supervisor knows the new size.
	recs, _ := h.s.store.Records()
	for _, r := range recs {
		if r.Allocation.Name == "a" && (!slices.Equal(r.Allocation.Cores, grown.Allocation.Cores) || r.Intent != nil) {
			t.Errorf("record of a: cores %v intent %s", r.Allocation.Cores, r.Intent)
		}
	}

	// Refusals change nothing.
	before := h.s.ledger.Allocations()
	for _, c := range []struct {
		n    int
		want error
		says string
	}{{4, ErrInvalid, "max_cpus"}, {0, ErrInvalid, "at least one"}} {
		if _, err := h.s.ResizeCPUs(ctx, "a", c.n); !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("resize to %d: %v, want %v saying %q", c.n, err, c.want, c.says)
		}
	}
	if _, err := h.s.ResizeCPUs(ctx, "nope", 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("resize of no subOS: %v", err)
	}
	// a and b hold the three cores there are: a cannot grow past the
	// free pool.
	if _, err := h.s.ResizeCPUs(ctx, "a", 3); !errors.Is(err, ledger.ErrNoCores) {
		t.Errorf("resize beyond the free pool: %v", err)
	}
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("refused resizes changed the ledger:\n%+v\n%+v", before, after)
	}
	h.check(t, "refused", "a", grown.Allocation.Cores)

	// A guest that refuses: everything as it was.
	h.guests["a"].setRefuse(true)
	if _, err := h.s.ResizeCPUs(ctx, "a", 1); !errors.Is(err, ErrGuestRefused) || !strings.Contains(err.Error(), "busy") {
		t.Errorf("shrink refused by the guest: %v", err)
	}
	h.guests["a"].setRefuse(false)
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("a refused shrink changed the ledger:\n%+v\n%+v", before, after)
	}
	h.check(t, "guest refused", "a", grown.Allocation.Cores)

	// A cgroup that refuses: everything as it was.
	h.act.mu.Lock()
	h.act.failOn = "setcores"
	h.act.mu.Unlock()
	if _, err := h.s.ResizeCPUs(ctx, "a", 1); err == nil {
		t.Error("shrink with the cgroup refusing succeeded")
	}
	h.act.mu.Lock()
	h.act.failOn = ""
	h.act.mu.Unlock()
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("a refused shrink changed the ledger:\n%+v\n%+v", before, after)
	}
	h.check(t, "cgroup refused", "a", grown.Allocation.Cores)

	if _, err := h.s.ResizeCPUs(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	h.check(t, "shrunk", "a", info.Allocation.Cores)
	var whats []string
	ev, _ := h.s.Events(0, 100)
	for _, e := range ev {
		if e.Name == "a" && strings.HasPrefix(e.What, "resize") {
			whats = append(whats, e.What+": "+e.Detail)
		}
	}
	if len(whats) != 4 || !strings.Contains(whats[0], "cpus 1 -> 2") {
		t.Errorf("resize events of a: %q", whats)
	}
}

func TestLendReturn(t *testing.T) {
	h := newElasticHost(t)
	ctx := context.Background()
	if _, err := h.s.ResizeCPUs(ctx, "a", 2); err != nil {
		t.Fatal(err)
	}
	a0, _ := h.s.Get("a")
	b0, _ := h.s.Get("b")
	if _, err := h.s.Lend(ctx, LendRequest{From: "b", To: "a", CPUs: 1}); !errors.Is(err, ledger.ErrInsufficient) {
		t.Errorf("lending b's only core: %v", err)
	}
	loan, err := h.s.Lend(ctx, LendRequest{From: "a", To: "b", CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if loan.Lender != "a" || loan.Borrower != "b" || len(loan.Cores) != 1 {
		t.Fatalf("loan %+v", loan)
	}
	lent := loan.Cores[0]
	h.check(t, "lent", "a", slices.DeleteFunc(slices.Clone(a0.Allocation.Cores), func(c int) bool { return c == lent }))
	h.check(t, "lent", "b", slices.Sorted(slices.Values(append(slices.Clone(b0.Allocation.Cores), lent))))
	a1, _ := h.s.Get("a")
	b1, _ := h.s.Get("b")
	if len(a1.Allocation.Lent) != 1 || len(b1.Allocation.Borrowed) != 1 || !reflect.DeepEqual(h.s.Loans(), []ledger.Loan{loan}) {
		t.Errorf("the loan is not on both sides: lent %+v borrowed %+v loans %+v", a1.Allocation.Lent, b1.Allocation.Borrowed, h.s.Loans())
	}
	if err := h.s.Return(ctx, ReturnRequest{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("return of nothing: %v", err)
	}
	if err := h.s.Return(ctx, ReturnRequest{ID: 99}); !errors.Is(err, ledger.ErrNoLoan) {
		t.Errorf("return of no loan: %v", err)
	}
	if err := h.s.Return(ctx, ReturnRequest{ID: loan.ID}); err != nil {
		t.Fatal(err)
	}
	h.check(t, "returned", "a", a0.Allocation.Cores)
	h.check(t, "returned", "b", b0.Allocation.Cores)
	if l := h.s.Loans(); len(l) != 0 {
		t.Errorf("loans after the return: %+v", l)
	}

	// A borrower destroyed gives its loan back to the lender, on the host.
	if _, err := h.s.Lend(ctx, LendRequest{From: "a", To: "b", CPUs: 1}); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	h.check(t, "borrower destroyed", "a", a0.Allocation.Cores)
	if err := h.s.ledger.Verify(); err != nil {
		t.Error(err)
	}
}

// A supervisor killed in the middle of a core change puts the subOS back
// on the cores of its record when it starts again.
func TestCoreChangeCrash(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	spec := testSpec(t, "a", 1)
	spec.MaxCPUs = 2
	if _, err := s.Create(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	g := serveFakeGuest(t, s.vsockPath("a"), 1)
	info, _ := s.Get("a")
	// Crash once the intent is written, as the host starts to change.
	crashAt(s, 1)
	if step := run(func() { s.ResizeCPUs(context.Background(), "a", 2) }); step != "cores:a" {
		t.Fatalf("crashed at %q", step)
	}
	// The crash left an intent; the host is half-way (simulate the steps
	// made: the cgroup and the vCPUs moved, the guest onlined a CPU).
	grown := []int{info.Allocation.Cores[0], 3}
	act.SetCores("a", grown)
	l.proc(info.PID).SetCPUs(grown)
	g.mu.Lock()
	g.online = 2
	g.mu.Unlock()
	s.crashPoint = nil
	s.Close()
	s2 := newTestSupervisor(t, dir, act, l)
	defer s2.Close()
	h := &elasticHost{s: s2, act: act, l: l, guests: map[string]*fakeGuest{"a": g}}
	h.check(t, "after the restart", "a", info.Allocation.Cores)
	recs, _ := s2.store.Records()
	if len(recs) != 1 || recs[0].Intent != nil {
		t.Errorf("records after settling: %+v", recs)
	}
}

func (l *fakeLauncher) proc(pid int) *fakeProcess {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.procs[pid]
}
