// Package autoscale is the tail-latency policy that moves cores toward a
// latency-critical subOS: when its p99 stays above an upper threshold, one
// core moves to it from a batch subOS; when it stays below a lower one,
// one borrowed core goes back to its lender.
//
// The policy is a pure function (Decide) of time-stamped latency samples,
// the ledger's allocations and the time, which the caller passes in. A
// Controller keeps the samples and the time of each target's last move
// between steps; it starts no goroutine. Neither applies a decision: the
// caller preempts (ledger.Preempt) or returns (ledger.Return) the core.
//
// Hysteresis comes from four rules: the thresholds are a band (lt < ut),
// so latency near one threshold never crosses the other; a move needs a
// quorum (by default three quarters) of the window's samples past a
// threshold, so isolated spikes move nothing; the samples must cover at
// least half the window; and after a move a target waits a cooldown (by
// default a window), its older samples no longer counting, as they
// describe the old size. Latency that hovers at a threshold can still
// move a core now and then, at most one per cooldown and always the same
// way: it never makes cores flap back and forth.
//
// A stale or missing source (no sample in the window) moves nothing; the
// decision's reason says so.
package autoscale

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"rainforest/ledger"
)

// Defaults.
const (
	DefaultWindow     = 10 * time.Second
	DefaultQuorum     = 0.75
	DefaultMinSamples = 3
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid autoscaler configuration")

// Target is the policy of one latency-critical subOS.
type Target struct {
	Name  string        `json:"name"`
	Lower time.Duration `json:"lower"` // lt: below it, a borrowed core goes back
	Upper time.Duration `json:"upper"` // ut: above it, a core comes from a batch subOS
	// Window is how far back samples count; 0 means DefaultWindow.
	Window time.Duration `json:"window,omitempty"`
	// Cooldown is the wait after a move; 0 means Window.
	Cooldown time.Duration `json:"cooldown,omitempty"`
	// Quorum is the fraction of the window's samples that must be past a
	// threshold, in (0.5, 1]; 0 means DefaultQuorum.
	Quorum float64 `json:"quorum,omitempty"`
	// MinSamples is how many samples the window needs; 0 means DefaultMinSamples.
	MinSamples int `json:"min_samples,omitempty"`
	// MinCores and MaxCores bound the cores the subOS holds; 0 means 1
	// and no bound.
	MinCores int `json:"min_cores,omitempty"`
	MaxCores int `json:"max_cores,omitempty"`
}

// Config is the autoscaler's configuration.
type Config struct {
	Targets []Target `json:"targets"`
	// DonorMinCores is the fewest cores a batch subOS keeps, by name; a
	// subOS not named keeps 1.
	DonorMinCores map[string]int `json:"donor_min_cores,omitempty"`
}

// withDefaults returns t with its zero fields set to the defaults.
func (t Target) withDefaults() Target {
	if t.Window == 0 {
		t.Window = DefaultWindow
	}
	if t.Cooldown == 0 {
		t.Cooldown = t.Window
	}
	if t.Quorum == 0 {
		t.Quorum = DefaultQuorum
	}
	if t.MinSamples == 0 {
		t.MinSamples = DefaultMinSamples
	}
	if t.MinCores == 0 {
		t.MinCores = 1
	}
	return t
}

// Validate returns every problem of c, each naming the target and the
// field, joined; nil when none. Each wraps ErrConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("autoscale: "+format+": %w", append(args, ErrConfig)...))
	}
	seen := make(map[string]bool)
	for _, t := range c.Targets {
		if msg := ledger.NameProblem(t.Name); msg != "" {
			bad("target name %s", msg)
		}
		if seen[t.Name] {
			bad("target %q listed twice", t.Name)
		}
		seen[t.Name] = true
		switch {
		case t.Lower < 0:
			bad("target %q: lower threshold %v is negative", t.Name, t.Lower)
		case t.Lower >= t.Upper:
			bad("target %q: lower threshold (lt) %v must be below the upper (ut) %v", t.Name, t.Lower, t.Upper)
		}
		if t.Window < 0 || t.Cooldown < 0 {
			bad("target %q: window %v and cooldown %v must not be negative", t.Name, t.Window, t.Cooldown)
		}
		if t.Quorum != 0 && (t.Quorum <= 0.5 || t.Quorum > 1) {
			bad("target %q: quorum %v must be above 0.5 and at most 1", t.Name, t.Quorum)
		}
		if t.MinSamples < 0 {
			bad("target %q: min_samples %d is negative", t.Name, t.MinSamples)
		}
		if t.MinCores < 0 || t.MaxCores < 0 || (t.MaxCores > 0 && t.MaxCores < max(t.MinCores, 1)) {
			bad("target %q: want 1 <= min_cores (%d) <= max_cores (%d), 0 meaning 1 and no maximum", t.Name, t.MinCores, t.MaxCores)
		}
	}
	for name, n := range c.DonorMinCores {
		if n < 1 {
			bad("donor %q: keeps at least 1 core, not %d", name, n)
		}
	}
	return errors.Join(errs...)
}

// Sample is one latency report of a subOS.
type Sample struct {
	SubOS string        `json:"subos"`
	Time  time.Time     `json:"time"`
	P99   time.Duration `json:"p99"`
}

// Action is what a decision does.
type Action string

// Actions.
const (
	Grow   Action = "grow"   // one core from From (a batch subOS) to To
	Shrink Action = "shrink" // one borrowed core from From back to its lender To
	Hold   Action = "hold"   // nothing; Reason says why
)

// Decision is the policy's verdict on one target at one time.
type Decision struct {
	Time   time.Time `json:"time"`
	Target string    `json:"target"`
	Action Action    `json:"action"`
	From   string    `json:"from,omitempty"`
	To     string    `json:"to,omitempty"`
	Cores  int       `json:"cores"`          // 1 for a move, 0 for Hold
	Loan   uint64    `json:"loan,omitempty"` // the loan a Shrink returns a core of
	// Latency is the window's median p99, what caused the decision; 0
	// when the window had too few samples.
	Latency time.Duration `json:"latency"`
	Samples int           `json:"samples"` // how many samples the window had
	Reason  string        `json:"reason"`
}

// Moves says whether d moves a core.
func (d Decision) Moves() bool { return d.Action != Hold }

// Decide applies t's policy at now: samples are any samples (other
// subOSes', stale, future and negative ones are ignored); allocs are the
// ledger's allocations; lastMove is t's last move (zero when none);
// donorMin is Config.DonorMinCores.
func Decide(now time.Time, t Target, samples []Sample, allocs []ledger.Allocation, lastMove time.Time, donorMin map[string]int) Decision {
	t = t.withDefaults()
	d := Decision{Time: now, Target: t.Name, Action: Hold}
	hold := func(format string, args ...any) Decision {
		d.Reason = fmt.Sprintf(format, args...)
		return d
	}

	// The window: (now - Window, now], and after the last move.
	from := now.Add(-t.Window)
	sinceMove := !lastMove.IsZero() && lastMove.After(from)
	if sinceMove {
		from = lastMove
	}
	type point struct {
		t time.Time
		v time.Duration
	}
	var lat []point
	for _, s := range samples {
		if s.SubOS == t.Name && s.Time.After(from) && !s.Time.After(now) && s.P99 >= 0 {
			lat = append(lat, point{s.Time, s.P99})
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i].t.Before(lat[j].t) })
	d.Samples = len(lat)
	if len(lat) > 0 {
		vals := make([]time.Duration, len(lat))
		for i, p := range lat {
			vals[i] = p.v
		}
		slices.Sort(vals)
		d.Latency = vals[len(vals)/2]
	}
	switch {
	case len(lat) == 0 && sinceMove:
		return hold("no latency sample since the last move at %s", lastMove.Format(time.RFC3339Nano))
	case len(lat) == 0:
		return hold("no latency sample in the last %v: the source is missing or stale", t.Window)
	case len(lat) < t.MinSamples:
		d.Latency = 0
		return hold("only %d latency samples in the window, want %d", len(lat), t.MinSamples)
	}
	if span := lat[len(lat)-1].t.Sub(lat[0].t); span < t.Window/2 {
		return hold("samples cover %v of the %v window, want at least half", span, t.Window)
	}
	if !lastMove.IsZero() && now.Sub(lastMove) < t.Cooldown {
		return hold("cooling down: last move %v ago, cooldown %v", now.Sub(lastMove), t.Cooldown)
	}
	var above, below int
	for _, p := range lat {
		if p.v > t.Upper {
			above++
		}
		if p.v < t.Lower {
			below++
		}
	}
	quorum := func(n int) bool { return float64(n) >= t.Quorum*float64(len(lat)) }

	self, ok := find(allocs, t.Name)
	switch {
	case !ok:
		return hold("subOS %q is not running", t.Name)
	case self.Class != ledger.LatencyCritical:
		return hold("subOS %q is %s, not %s: it cannot preempt", t.Name, classOf(self), ledger.LatencyCritical)
	}
	held := len(self.Cores)

	switch {
	case quorum(above):
		if t.MaxCores > 0 && held >= t.MaxCores {
			return hold("p99 %v above ut %v in %d of %d samples, but %q holds its maximum of %d cores", d.Latency, t.Upper, above, len(lat), t.Name, t.MaxCores)
		}
		donor, spare := pickDonor(allocs, donorMin)
		if donor == "" {
			return hold("p99 %v above ut %v in %d of %d samples, but no batch subOS has a core above its minimum", d.Latency, t.Upper, above, len(lat))
		}
		d.Action, d.From, d.To, d.Cores = Grow, donor, t.Name, 1
		d.Reason = fmt.Sprintf("p99 %v above ut %v in %d of %d samples: one core from %q (%d above its minimum)", d.Latency, t.Upper, above, len(lat), donor, spare)
		return d
	case quorum(below):
		if held <= t.MinCores {
			return hold("p99 %v below lt %v in %d of %d samples, but %q holds its minimum of %d cores", d.Latency, t.Lower, below, len(lat), t.Name, t.MinCores)
		}
		ln, ok := nextToReturn(self)
		if !ok {
			return hold("p99 %v below lt %v in %d of %d samples, but %q has no borrowed core to give back", d.Latency, t.Lower, below, len(lat), t.Name)
		}
		d.Action, d.From, d.To, d.Cores, d.Loan = Shrink, t.Name, ln.Lender, 1, ln.ID
		d.Reason = fmt.Sprintf("p99 %v below lt %v in %d of %d samples: one core back to its lender %q (loan %d)", d.Latency, t.Lower, below, len(lat), ln.Lender, ln.ID)
		return d
	}
	return hold("p99 %v within [lt %v, ut %v]: %d of %d samples above ut, %d below lt, quorum %v", d.Latency, t.Lower, t.Upper, above, len(lat), below, t.Quorum)
}

func find(allocs []ledger.Allocation, name string) (ledger.Allocation, bool) {
	for _, a := range allocs {
		if a.Name == name {
			return a, true
		}
	}
	return ledger.Allocation{}, false
}

func classOf(a ledger.Allocation) ledger.Class {
	if a.Class == "" {
		return ledger.Batch
	}
	return a.Class
}

// pickDonor returns the batch subOS with the most owned cores above its
// minimum (the first by name on a tie), and how many; "" when none has one.
func pickDonor(allocs []ledger.Allocation, donorMin map[string]int) (string, int) {
	best, bestSpare := "", 0
	for _, a := range allocs {
		if classOf(a) != ledger.Batch {
			continue
		}
		keep := max(donorMin[a.Name], 1)
		// Only owned cores can be preempted, and a subOS owns at least one.
		spare := min(len(a.Cores)-keep, len(a.OwnedCores())-1)
		if spare > bestSpare || (spare == bestSpare && spare > 0 && a.Name < best) {
			best, bestSpare = a.Name, spare
		}
	}
	return best, bestSpare
}

// nextToReturn returns the loan a borrowed core goes back from, in the
// ledger's order: preempted loans first, the most recent first.
func nextToReturn(a ledger.Allocation) (ledger.Loan, bool) {
	var ls []ledger.Loan
	for _, ln := range a.Borrowed {
		if len(ln.Cores) > 0 {
			ls = append(ls, ln)
		}
	}
	if len(ls) == 0 {
		return ledger.Loan{}, false
	}
	sort.Slice(ls, func(i, j int) bool {
		pi, pj := ls[i].Kind == ledger.KindPreempt, ls[j].Kind == ledger.KindPreempt
		if pi != pj {
			return pi
		}
		return ls[i].ID > ls[j].ID
	})
	return ls[0], true
}

// Controller runs the policy step by step: it keeps each target's recent
// samples and last move. It is not safe for concurrent use; its owner
// serialises Observe and Step.
type Controller struct {
	cfg      Config
	samples  map[string][]Sample
	lastMove map[string]time.Time
}

// NewController returns a controller for cfg, or cfg's problems.
func NewController(cfg Config) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Targets = slices.Clone(cfg.Targets)
	sort.Slice(cfg.Targets, func(i, j int) bool { return cfg.Targets[i].Name < cfg.Targets[j].Name })
	return &Controller{cfg: cfg, samples: make(map[string][]Sample), lastMove: make(map[string]time.Time)}, nil
}

// Observe records a sample; samples of subOSes without a target are dropped.
func (c *Controller) Observe(s Sample) {
	for _, t := range c.cfg.Targets {
		if t.Name == s.SubOS {
			c.samples[s.SubOS] = append(c.samples[s.SubOS], s)
			return
		}
	}
}

// Step decides for every target at now, in name order, and returns one
// decision per target. Decisions in one step account for each other: two
// targets do not take the same donor's last spare core. A move counts as
// made at now (the cooldown starts) whether or not the caller manages to
// apply it; samples older than every window are forgotten.
func (c *Controller) Step(now time.Time, allocs []ledger.Allocation) []Decision {
	allocs = slices.Clone(allocs)
	var out []Decision
	for _, t := range c.cfg.Targets {
		td := t.withDefaults()
		kept := c.samples[t.Name][:0]
		for _, s := range c.samples[t.Name] {
			if s.Time.After(now.Add(-td.Window)) {
				kept = append(kept, s)
			}
		}
		c.samples[t.Name] = kept
		d := Decide(now, t, kept, allocs, c.lastMove[t.Name], c.cfg.DonorMinCores)
		if d.Moves() {
			c.lastMove[t.Name] = now
			allocs = applied(allocs, d)
		}
		out = append(out, d)
	}
	return out
}

// applied returns allocs as they are after d, as far as the policy looks:
// the giver's held and owned cores go down by one and the taker's up by
// one (a placeholder core -1, or the returned loan's core).
func applied(allocs []ledger.Allocation, d Decision) []ledger.Allocation {
	for i := range allocs {
		a := &allocs[i]
		switch a.Name {
		case d.From:
			if d.Action == Grow {
				owned := a.OwnedCores()
				a.Cores = slices.DeleteFunc(slices.Clone(a.Cores), func(c int) bool { return c == owned[len(owned)-1] })
				continue
			}
			a.Borrowed = slices.Clone(a.Borrowed)
			for j := range a.Borrowed {
				if ln := &a.Borrowed[j]; ln.ID == d.Loan {
					c := ln.Cores[len(ln.Cores)-1]
					ln.Cores = slices.Clone(ln.Cores[:len(ln.Cores)-1])
					a.Cores = slices.DeleteFunc(slices.Clone(a.Cores), func(x int) bool { return x == c })
				}
			}
		case d.To:
			a.Cores = append(slices.Clone(a.Cores), -1-len(a.Cores))
		}
	}
	return allocs
}
