package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/ledger"
	"rainforest/ledger/store"
)

// handClock is a clock tests move by hand.
type handClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *handClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *handClock) add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// newAutoscaleHost is a supervisor with latency-critical subOS lc (1 core,
// up to 3, autoscale lower 5ms upper 20ms window 10s) and batch subOS
// batch (2 cores), each with a fake guest. Its autoscaler loop is
// stopped: tests step it by hand on clock.
func newAutoscaleHost(t *testing.T) (*elasticHost, *handClock) {
	t.Helper()
	h := &elasticHost{act: &fakeActuator{}, l: &fakeLauncher{}, guests: map[string]*fakeGuest{}}
	h.s = newTestSupervisor(t, t.TempDir(), h.act, h.l)
	t.Cleanup(func() { h.s.Close() })
	h.s.stopAutoscaler()
	clock := &handClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	h.s.cfg.Now = clock.now
	lc := testSpec(t, "lc", 1)
	lc.MaxCPUs, lc.Class = 3, ledger.LatencyCritical
	lc.Autoscale = &AutoscaleSpec{Lower: Duration(5 * time.Millisecond), Upper: Duration(20 * time.Millisecond), Window: Duration(10 * time.Second)}
	batch := testSpec(t, "batch", 2)
	for _, spec := range []Spec{lc, batch} {
		info, err := h.s.Create(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		h.guests[spec.Name] = serveFakeGuest(t, h.s.vsockPath(spec.Name), len(info.Allocation.Cores))
	}
	return h, clock
}

// feed reports p99 for lc once a second for n seconds, stepping the
// autoscaler after each.
func feed(t *testing.T, h *elasticHost, clock *handClock, p99 time.Duration, n int) {
	t.Helper()
	for range n {
		now := clock.add(time.Second)
		if err := h.s.ReportLatency(context.Background(), "lc", p99); err != nil {
			t.Fatal(err)
		}
		h.s.autoscaleStep(context.Background(), now)
	}
}

func autoscaleEvents(t *testing.T, s *Supervisor) []store.Event {
	t.Helper()
	evs, err := s.Events(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Event
	for _, e := range evs {
		if strings.HasPrefix(e.What, "autoscale") && e.What != "autoscale-config" {
			out = append(out, e)
		}
	}
	return out
}

// Latency above upper for a window moves one core from the batch subOS;
// below lower, it goes back. Ledger, cgroups, vCPUs and guests agree, and
// each move is an event naming the latency.
func TestAutoscaleGrowAndShrink(t *testing.T) {
	h, clock := newAutoscaleHost(t)
	lc0, _ := h.s.Get("lc")
	batch0, _ := h.s.Get("batch")
	if lc0.Allocation.Class != ledger.LatencyCritical || batch0.Allocation.Class != ledger.Batch {
		t.Fatalf("classes %q and %q", lc0.Allocation.Class, batch0.Allocation.Class)
	}
	feed(t, h, clock, 25*time.Millisecond, 3)
	if evs := autoscaleEvents(t, h.s); len(evs) != 0 {
		t.Fatalf("moved before the window was covered: %+v", evs)
	}
	feed(t, h, clock, 25*time.Millisecond, 7)
	evs := autoscaleEvents(t, h.s)
	if len(evs) != 1 || evs[0].What != "autoscale" || evs[0].Name != "lc" ||
		!strings.Contains(evs[0].Detail, "p99 25ms > upper 20ms over 10s") || !strings.Contains(evs[0].Detail, "1 core from batch to lc") {
		t.Fatalf("events after high latency: %+v", evs)
	}
	lc, _ := h.s.Get("lc")
	batch, _ := h.s.Get("batch")
	if len(lc.Allocation.Cores) != 2 || len(batch.Allocation.Cores) != 1 {
		t.Fatalf("after growing: lc %v, batch %v", lc.Allocation.Cores, batch.Allocation.Cores)
	}
	h.check(t, "grown", "lc", lc.Allocation.Cores)
	h.check(t, "grown", "batch", batch.Allocation.Cores)
	if lc.AutoscaleLast == nil || lc.AutoscaleLast.Target != "lc" || lc.AutoscaleLast.Reason == "" {
		t.Errorf("autoscale_last = %+v", lc.AutoscaleLast)
	}
	if len(lc.Allocation.Borrowed) != 1 || lc.Allocation.Borrowed[0].Kind != ledger.KindPreempt {
		t.Errorf("lc borrowed %+v, want one preempt loan", lc.Allocation.Borrowed)
	}

	// Low latency: after the cooldown the borrowed core goes back.
	feed(t, h, clock, time.Millisecond, 12)
	evs = autoscaleEvents(t, h.s)
	if len(evs) != 2 || !strings.Contains(evs[1].Detail, "p99 1ms < lower 5ms") || !strings.Contains(evs[1].Detail, "back to batch") {
		t.Fatalf("events after low latency: %+v", evs)
	}
	h.check(t, "shrunk", "lc", lc0.Allocation.Cores)
	h.check(t, "shrunk", "batch", batch0.Allocation.Cores)

	// At its minimum, low latency moves nothing more.
	feed(t, h, clock, time.Millisecond, 12)
	if evs := autoscaleEvents(t, h.s); len(evs) != 2 {
		t.Errorf("moved below its minimum: %+v", evs[2:])
	}
}

// A move the guest refuses is undone and recorded as autoscale-failed.
func TestAutoscaleMoveFails(t *testing.T) {
	h, clock := newAutoscaleHost(t)
	h.guests["batch"].setRefuse(true)
	feed(t, h, clock, 30*time.Millisecond, 10)
	evs := autoscaleEvents(t, h.s)
	if len(evs) != 1 || evs[0].What != "autoscale-failed" || !strings.Contains(evs[0].Detail, "p99 30ms > upper 20ms") {
		t.Fatalf("events: %+v", evs)
	}
	lc, _ := h.s.Get("lc")
	batch, _ := h.s.Get("batch")
	h.check(t, "refused", "lc", lc.Allocation.Cores)
	h.check(t, "refused", "batch", batch.Allocation.Cores)
	if len(lc.Allocation.Cores) != 1 || len(batch.Allocation.Cores) != 2 {
		t.Errorf("after a refused move: lc %v, batch %v", lc.Allocation.Cores, batch.Allocation.Cores)
	}
}

// The agent's stats reports carry the guest's latency: each new sample
// (by its seq) becomes one, dated by its age.
func TestAutoscaleAgentLatency(t *testing.T) {
	h, clock := newAutoscaleHost(t)
	h.guests["lc"].setLatency(agentproto.LatencySample{Seq: 1, P99US: 25000, AgeMS: 500})
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.s.auto.mu.Lock()
		n := len(h.s.auto.pending)
		var got []time.Duration
		for _, x := range h.s.auto.pending {
			got = append(got, x.P99)
			if !x.Time.Equal(clock.now().Add(-500 * time.Millisecond)) {
				t.Errorf("sample time %v, want the clock less its age", x.Time)
			}
		}
		h.s.auto.mu.Unlock()
		if n >= 1 {
			if n != 1 || got[0] != 25*time.Millisecond {
				t.Fatalf("samples %v, want one of 25ms (a repeated seq is not a new sample)", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no latency sample from the agent")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Several reports repeat seq 1; none adds a sample.
	time.Sleep(200 * time.Millisecond)
	h.s.auto.mu.Lock()
	n := len(h.s.auto.pending)
	h.s.auto.mu.Unlock()
	if n != 1 {
		t.Errorf("%d samples after repeated reports, want 1", n)
	}
}

// The loop the supervisor owns steps at each tick.
func TestAutoscaleLoop(t *testing.T) {
	h, clock := newAutoscaleHost(t)
	ticks := make(chan time.Time)
	h.s.cfg.AutoscaleTicks = ticks
	h.s.startAutoscaler()
	for range 10 {
		clock.add(time.Second)
		if err := h.s.ReportLatency(context.Background(), "lc", 40*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		ticks <- time.Time{}
	}
	ticks <- time.Time{} // the tenth step is done once the loop takes another
	if evs := autoscaleEvents(t, h.s); len(evs) != 1 || !strings.Contains(evs[0].Detail, "p99 40ms") {
		t.Fatalf("events: %+v", evs)
	}
}

// lt >= ut, or autoscale on a batch subOS, is refused with the field
// named, at create (nothing created) and at SetAutoscale.
func TestAutoscaleRefused(t *testing.T) {
	h, _ := newAutoscaleHost(t)
	ctx := context.Background()
	bad := testSpec(t, "bad", 1)
	bad.Class = ledger.LatencyCritical
	bad.Autoscale = &AutoscaleSpec{Lower: Duration(20 * time.Millisecond), Upper: Duration(5 * time.Millisecond)}
	var pe *ProblemsError
	for _, probs := range [][]ledger.Problem{field(h.s.Check(bad), "autoscale"), problemsOf(h.s.Create(ctx, bad))} {
		if len(probs) != 1 || probs[0].Field != "autoscale" || !strings.Contains(probs[0].Message, "lower threshold (lt) 20ms must be below the upper (ut) 5ms") {
			t.Errorf("lt >= ut: %+v", probs)
		}
	}
	if _, err := h.s.Get("bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused subOS exists: %v", err)
	}
	batchy := testSpec(t, "batchy", 1)
	batchy.Autoscale = &AutoscaleSpec{Lower: Duration(5 * time.Millisecond), Upper: Duration(20 * time.Millisecond)}
	if probs := problemsOf(h.s.Create(ctx, batchy)); len(probs) != 1 || probs[0].Field != "autoscale" || !strings.Contains(probs[0].Message, "only a latency-critical subOS autoscales") {
		t.Errorf("batch with autoscale: %+v", probs)
	}
	_, err := h.s.SetAutoscale(ctx, "batch", &AutoscaleSpec{Lower: Duration(5 * time.Millisecond), Upper: Duration(20 * time.Millisecond)})
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "only a latency-critical subOS autoscales") {
		t.Errorf("SetAutoscale on batch: %v", err)
	}
	_, err = h.s.SetAutoscale(ctx, "lc", &AutoscaleSpec{Lower: Duration(5 * time.Millisecond), Upper: Duration(5 * time.Millisecond)})
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "lower threshold") {
		t.Errorf("SetAutoscale lt == ut: %v", err)
	}
	if err := h.s.ReportLatency(ctx, "none", time.Millisecond); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReportLatency of an unknown subOS: %v", err)
	}
}

func field(probs []ledger.Problem, name string) []ledger.Problem {
	var out []ledger.Problem
	for _, p := range probs {
		if p.Field == name {
			out = append(out, p)
		}
	}
	return out
}

func problemsOf(_ Info, err error) []ledger.Problem {
	var pe *ProblemsError
	if errors.As(err, &pe) {
		return pe.Problems
	}
	return nil
}

// SetAutoscale changes and clears the policy; it is kept in the record,
// and the spec's JSON writes durations as strings.
func TestSetAutoscalePersisted(t *testing.T) {
	h, _ := newAutoscaleHost(t)
	ctx := context.Background()
	want := &AutoscaleSpec{Lower: Duration(2 * time.Millisecond), Upper: Duration(8 * time.Millisecond), MaxCPUs: 2}
	info, err := h.s.SetAutoscale(ctx, "lc", want)
	if err != nil || info.Spec.Autoscale == nil || *info.Spec.Autoscale != *want {
		t.Fatalf("SetAutoscale = %+v, %v", info.Spec.Autoscale, err)
	}
	recs, err := h.s.store.Records()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Allocation.Name != "lc" {
			continue
		}
		var p persisted
		if err := json.Unmarshal(r.Spec, &p); err != nil {
			t.Fatal(err)
		}
		found = p.Spec.Autoscale != nil && *p.Spec.Autoscale == *want && p.Spec.Class == ledger.LatencyCritical
		if !strings.Contains(string(r.Spec), `"lower":"2ms"`) {
			t.Errorf("record spec %s: durations not strings", r.Spec)
		}
	}
	if !found {
		t.Error("the record does not keep the policy")
	}
	if info, err := h.s.SetAutoscale(ctx, "lc", nil); err != nil || info.Spec.Autoscale != nil {
		t.Errorf("SetAutoscale(nil) = %+v, %v", info.Spec.Autoscale, err)
	}
}
