package supervisor

// The latency-driven autoscaler (the paper's policy): a latency-critical
// subOS whose spec has an autoscale section reports its p99 latency,
// through its agent (an application in the guest pushes it to rf-agent,
// whose stats reports carry the latest sample) or through the API
// (ReportLatency: a probe or a load generator on the host). One goroutine
// the Supervisor owns steps an autoscale.Controller every
// AutoscaleInterval over the samples and the ledger: a move it decides (one
// core preempted from a batch subOS, or one borrowed core given back) is
// made through change, under opMu, like any resize, and recorded as an
// audit event "autoscale" naming the latency that caused it; a move that
// cannot be made is an "autoscale-failed" event. Holds are not recorded;
// Info.AutoscaleLast shows the last decision.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/rfm/autoscale"
)

// AutoscaleInterval is how often the autoscaler steps.
const AutoscaleInterval = time.Second

// Latency sample bounds.
const (
	// maxPendingSamples bounds the samples waiting for the next step
	// (the oldest go first).
	maxPendingSamples = 4096
	// maxSampleAge is the oldest sample a report may carry: older ones
	// describe another time.
	maxSampleAge = 60 * time.Second
	// MaxLatency is the largest p99 accepted (a larger one is an error).
	MaxLatency = time.Hour
)

// Duration is a time.Duration written as a string ("5ms", "10s") in
// JSON and in layouts.
type Duration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string ("5ms", "1.5s").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"5ms\" or \"10s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// String is d as time.Duration writes it.
func (d Duration) String() string { return time.Duration(d).String() }

// AutoscaleSpec is a latency-critical subOS's autoscaling policy (its
// spec's autoscale section; PUT /v1/subos/{name}/autoscale's body).
type AutoscaleSpec struct {
	// Lower (lt) and Upper (ut) bound the p99 latency: above Upper for
	// most of a window, a core comes from a batch subOS; below Lower, a
	// borrowed core goes back. Lower < Upper.
	Lower Duration `json:"lower"`
	Upper Duration `json:"upper"`
	// Window is how far back samples count (0: 10s); Cooldown the wait
	// after a move (0: the window).
	Window   Duration `json:"window,omitempty"`
	Cooldown Duration `json:"cooldown,omitempty"`
	// MinCPUs and MaxCPUs bound the cores the autoscaler leaves the
	// subOS (0: 1, and its max_cpus).
	MinCPUs int `json:"min_cpus,omitempty"`
	MaxCPUs int `json:"max_cpus,omitempty"`
}

// Target is a's policy for subOS name.
func (a AutoscaleSpec) Target(name string) autoscale.Target {
	return autoscale.Target{Name: name, Lower: time.Duration(a.Lower), Upper: time.Duration(a.Upper),
		Window: time.Duration(a.Window), Cooldown: time.Duration(a.Cooldown), MinCores: a.MinCPUs, MaxCores: a.MaxCPUs}
}

// autoscaleProblems says what is wrong with spec's autoscale section: it
// needs a latency-critical subOS, and a policy autoscale.Config accepts.
func autoscaleProblems(spec Spec) []ledger.Problem {
	a := spec.Autoscale
	if a == nil {
		return nil
	}
	var probs []ledger.Problem
	if spec.Class != ledger.LatencyCritical {
		class := spec.Class
		if class == "" {
			class = ledger.Batch
		}
		probs = append(probs, ledger.Problem{Field: "autoscale", Message: fmt.Sprintf("only a %s subOS autoscales; this one is %s (set class: %s)", ledger.LatencyCritical, class, ledger.LatencyCritical)})
	}
	if a.MaxCPUs > 0 && spec.MaxCPUs > 0 && a.MaxCPUs > spec.MaxCPUs {
		probs = append(probs, ledger.Problem{Field: "autoscale.max_cpus", Message: fmt.Sprintf("%d is above the subOS's max_cpus %d", a.MaxCPUs, spec.MaxCPUs)})
	}
	name := spec.Name
	if ledger.NameProblem(name) != "" {
		name = "subos" // the name's own problem is reported elsewhere
	}
	if err := (autoscale.Config{Targets: []autoscale.Target{a.Target(name)}}).Validate(); err != nil {
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			msg := strings.TrimPrefix(e.Error(), "autoscale: ")
			msg = strings.TrimSuffix(msg, ": "+autoscale.ErrConfig.Error())
			probs = append(probs, ledger.Problem{Field: "autoscale", Message: msg})
		}
	}
	return probs
}

// autoscaler is the state of the supervisor's autoscaling loop.
type autoscaler struct {
	mu      sync.Mutex
	pending []autoscale.Sample // since the last step; under mu
	// last is each subOS's last decision; under mu.
	last map[string]autoscale.Decision

	// The loop's own (under opMu while it steps).
	ctrl    *autoscale.Controller
	targets []autoscale.Target
	recent  []autoscale.Sample // to feed a controller rebuilt for new targets
	idle    bool               // the last step had no targets and cleared its state (under mu)

	stop chan struct{}
	done chan struct{}
}

// now is the supervisor's clock.
func (s *Supervisor) now() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now()
	}
	return time.Now()
}

// startAutoscaler starts the loop; Close stops it.
func (s *Supervisor) startAutoscaler() {
	s.auto.stop, s.auto.done = make(chan struct{}), make(chan struct{})
	ticks := s.cfg.AutoscaleTicks
	var ticker *time.Ticker
	if ticks == nil {
		ticker = time.NewTicker(AutoscaleInterval)
		ticks = ticker.C
	}
	go func() {
		defer close(s.auto.done)
		if ticker != nil {
			defer ticker.Stop()
		}
		for {
			select {
			case <-s.auto.stop:
				return
			case <-ticks:
				s.autoscaleStep(context.Background(), s.now())
			}
		}
	}()
}

// stopAutoscaler stops the loop and waits for it.
func (s *Supervisor) stopAutoscaler() {
	if s.auto.stop == nil {
		return
	}
	close(s.auto.stop)
	<-s.auto.done
	s.auto.stop = nil
}

// observeLatency queues a p99 sample of subOS name taken at t.
func (s *Supervisor) observeLatency(name string, p99 time.Duration, t time.Time) {
	s.auto.mu.Lock()
	defer s.auto.mu.Unlock()
	if len(s.auto.pending) >= maxPendingSamples {
		s.auto.pending = slices.Delete(s.auto.pending, 0, len(s.auto.pending)-maxPendingSamples+1)
	}
	s.auto.pending = append(s.auto.pending, autoscale.Sample{SubOS: name, Time: t, P99: p99})
}

// ReportLatency records a p99 latency of running subOS name measured now
// (POST /v1/subos/{name}/latency): the autoscaler's host-side source.
func (s *Supervisor) ReportLatency(ctx context.Context, name string, p99 time.Duration) error {
	if p99 < 0 || p99 > MaxLatency {
		return fmt.Errorf("%w: p99 %v outside 0..%v", ErrInvalid, p99, MaxLatency)
	}
	if _, err := s.running(name); err != nil {
		return err
	}
	s.observeLatency(name, p99, s.now())
	return nil
}

// autoscaleTargets are the policies of the running latency-critical
// subOSes with autoscale on, with their bounds.
func (s *Supervisor) autoscaleTargets() []autoscale.Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ts []autoscale.Target
	for name, so := range s.subos {
		a := so.info.Spec.Autoscale
		if a == nil || so.info.State != StateRunning || so.proc == nil {
			continue
		}
		t := a.Target(name)
		if m := maxCPUs(so.info); t.MaxCores == 0 || t.MaxCores > m {
			t.MaxCores = m
		}
		if t.MinCores > 0 && t.MaxCores > 0 && t.MinCores > t.MaxCores {
			t.MinCores = t.MaxCores
		}
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b autoscale.Target) int { return strings.Compare(a.Name, b.Name) })
	return ts
}

// autoscaleStep runs one step of the autoscaler at now: the queued
// samples go to the controller, and the moves it decides are made.
func (s *Supervisor) autoscaleStep(ctx context.Context, now time.Time) {
	// With no policy and nothing to forget, a tick does not wait behind
	// a create or a resize for the operation lock.
	targets := s.autoscaleTargets()
	s.auto.mu.Lock()
	idle := len(targets) == 0 && s.auto.idle
	s.auto.idle = len(targets) == 0
	if idle {
		s.auto.pending = nil
		s.auto.mu.Unlock()
		return
	}
	s.auto.mu.Unlock()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.auto.mu.Lock()
	pending := s.auto.pending
	s.auto.pending = nil
	s.auto.mu.Unlock()

	targets = s.autoscaleTargets()
	var window time.Duration
	for _, t := range targets {
		window = max(window, t.Window, autoscale.DefaultWindow)
	}
	s.auto.recent = append(s.auto.recent, pending...)
	s.auto.recent = slices.DeleteFunc(s.auto.recent, func(x autoscale.Sample) bool {
		return !x.Time.After(now.Add(-window)) || !slices.ContainsFunc(targets, func(t autoscale.Target) bool { return t.Name == x.SubOS })
	})
	if len(targets) == 0 {
		s.auto.ctrl, s.auto.targets = nil, nil
		s.auto.mu.Lock()
		s.auto.last = nil
		s.auto.mu.Unlock()
		return
	}
	if s.auto.ctrl == nil || !slices.Equal(targets, s.auto.targets) {
		ctrl, err := autoscale.NewController(autoscale.Config{Targets: targets})
		if err != nil {
			// Specs are checked when set; a bad one here is a bug.
			s.log.Error("autoscaler configuration", "err", err)
			return
		}
		s.auto.ctrl, s.auto.targets = ctrl, targets
		for _, x := range s.auto.recent {
			ctrl.Observe(x)
		}
	} else {
		for _, x := range pending {
			s.auto.ctrl.Observe(x)
		}
	}
	decisions := s.auto.ctrl.Step(now, s.ledger.Allocations())
	last := make(map[string]autoscale.Decision, len(decisions))
	for _, d := range decisions {
		last[d.Target] = d
	}
	s.auto.mu.Lock()
	s.auto.last = last
	s.auto.mu.Unlock()
	for _, d := range decisions {
		if d.Moves() {
			s.autoscaleMove(ctx, d, targets)
		}
	}
}

// autoscaleMove makes decision d and records it.
func (s *Supervisor) autoscaleMove(ctx context.Context, d autoscale.Decision, targets []autoscale.Target) {
	start := time.Now()
	var t autoscale.Target
	for _, x := range targets {
		if x.Name == d.Target {
			t = x
		}
	}
	window := t.Window
	if window == 0 {
		window = autoscale.DefaultWindow
	}
	var why, what string
	var decide func() (ledger.Change, error)
	switch d.Action {
	case autoscale.Grow:
		why = fmt.Sprintf("p99 %v > upper %v over %v (%d samples)", d.Latency, t.Upper, window, d.Samples)
		what = fmt.Sprintf("1 core from %s to %s", d.From, d.To)
		decide = func() (ledger.Change, error) { return s.ledger.Preempt(d.To, d.From, 1) }
	case autoscale.Shrink:
		why = fmt.Sprintf("p99 %v < lower %v over %v (%d samples)", d.Latency, t.Lower, window, d.Samples)
		what = fmt.Sprintf("1 core from %s back to %s (loan %d)", d.From, d.To, d.Loan)
		decide = func() (ledger.Change, error) {
			return s.ledger.Return(ledger.ReturnRequest{ID: d.Loan, CPUs: 1})
		}
	default:
		return
	}
	before := coresByName(s.ledger.Allocations())
	err := func() error {
		for _, name := range []string{d.From, d.To} {
			if _, err := s.elastic(name); err != nil {
				return err
			}
		}
		return s.change(ctx, decide)
	}()
	if err != nil {
		s.event(s.cfg.Who, "autoscale-failed", d.Target, time.Since(start), fmt.Sprintf("%s: %s not made: %v", why, what, err))
		return
	}
	after := coresByName(s.ledger.Allocations())
	var cores []string
	for _, name := range []string{d.From, d.To} {
		cores = append(cores, fmt.Sprintf("%s cores %s -> %s", name, units.FormatCPUList(before[name]), units.FormatCPUList(after[name])))
	}
	s.event(s.cfg.Who, "autoscale", d.Target, time.Since(start), fmt.Sprintf("%s: %s (%s)", why, what, strings.Join(cores, ", ")))
}

func coresByName(allocs []ledger.Allocation) map[string][]int {
	m := make(map[string][]int, len(allocs))
	for _, a := range allocs {
		m[a.Name] = a.Cores
	}
	return m
}

// autoscaleLast is name's last decision, or nil.
func (s *Supervisor) autoscaleLast(name string) *autoscale.Decision {
	s.auto.mu.Lock()
	defer s.auto.mu.Unlock()
	d, ok := s.auto.last[name]
	if !ok {
		return nil
	}
	return &d
}

// SetAutoscale turns running subOS name's autoscaling on with policy a,
// changes it, or turns it off (a nil). The policy is kept in its record.
func (s *Supervisor) SetAutoscale(ctx context.Context, name string, a *AutoscaleSpec) (Info, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	spec := so.info.Spec
	s.mu.Unlock()
	spec.Autoscale = a
	if spec.Class == "" {
		spec.Class = so.info.Allocation.Class
	}
	if probs := autoscaleProblems(spec); len(probs) > 0 {
		return Info{}, &ProblemsError{Problems: probs}
	}
	s.update(so, func(info *Info) { info.Spec.Autoscale = a })
	detail := "off"
	if a != nil {
		detail = describeAutoscale(*a)
	}
	s.event(s.who(ctx), "autoscale-config", name, 0, detail)
	return s.Get(name)
}

func describeAutoscale(a AutoscaleSpec) string {
	d := fmt.Sprintf("lower %v upper %v", a.Lower, a.Upper)
	if a.Window != 0 {
		d += fmt.Sprintf(" window %v", a.Window)
	}
	if a.Cooldown != 0 {
		d += fmt.Sprintf(" cooldown %v", a.Cooldown)
	}
	if a.MinCPUs != 0 {
		d += fmt.Sprintf(" min_cpus %d", a.MinCPUs)
	}
	if a.MaxCPUs != 0 {
		d += fmt.Sprintf(" max_cpus %d", a.MaxCPUs)
	}
	return d
}

// errAgentLatency wraps a latency an agent sent that is not accepted.
var errAgentLatency = errors.New("agent latency sample refused")

// agentLatency turns a stats report's latency, received at at, into a
// sample: its time is at minus its age. A sample too old, or beyond
// MaxLatency, is refused.
func agentLatency(name string, p99US, ageMS uint64, at time.Time) (autoscale.Sample, error) {
	age := time.Duration(ageMS) * time.Millisecond
	if ageMS > uint64(maxSampleAge/time.Millisecond) {
		return autoscale.Sample{}, fmt.Errorf("%w: %v old", errAgentLatency, age)
	}
	if p99US > uint64(MaxLatency/time.Microsecond) {
		return autoscale.Sample{}, fmt.Errorf("%w: p99 %dus", errAgentLatency, p99US)
	}
	return autoscale.Sample{SubOS: name, Time: at.Add(-age), P99: time.Duration(p99US) * time.Microsecond}, nil
}
