package autoscale

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"rainforest/ledger"
	"rainforest/partitioner"
)

const ms = time.Millisecond

var t0 = time.Unix(1_700_000_000, 0).UTC()

// machine is a ledger of 16 single-thread cores on one node (cpu 0 is
// housekeeping) with: "web", latency-critical, 2 cores; "b1", batch, 5
// cores; "b2", batch, 3 cores.
func machine(t *testing.T) *ledger.Ledger {
	t.Helper()
	inv := &partitioner.Inventory{Nodes: []partitioner.Node{{ID: 0, HugePages: []partitioner.HugePool{{PageSize: ledger.PageSize2M, Total: 1000}}}}}
	for i := range 16 {
		inv.CPUs = append(inv.CPUs, partitioner.CPU{ID: i, Online: true, Siblings: []int{i}})
	}
	l, err := ledger.New(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []ledger.Request{
		{Name: "web", CPUs: 2, Class: ledger.LatencyCritical},
		{Name: "b1", CPUs: 5},
		{Name: "b2", CPUs: 3},
	} {
		r.Node, r.Memory, r.PageSize = -1, 8<<20, ledger.PageSize2M
		if _, err := l.Reserve(r); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// apply carries a decision out on the ledger, as the supervisor would.
func apply(t *testing.T, l *ledger.Ledger, d Decision) {
	t.Helper()
	var err error
	switch d.Action {
	case Grow:
		_, err = l.Preempt(d.To, d.From, 1)
	case Shrink:
		_, err = l.Return(ledger.ReturnRequest{ID: d.Loan, CPUs: 1})
	}
	if err != nil {
		t.Fatalf("applying %+v: %v", d, err)
	}
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
}

// run feeds a trace, one sample a second for secs seconds (trace returns
// false for no sample), steps the controller every second, applies its
// moves and returns them.
func run(t *testing.T, c *Controller, l *ledger.Ledger, start time.Time, secs int, trace func(sec int) (time.Duration, bool)) (moves []Decision, last []Decision) {
	t.Helper()
	for s := range secs {
		now := start.Add(time.Duration(s) * time.Second)
		if p99, ok := trace(s); ok {
			c.Observe(Sample{SubOS: "web", Time: now, P99: p99})
		}
		last = c.Step(now, l.Allocations())
		for _, d := range last {
			if d.Moves() {
				apply(t, l, d)
				moves = append(moves, d)
			}
		}
	}
	return moves, last
}

func controller(t *testing.T, tg Target, donorMin map[string]int) *Controller {
	t.Helper()
	c, err := NewController(Config{Targets: []Target{tg}, DonorMinCores: donorMin})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func webTarget() Target {
	return Target{Name: "web", Lower: 20 * ms, Upper: 100 * ms, MaxCores: 6}
}

func cores(l *ledger.Ledger, name string) int {
	a, _ := l.Get(name)
	return len(a.Cores)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Targets: []Target{{Name: "web", Lower: 200 * ms, Upper: 100 * ms}}}, `target "web": lower threshold (lt) 200ms must be below the upper (ut) 100ms`},
		{Config{Targets: []Target{{Name: "web", Lower: 100 * ms, Upper: 100 * ms}}}, "must be below the upper"},
		{Config{Targets: []Target{{Name: "web", Lower: ms, Upper: 2 * ms, MinCores: 4, MaxCores: 2}}}, "min_cores (4) <= max_cores (2)"},
		{Config{Targets: []Target{{Name: "web", Lower: ms, Upper: 2 * ms, Quorum: 0.5}}}, "quorum 0.5"},
		{Config{Targets: []Target{{Name: "web", Lower: ms, Upper: 2 * ms}, {Name: "web", Lower: ms, Upper: 2 * ms}}}, "listed twice"},
		{Config{Targets: []Target{{Name: "Web!", Lower: ms, Upper: 2 * ms}}}, "not a valid subOS name"},
		{Config{DonorMinCores: map[string]int{"b1": 0}}, `donor "b1"`},
	} {
		_, err := NewController(tc.cfg)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewController(%+v) = %v, want ErrConfig saying %q", tc.cfg, err, tc.want)
		}
	}
	if err := (Config{Targets: []Target{webTarget()}}).Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}

func TestStepUpThenDown(t *testing.T) {
	l := machine(t)
	c := controller(t, webTarget(), nil)
	// 30 s within the band, then 300 ms for 60 s.
	moves, _ := run(t, c, l, t0, 90, func(s int) (time.Duration, bool) {
		if s < 30 {
			return 50 * ms, true
		}
		return 300 * ms, true
	})
	if len(moves) == 0 {
		t.Fatal("no move on a step up")
	}
	first := moves[0]
	// The window must fill to the quorum with high samples: 30 s + 8 s
	// (8 of 10 samples above ut >= 0.75) at the earliest.
	if first.Action != Grow || first.From != "b1" || first.To != "web" || first.Latency != 300*ms || first.Time.Before(t0.Add(37*time.Second)) {
		t.Errorf("first move %+v", first)
	}
	for i := 1; i < len(moves); i++ {
		if gap := moves[i].Time.Sub(moves[i-1].Time); gap < 10*time.Second {
			t.Errorf("moves %v apart, within the cooldown", gap)
		}
	}
	if got := cores(l, "web"); got != 2+len(moves) || got > 6 {
		t.Errorf("web holds %d cores after %d grows", got, len(moves))
	}
	// The donor is the batch subOS with most cores above its minimum (1):
	// b1 (4 spare), b1 (3), b1 (2, a tie with b2 broken by name), b2 (2);
	// then web holds its maximum of 6.
	var donors []string
	for _, m := range moves {
		donors = append(donors, m.From)
	}
	if !slices.Equal(donors, []string{"b1", "b1", "b1", "b2"}) {
		t.Errorf("donors %v", donors)
	}
	grown := len(moves)

	// Step down: 5 ms; every borrowed core goes back, one per cooldown,
	// preempted loans most recent first.
	moves, last := run(t, c, l, t0.Add(90*time.Second), 120, func(int) (time.Duration, bool) { return 5 * ms, true })
	if len(moves) != grown {
		t.Fatalf("%d shrinks after %d grows: %+v", len(moves), grown, moves)
	}
	for _, d := range moves {
		if d.Action != Shrink || d.From != "web" || (d.To != "b1" && d.To != "b2") || d.Latency != 5*ms {
			t.Errorf("shrink %+v", d)
		}
	}
	if cores(l, "web") != 2 || cores(l, "b1") != 5 || cores(l, "b2") != 3 {
		t.Errorf("after the step down: web %d, b1 %d, b2 %d", cores(l, "web"), cores(l, "b1"), cores(l, "b2"))
	}
	if !strings.Contains(last[0].Reason, "no borrowed core to give back") {
		t.Errorf("last reason %q", last[0].Reason)
	}
}

func TestNoiseDoesNotFlap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, centre := range []time.Duration{100 * ms, 20 * ms} { // around ut, around lt
		l := machine(t)
		for range 3 { // something to give back
			if _, err := l.Preempt("web", "b1", 1); err != nil {
				t.Fatal(err)
			}
		}
		c := controller(t, Target{Name: "web", Lower: 20 * ms, Upper: 100 * ms, MaxCores: 8}, nil)
		moves, _ := run(t, c, l, t0, 300, func(int) (time.Duration, bool) {
			// Symmetric noise of +-10% around the threshold.
			return centre + time.Duration(rng.IntN(21)-10)*centre/100, true
		})
		for i, m := range moves {
			if i > 0 && m.Action != moves[0].Action {
				t.Errorf("noise around %v flapped: %+v", centre, moves)
			}
			if i > 0 && m.Time.Sub(moves[i-1].Time) < 10*time.Second {
				t.Errorf("noise around %v: moves within the cooldown: %+v", centre, moves)
			}
		}
		if len(moves) > 5 {
			t.Errorf("noise around %v: %d moves in 300 s", centre, len(moves))
		}
		t.Logf("noise around %v: %d moves in 300 s", centre, len(moves))
	}
}

func TestSpikesDoNotMove(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	l := machine(t)
	if _, err := l.Preempt("web", "b1", 1); err != nil {
		t.Fatal(err)
	}
	c := controller(t, webTarget(), nil)
	// In band, with one sample in four a spike above ut or a dip below lt.
	moves, _ := run(t, c, l, t0, 300, func(int) (time.Duration, bool) {
		switch rng.IntN(8) {
		case 0:
			return 500 * ms, true
		case 1:
			return ms, true
		}
		return 50 * ms, true
	})
	if len(moves) != 0 {
		t.Errorf("spikes moved cores: %+v", moves)
	}
	// Nor does a short burst, half a window of high latency.
	moves, _ = run(t, c, l, t0.Add(300*time.Second), 30, func(s int) (time.Duration, bool) {
		if s >= 10 && s < 15 {
			return 500 * ms, true
		}
		return 50 * ms, true
	})
	if len(moves) != 0 {
		t.Errorf("a 5 s burst moved cores: %+v", moves)
	}
}

func TestNoisyStepUpStillMoves(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	l := machine(t)
	c := controller(t, webTarget(), nil)
	// 250 ms +- 150 ms with one sample in ten an outlier at 1 ms.
	moves, _ := run(t, c, l, t0, 40, func(int) (time.Duration, bool) {
		if rng.IntN(10) == 0 {
			return ms, true
		}
		return 100*ms + time.Duration(rng.IntN(300))*ms, true
	})
	if len(moves) == 0 || moves[0].Action != Grow {
		t.Errorf("noisy high latency: moves %+v", moves)
	}
}

func TestMissingAndStaleSamples(t *testing.T) {
	l := machine(t)
	c := controller(t, webTarget(), nil)
	// No sample at all.
	_, last := run(t, c, l, t0, 5, func(int) (time.Duration, bool) { return 0, false })
	if d := last[0]; d.Moves() || !strings.Contains(d.Reason, "no latency sample in the last 10s") {
		t.Errorf("no samples: %+v", d)
	}
	// Two samples: fewer than needed.
	c = controller(t, webTarget(), nil)
	_, last = run(t, c, l, t0, 10, func(s int) (time.Duration, bool) { return 500 * ms, s >= 8 })
	if d := last[0]; d.Moves() || !strings.Contains(d.Reason, "only 2 latency samples") {
		t.Errorf("too few samples: %+v", d)
	}
	// Three samples a second apart: enough, but they cover 2 s of 10.
	c = controller(t, webTarget(), nil)
	_, last = run(t, c, l, t0, 10, func(s int) (time.Duration, bool) { return 500 * ms, s >= 7 })
	if d := last[0]; d.Moves() || !strings.Contains(d.Reason, "samples cover 2s of the 10s window") {
		t.Errorf("too few samples: %+v", d)
	}
	// High latency, then the source stops: once the window holds none,
	// nothing moves and the reason says so; old samples do not count.
	c = controller(t, Target{Name: "web", Lower: 20 * ms, Upper: 100 * ms, Cooldown: time.Second}, nil)
	moves, last := run(t, c, l, t0, 40, func(s int) (time.Duration, bool) { return 500 * ms, s < 10 })
	if d := last[0]; d.Moves() || !strings.Contains(d.Reason, "missing or stale") {
		t.Errorf("stale source: %+v", d)
	}
	for _, m := range moves {
		if m.Time.After(t0.Add(10 * time.Second)) {
			t.Errorf("moved on stale samples: %+v", m)
		}
	}
	// Samples from the future, of other subOSes, or negative do not count.
	d := Decide(t0, webTarget(), []Sample{
		{SubOS: "web", Time: t0.Add(time.Second), P99: time.Second},
		{SubOS: "b1", Time: t0, P99: time.Second},
		{SubOS: "web", Time: t0, P99: -time.Second},
	}, l.Allocations(), time.Time{}, nil)
	if d.Moves() || d.Samples != 0 {
		t.Errorf("ignored samples counted: %+v", d)
	}
}

func TestBounds(t *testing.T) {
	l := machine(t)
	c := controller(t, Target{Name: "web", Lower: 20 * ms, Upper: 100 * ms, MaxCores: 3}, nil)
	moves, last := run(t, c, l, t0, 60, func(int) (time.Duration, bool) { return 300 * ms, true })
	if len(moves) != 1 || cores(l, "web") != 3 || !strings.Contains(last[0].Reason, "holds its maximum of 3 cores") {
		t.Errorf("max: %d moves, web %d cores, last %q", len(moves), cores(l, "web"), last[0].Reason)
	}
	c = controller(t, Target{Name: "web", Lower: 20 * ms, Upper: 100 * ms, MinCores: 3}, nil)
	moves, last = run(t, c, l, t0.Add(time.Minute), 60, func(int) (time.Duration, bool) { return 5 * ms, true })
	if len(moves) != 0 || !strings.Contains(last[0].Reason, "holds its minimum of 3 cores") {
		t.Errorf("min: moves %+v, last %q", moves, last[0].Reason)
	}
}

func TestNoDonor(t *testing.T) {
	l := machine(t)
	c := controller(t, webTarget(), map[string]int{"b1": 5, "b2": 3})
	moves, last := run(t, c, l, t0, 30, func(int) (time.Duration, bool) { return 300 * ms, true })
	if len(moves) != 0 || !strings.Contains(last[0].Reason, "no batch subOS has a core above its minimum") || last[0].Latency != 300*ms {
		t.Errorf("no donor: moves %+v, last %+v", moves, last[0])
	}
	// b2 may give one: it is the donor though b1 holds more.
	c = controller(t, webTarget(), map[string]int{"b1": 5, "b2": 2})
	moves, _ = run(t, c, l, t0.Add(time.Minute), 30, func(int) (time.Duration, bool) { return 300 * ms, true })
	if len(moves) != 1 || moves[0].From != "b2" {
		t.Errorf("one spare core on b2: moves %+v", moves)
	}
}

func TestTwoTargetsShareDonors(t *testing.T) {
	l := machine(t)
	if _, err := l.Reserve(ledger.Request{Name: "api", CPUs: 1, Node: -1, Memory: 8 << 20, PageSize: ledger.PageSize2M, Class: ledger.LatencyCritical}); err != nil {
		t.Fatal(err)
	}
	c, err := NewController(Config{
		Targets:       []Target{{Name: "web", Lower: ms, Upper: 2 * ms}, {Name: "api", Lower: ms, Upper: 2 * ms}},
		DonorMinCores: map[string]int{"b1": 5, "b2": 2}, // one spare core in all
	})
	if err != nil {
		t.Fatal(err)
	}
	for s := range 6 {
		for _, n := range []string{"web", "api"} {
			c.Observe(Sample{SubOS: n, Time: t0.Add(time.Duration(s) * time.Second), P99: time.Second})
		}
	}
	ds := c.Step(t0.Add(5*time.Second), l.Allocations())
	if len(ds) != 2 || ds[0].Target != "api" || ds[0].Action != Grow || ds[1].Action != Hold {
		t.Fatalf("decisions %+v", ds)
	}
	for _, d := range ds {
		apply(t, l, d)
	}
}
