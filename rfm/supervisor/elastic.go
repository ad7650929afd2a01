package supervisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"rainforest/internal/agent"
	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/rfm/vmmctl"
)

// Elastic subOSes: cores move between the free pool and running subOSes
// (ResizeCPUs) and between running subOSes (Lend, Return). The ledger
// decides which cores move; each subOS that gains or loses some is then
// changed on the host in an order that never lets two subOSes hold a core
// at once, and that the guest can refuse without harm:
//
//   - losing cores: the guest takes its highest CPUs offline (through its
//     agent), the vCPU threads are re-pinned (the offline ones parked on
//     the subOS's first core, in KVM_RUN, costing no host CPU), then the
//     cgroup's cpuset drops the cores;
//   - gaining cores: the cpuset takes them, the vCPU threads are pinned to
//     them, then the guest brings its CPUs online.
//
// The guest's CPUs are present from boot (its VMM creates max_cpus vCPUs
// and boots the kernel with maxcpus= set to the subOS's size), so no ACPI
// CPU hotplug is involved. Subsoses losing cores are changed before those
// gaining them. A step that fails undoes the steps made, subOS by subOS,
// and the ledger is restored: everything is as it was. Each subOS's record
// carries the change as an intent while it is made; a successor that finds
// one puts the subOS back on the cores of its record (settleCoreChange).

// ErrGuestRefused means the guest did not take a CPU offline or online.
var ErrGuestRefused = errors.New("the guest refused the change")

// opCores is the intent of a core change.
const opCores = "cores"

// coreChange is the intent of a core change: the cores the record's
// allocation has (Before) and those it is moving to (After).
type coreChange struct {
	Before []int `json:"before"`
	After  []int `json:"after"`
}

// coreStepTimeout bounds each guest and VMM step of a core change.
const coreStepTimeout = 30 * time.Second

// ResizeCPUs makes running subOS name hold n cores: free cores of its
// memory node join it, or its cores go (borrowed ones back to their
// lenders first, see the ledger's rules), while its guest runs.
func (s *Supervisor) ResizeCPUs(ctx context.Context, name string, n int) (Info, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.elastic(name)
	if err != nil {
		return Info{}, err
	}
	if max := maxCPUs(so.info); n > max {
		return Info{}, fmt.Errorf("%w: %q can have at most %d cpus (its max_cpus, fixed when it was created)", ErrInvalid, name, max)
	}
	if err := s.change(ctx, func() (ledger.Change, error) { return s.ledger.ResizeCPUs(name, n) }); err != nil {
		return Info{}, err
	}
	return s.Get(name)
}

// LendRequest asks that From lend To some of its own cores, or memory
// (bytes, a multiple of both subOSes' hotplug blocks), or both.
type LendRequest struct {
	From   string `json:"from"`
	To     string `json:"to"`
	CPUs   int    `json:"cpus,omitempty"`
	Memory uint64 `json:"memory,omitempty"`
}

// Lend moves CPUs of From's own cores and Memory of its own hotplugged
// memory to To, recorded as one loan, while both run: From's guest takes
// the CPUs offline and unplugs the memory, then To's brings them online
// and plugs it, all or nothing. It returns the loan.
func (s *Supervisor) Lend(ctx context.Context, r LendRequest) (ledger.Loan, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if r.CPUs < 0 || r.CPUs == 0 && r.Memory == 0 {
		return ledger.Loan{}, fmt.Errorf("%w: lend %d cpus and %d bytes: lend at least one cpu or some memory", ErrInvalid, r.CPUs, r.Memory)
	}
	for _, name := range []string{r.From, r.To} {
		var err error
		if r.CPUs > 0 {
			_, err = s.elastic(name)
		} else {
			_, err = s.running(name)
		}
		if err != nil {
			return ledger.Loan{}, err
		}
	}
	to, _ := s.Get(r.To)
	if have, max := len(to.Allocation.Cores), maxCPUs(to); r.CPUs > 0 && have+r.CPUs > max {
		return ledger.Loan{}, fmt.Errorf("%w: %q holds %d cpus and can have at most %d (its max_cpus)", ErrInvalid, r.To, have, max)
	}
	var loan ledger.Loan
	err := s.change(ctx, func() (ledger.Change, error) {
		ch, err := s.ledger.Lend(ledger.LendRequest{From: r.From, To: r.To, CPUs: r.CPUs, Memory: r.Memory})
		if err == nil && ch.Loan != nil {
			loan = *ch.Loan
		}
		return ch, err
	})
	return loan, err
}

// ReturnRequest says which borrowed cores and memory go back: loan ID, or
// the loans From made To; CPUs and Memory (bytes) of them (both 0: all).
type ReturnRequest struct {
	ID     uint64 `json:"id,omitempty"`
	From   string `json:"from,omitempty"` // the lender
	To     string `json:"to,omitempty"`   // the borrower
	CPUs   int    `json:"cpus,omitempty"`
	Memory uint64 `json:"memory,omitempty"`
}

// Return gives borrowed cores and memory back to their lender while both
// run.
func (s *Supervisor) Return(ctx context.Context, r ReturnRequest) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if r.ID == 0 && (r.From == "" || r.To == "") {
		return fmt.Errorf("%w: return needs a loan id, or the lender and the borrower", ErrInvalid)
	}
	if r.CPUs < 0 {
		return fmt.Errorf("%w: return %d cpus", ErrInvalid, r.CPUs)
	}
	return s.change(ctx, func() (ledger.Change, error) {
		return s.ledger.Return(ledger.ReturnRequest{ID: r.ID, Lender: r.From, Borrower: r.To, CPUs: r.CPUs, Memory: r.Memory})
	})
}

// Loans returns every loan between subOSes.
func (s *Supervisor) Loans() []ledger.Loan { return s.ledger.Loans() }

// elastic returns running subOS name if its cores can change: it needs an
// agent to take its guest's CPUs online and offline. Called under opMu.
func (s *Supervisor) elastic(name string) (*subOS, error) {
	so, err := s.running(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	a := so.agent
	s.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("%w: subOS %q has no agent channel (created before agents existed); recreate it to resize it", ErrNoAgent, name)
	}
	return so, nil
}

// maxCPUs is the most cores a subOS can hold: the vCPUs its VMM made.
func maxCPUs(info Info) int {
	return max(info.Spec.MaxCPUs, len(info.Allocation.Cores))
}

// change makes a ledger change (decide) and applies it to every running
// subOS whose cores or memory it moves: cores first, then memory, losers
// first each time; it restores the ledger when they cannot all follow (a
// guest that moves only part of the memory fails the change: loans move
// all or nothing). Called under opMu.
func (s *Supervisor) change(ctx context.Context, decide func() (ledger.Change, error)) (err error) {
	start := time.Now()
	before := map[string]ledger.Allocation{}
	for _, a := range s.ledger.Allocations() {
		before[a.Name] = a
	}
	ch, err := decide()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	restore := func() {
		saved := make([]ledger.Allocation, 0, len(ch.Allocations))
		for _, a := range ch.Allocations {
			saved = append(saved, before[a.Name])
		}
		if rerr := s.ledger.Restore(saved); rerr != nil {
			s.log.Error("ledger restore after a failed change", "op", ch.Op, "err", rerr)
		}
	}
	var moves, mems []move
	intents := map[*subOS]*intent{}
	for _, a := range ch.Allocations {
		old := before[a.Name]
		s.mu.Lock()
		so := s.subos[a.Name]
		var info Info
		if so != nil {
			info = so.info
		}
		s.mu.Unlock()
		if so == nil {
			continue
		}
		if !slices.Equal(old.Cores, a.Cores) {
			moves = append(moves, move{so: so, before: old, after: a})
			intents[so] = &intent{Op: opCores, Cores: &coreChange{Before: old.Cores, After: a.Cores}}
		}
		if old.Memory != a.Memory {
			if err := memoryRoom(info, a.Memory); err != nil {
				restore()
				return err
			}
			mems = append(mems, move{so: so, before: old, after: a})
			if intents[so] == nil {
				intents[so] = &intent{Op: opMemory}
			}
			intents[so].Memory = &memoryChange{Before: old.Memory, After: a.Memory}
		}
	}
	// Losers first: a core or a page leaves one subOS before it joins
	// another.
	slices.SortStableFunc(moves, func(x, y move) int { return cmp.Compare(y.lostCores(), x.lostCores()) })
	slices.SortStableFunc(mems, func(x, y move) int { return cmp.Compare(y.lostMemory(), x.lostMemory()) })
	unintendAll := func() {
		for so := range intents {
			s.unintend(so)
		}
	}
	for so, in := range intents {
		if err := s.intend(so, *in); err != nil {
			unintendAll()
			restore()
			return err
		}
	}
	// undo puts back the core moves before index cores and the memory
	// moves up to index memory (negative: none).
	undo := func(cores, memory int) {
		for j := memory; j >= 0; j-- {
			d := mems[j]
			if uerr := s.guestMemory(context.WithoutCancel(ctx), d.so, d.before.Memory); uerr != nil {
				s.log.Error("undo a memory change", "subos", d.so.info.Name, "err", uerr)
			}
		}
		for j := cores - 1; j >= 0; j-- {
			d := moves[j]
			if uerr := s.moveCores(context.WithoutCancel(ctx), d.so, d.after.Cores, d.before.Cores); uerr != nil {
				s.log.Error("undo a core change", "subos", d.so.info.Name, "err", uerr)
			}
		}
		unintendAll()
		restore()
	}
	for i, m := range moves {
		s.at("cores:" + m.so.info.Name)
		if err := s.moveCores(ctx, m.so, m.before.Cores, m.after.Cores); err != nil {
			undo(i, -1)
			s.event(s.who(ctx), ch.Op+"-failed", m.so.info.Name, time.Since(start), err.Error())
			return err
		}
	}
	for i, m := range mems {
		s.at("memory:" + m.so.info.Name)
		err := s.growPool(m.so, m.before, m.after)
		if err == nil {
			err = s.guestMemory(ctx, m.so, m.after.Memory)
		}
		var perr *PartialError
		if errors.As(err, &perr) {
			err = fmt.Errorf("%w: subOS %q reached %s of memory, not %s, in %s; the change is undone", ErrGuestRefused,
				perr.Name, units.FormatSize(perr.Memory), units.FormatSize(perr.Requested), perr.Waited.Round(time.Millisecond))
		}
		if err != nil {
			undo(len(moves), i)
			s.event(s.who(ctx), ch.Op+"-failed", m.so.info.Name, time.Since(start), err.Error())
			return err
		}
	}
	// Every subOS the change touched gets its new allocation, moved or not
	// (a loan between subOSes that do not run changes only records), the
	// losers' records first: a successor must never find a core or a page
	// in two records.
	var order []string
	for _, m := range moves {
		order = append(order, m.after.Name)
	}
	for _, m := range mems {
		if !slices.Contains(order, m.after.Name) {
			order = append(order, m.after.Name)
		}
	}
	after := map[string]ledger.Allocation{}
	for _, a := range ch.Allocations {
		after[a.Name] = a
		if !slices.Contains(order, a.Name) {
			order = append(order, a.Name)
		}
	}
	for _, name := range order {
		s.mu.Lock()
		so := s.subos[name]
		if so != nil {
			so.info.Allocation = after[name]
		}
		s.mu.Unlock()
		if so == nil {
			continue
		}
		if err := s.persist(so); err != nil {
			s.log.Error("store", "subos", name, "err", err)
		}
	}
	s.steerIRQs()
	s.publish()
	took := time.Since(start)
	for _, m := range moves {
		s.event(s.who(ctx), ch.Op, m.so.info.Name, took, describeMoves(m, ch))
	}
	for _, m := range mems {
		s.event(s.who(ctx), ch.Op, m.so.info.Name, took, describeMemory(m, ch))
	}
	return nil
}

// move is one subOS's part of a change: its cores, or its memory (memory
// moves between subOSes, a loan or a return, are all or nothing).
type move struct {
	so            *subOS
	before, after ledger.Allocation
}

// lostCores is how many cores the move takes away (negative: gives).
func (m move) lostCores() int { return len(m.before.Cores) - len(m.after.Cores) }

// describeMoves is the audit detail of m: the cores, and the loan.
func describeMoves(m move, ch ledger.Change) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cpus %d -> %d (cores %s -> %s)", len(m.before.Cores), len(m.after.Cores),
		units.FormatCPUList(m.before.Cores), units.FormatCPUList(m.after.Cores))
	if ch.Loan != nil {
		fmt.Fprintf(&b, "; loan %d of cores %s from %s to %s", ch.Loan.ID, units.FormatCPUList(ch.Loan.Cores), ch.Loan.Lender, ch.Loan.Borrower)
	}
	return b.String()
}

// moveCores changes a running subOS from cores before to cores after on
// the host: cgroup, vCPU threads and guest CPUs (see the order above). On
// error what it changed is put back.
func (s *Supervisor) moveCores(ctx context.Context, so *subOS, before, after []int) error {
	name := so.info.Name
	vmm := s.vmm(so)
	cctx, cancel := context.WithTimeout(ctx, coreStepTimeout)
	defer cancel()
	pins, err := vmmctl.VCPUs(cctx, vmm)
	if err != nil {
		return fmt.Errorf("subOS %q: its VMM did not list its vCPUs: %w", name, err)
	}
	if len(after) > len(pins) {
		return fmt.Errorf("%w: %q has %d vCPUs, cannot hold %d cores", ErrInvalid, name, len(pins), len(after))
	}
	current := make([]int, 0, len(before))
	for _, p := range pins[:min(len(before), len(pins))] {
		current = append(current, p.Core)
	}
	assign := assignCores(current, after)
	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return err
	}
	both := coreUnion(before, after)
	if err := s.cfg.Actuator.SetCores(name, both); err != nil {
		return fail(fmt.Errorf("subOS %q: cgroup: %w", name, err))
	}
	undo = append(undo, func() {
		if err := s.cfg.Actuator.SetCores(name, before); err != nil {
			s.log.Error("undo cgroup cores", "subos", name, "err", err)
		}
	})
	guest := func(n int) error { return s.guestCPUs(cctx, so, n) }
	pin := func(ctx context.Context, cores []int) error {
		if _, err := vmmctl.SetCPUs(ctx, vmm, cores); err != nil {
			return fmt.Errorf("subOS %q: pinning its vCPUs to %s: %w", name, units.FormatCPUList(cores), err)
		}
		return nil
	}
	if len(after) < len(before) {
		if err := guest(len(after)); err != nil {
			return fail(err)
		}
		undo = append(undo, func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), coreStepTimeout)
			defer cancel()
			_ = s.guestCPUs(uctx, so, len(before))
		})
		if err := pin(cctx, assign); err != nil {
			return fail(err)
		}
	} else {
		if err := pin(cctx, assign); err != nil {
			return fail(err)
		}
		undo = append(undo, func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), coreStepTimeout)
			defer cancel()
			_ = pin(uctx, current)
		})
		if len(after) > len(before) {
			if err := guest(len(after)); err != nil {
				return fail(err)
			}
		}
	}
	if err := s.cfg.Actuator.SetCores(name, after); err != nil {
		// The subOS runs on after already; a cpuset still holding the
		// cores it gave up is reported, not undone.
		s.log.Warn("cgroup keeps cores the subOS gave up", "subos", name, "cores", units.FormatCPUList(before), "err", err)
	}
	return nil
}

// assignCores gives vCPUs 0..len(next)-1 the cores of next, keeping each
// vCPU of current (its core by vCPU) on its core where next still has it.
func assignCores(current, next []int) []int {
	out := make([]int, len(next))
	used := map[int]bool{}
	free := make([]bool, len(next))
	in := map[int]bool{}
	for _, c := range next {
		in[c] = true
	}
	for i := range out {
		if i < len(current) && in[current[i]] && !used[current[i]] {
			out[i] = current[i]
			used[current[i]] = true
		} else {
			free[i] = true
		}
	}
	rest := slices.Sorted(func(yield func(int) bool) {
		for _, c := range next {
			if !used[c] && !yield(c) {
				return
			}
		}
	})
	for i := range out {
		if free[i] {
			out[i], rest = rest[0], rest[1:]
		}
	}
	return out
}

// guestCPUs makes the guest's CPUs 0..n-1 online and the others offline,
// through its agent.
func (s *Supervisor) guestCPUs(ctx context.Context, so *subOS, n int) error {
	s.mu.Lock()
	a := so.agent
	s.mu.Unlock()
	name := so.info.Name
	if a == nil {
		return fmt.Errorf("%w: subOS %q has no agent channel", ErrNoAgent, name)
	}
	c, err := a.dial(ctx)
	if err != nil {
		return fmt.Errorf("%w: subOS %q: %v (agent %s)", ErrNoAgent, name, err, a.info().State)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	online, err := agent.SetCPUs(ctx, c, n)
	switch {
	case errors.Is(err, agent.ErrCPURefused):
		return fmt.Errorf("%w: subOS %q: %w", ErrGuestRefused, name, err)
	case err != nil:
		return fmt.Errorf("subOS %q: agent: %w", name, err)
	case len(online) != n:
		return fmt.Errorf("%w: subOS %q has cpus %s online, not %d", ErrGuestRefused, name, units.FormatCPUList(online), n)
	}
	return nil
}

// settleCoreChange puts a subOS whose core change a previous supervisor
// left unfinished back on the cores of its record: its cgroup, its vCPU
// threads and, when its agent answers in time, its guest's CPUs.
func (s *Supervisor) settleCoreChange(so *subOS, in *intent) {
	name := so.info.Name
	cores := so.info.Allocation.Cores
	ctx, cancel := context.WithTimeout(context.Background(), recoveryTimeout)
	defer cancel()
	var problems []string
	if err := s.cfg.Actuator.SetCores(name, coreUnion(cores, in.Cores.After)); err != nil {
		problems = append(problems, "cgroup: "+err.Error())
	}
	pins, err := vmmctl.VCPUs(ctx, s.vmm(so))
	if err == nil {
		current := make([]int, 0, len(pins))
		for _, p := range pins {
			current = append(current, p.Core)
		}
		_, err = vmmctl.SetCPUs(ctx, s.vmm(so), assignCores(current, cores))
	}
	if err != nil {
		problems = append(problems, "vCPUs: "+err.Error())
	}
	if err := s.guestCPUs(ctx, so, len(cores)); err != nil {
		problems = append(problems, "guest: "+err.Error())
	}
	if err := s.cfg.Actuator.SetCores(name, cores); err != nil {
		problems = append(problems, "cgroup: "+err.Error())
	}
	detail := fmt.Sprintf("core change %s -> %s interrupted; back on %s", units.FormatCPUList(in.Cores.Before), units.FormatCPUList(in.Cores.After), units.FormatCPUList(cores))
	if len(problems) > 0 {
		detail += " (" + strings.Join(problems, "; ") + ")"
	}
	s.event(s.cfg.Who, "recover", name, 0, detail)
	if err := s.writeRecord(so, store.PhaseRunning, nil); err != nil {
		s.log.Error("store", "subos", name, "err", err)
	}
}

// unwindLoans settles the loans of a subOS about to go (see
// ledger.Unwind): lenders get their cores and memory back on the host,
// borrowers keep what it lent them as their own. Best effort: a lender
// that cannot take them back keeps them in the ledger, idle. Called under
// opMu.
func (s *Supervisor) unwindLoans(name string) {
	before := map[string]ledger.Allocation{}
	for _, a := range s.ledger.Allocations() {
		before[a.Name] = a
	}
	ch, err := s.ledger.Unwind(name)
	if err != nil || len(ch.Moves) == 0 {
		return
	}
	for _, a := range ch.Allocations {
		if a.Name == name {
			continue
		}
		s.mu.Lock()
		so := s.subos[a.Name]
		running := so != nil && so.info.State == StateRunning && so.proc != nil
		if so != nil {
			so.info.Allocation = a
		}
		s.mu.Unlock()
		if so == nil {
			continue
		}
		if old := before[a.Name]; running && !slices.Equal(old.Cores, a.Cores) {
			if err := s.moveCores(context.Background(), so, old.Cores, a.Cores); err != nil {
				s.log.Warn("lender did not take its cores back", "subos", a.Name, "err", err)
			}
		}
		if old := before[a.Name]; running && old.Memory < a.Memory {
			err := s.growPool(so, old, a)
			if err == nil {
				err = s.guestMemory(context.Background(), so, a.Memory)
			}
			if err != nil {
				s.log.Warn("lender did not plug its memory back; the ledger keeps it for it", "subos", a.Name, "err", err)
			}
		}
		if err := s.persist(so); err != nil {
			s.log.Error("store", "subos", a.Name, "err", err)
		}
		s.event(s.cfg.Who, "unwind", a.Name, 0, fmt.Sprintf("loans of %s settled: cores %s -> %s, memory %s -> %s", name,
			units.FormatCPUList(before[a.Name].Cores), units.FormatCPUList(a.Cores), units.FormatSize(before[a.Name].Memory), units.FormatSize(a.Memory)))
	}
}

// coreUnion is the sorted union of two core lists.
func coreUnion(a, b []int) []int {
	return slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(a), b...))))
}
