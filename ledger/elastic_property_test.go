package ledger

import (
	"errors"
	"reflect"
	"slices"
)

// The elastic operations of the property test (TestPropertyRandomOperations):
// each checks what a success did, and that a refusal changed nothing.

// outcome records op's result and checks the common properties: a refusal
// left the ledger as it was; a success reports the changed allocations as
// Get does. It says whether op succeeded.
func (p *propertyRun) outcome(step int, op string, before snapshot, ch Change, err error) bool {
	p.t.Helper()
	n := p.done[op]
	if err != nil {
		n[1]++
		p.done[op] = n
		if after := takeSnapshot(p.l); !reflect.DeepEqual(before, after) {
			p.t.Fatalf("step %d: refused %s (%v) changed the ledger:\nbefore %+v\nafter  %+v", step, op, err, before, after)
		}
		return false
	}
	n[0]++
	p.done[op] = n
	for _, a := range ch.Allocations {
		if got, _ := p.l.Get(a.Name); !reflect.DeepEqual(got, a) {
			p.t.Fatalf("step %d: %s reports %+v, Get says %+v", step, op, a, got)
		}
	}
	return true
}

// checkGiveUp checks where the cores and pages that name gave up went:
// a borrowed core to its lender when the lender exists, else to the free
// pool; and that borrowed ones went before owned ones, preempted loans
// before voluntary ones.
func (p *propertyRun) checkGiveUp(step int, op, name string, before snapshot) {
	p.t.Helper()
	old := before.allocs[name]
	now, _ := p.l.Get(name)
	loanOf := map[int]Loan{}
	for _, ln := range old.Borrowed {
		for _, c := range ln.Cores {
			loanOf[c] = ln
		}
	}
	var ownedFreed, lendReturned bool
	for _, c := range old.Cores {
		if slices.Contains(now.Cores, c) {
			continue
		}
		want := ""
		ln, borrowed := loanOf[c]
		if borrowed {
			if _, ok := before.allocs[ln.Lender]; ok {
				want = ln.Lender
			}
			lendReturned = lendReturned || ln.Kind == KindLend
		} else {
			ownedFreed = true
		}
		if got := p.l.Owner(c); got != want {
			p.t.Fatalf("step %d: %s %q gave up cpu %d to %q, want %q", step, op, name, c, got, want)
		}
	}
	for _, ln := range now.Borrowed {
		if len(ln.Cores) > 0 && ownedFreed {
			p.t.Fatalf("step %d: %s %q freed an owned core while keeping borrowed %+v", step, op, name, ln)
		}
		if len(ln.Cores) > 0 && lendReturned && ln.Kind == KindPreempt {
			p.t.Fatalf("step %d: %s %q returned a lent core before preempted %+v", step, op, name, ln)
		}
		if ln.Pages > 0 && now.OwnedPages() < old.OwnedPages() {
			p.t.Fatalf("step %d: %s %q freed owned pages while keeping borrowed %+v", step, op, name, ln)
		}
	}
}

func (p *propertyRun) resizeCPUs(step int) {
	name := p.randomName()
	n := p.rng.IntN(8) - 1
	before := takeSnapshot(p.l)
	ch, err := p.l.ResizeCPUs(name, n)
	if n < 1 && !errors.Is(err, ErrBelowMinimum) {
		if _, ok := before.allocs[name]; ok {
			p.t.Fatalf("step %d: ResizeCPUs(%q, %d) = %v, want ErrBelowMinimum", step, name, n, err)
		}
	}
	if !p.outcome(step, "resize-cpus", before, ch, err) {
		if errors.Is(err, ErrInsufficient) && !errors.Is(err, ErrNoCores) {
			p.t.Fatalf("step %d: %v does not wrap ErrNoCores", step, err)
		}
		return
	}
	a, _ := p.l.Get(name)
	if len(a.Cores) != n {
		p.t.Fatalf("step %d: ResizeCPUs(%q, %d) holds %v", step, name, n, a.Cores)
	}
	old := before.allocs[name]
	for _, c := range a.Cores {
		if !slices.Contains(old.Cores, c) {
			if !before.isFree(p.l, c) || p.l.cpus[c].Node != a.Node {
				p.t.Fatalf("step %d: ResizeCPUs(%q) took cpu %d, not free on node %d", step, name, c, a.Node)
			}
		}
	}
	p.checkGiveUp(step, "ResizeCPUs", name, before)
}

func (p *propertyRun) resizeMemory(step int) {
	name := p.randomName()
	ps := 2 * mib
	if a, ok := p.l.Get(name); ok {
		ps = a.PageSize
	}
	bytes := uint64(p.rng.IntN(40)) * ps
	block := []uint64{ps, 2 * ps, 4096, 0}[p.rng.IntN(4)]
	if p.rng.IntN(10) == 0 {
		bytes += 4096
	}
	before := takeSnapshot(p.l)
	ch, err := p.l.ResizeMemory(name, bytes, block)
	_, exists := before.allocs[name]
	switch {
	case !exists || block == 0:
	case bytes == 0 && !errors.Is(err, ErrBelowMinimum):
		p.t.Fatalf("step %d: ResizeMemory(%q, 0) = %v, want ErrBelowMinimum", step, name, err)
	case bytes != 0 && bytes%block != 0 && !errors.Is(err, ErrNotMultiple):
		p.t.Fatalf("step %d: ResizeMemory(%q, %d, block %d) = %v, want ErrNotMultiple", step, name, bytes, block, err)
	}
	if !p.outcome(step, "resize-memory", before, ch, err) {
		return
	}
	a, _ := p.l.Get(name)
	if a.Memory != bytes || a.Pages*a.PageSize != bytes {
		p.t.Fatalf("step %d: ResizeMemory(%q, %d) holds %d bytes, %d pages", step, name, bytes, a.Memory, a.Pages)
	}
	p.checkGiveUp(step, "ResizeMemory", name, before)
}

// existingName returns, mostly, the name of an allocation whose class is
// one of classes (any class when none), else a random name.
func (p *propertyRun) existingName(classes ...Class) string {
	var names []string
	for _, a := range p.l.Allocations() {
		if len(classes) == 0 || slices.Contains(classes, a.Class) {
			names = append(names, a.Name)
		}
	}
	if len(names) == 0 || p.rng.IntN(6) == 0 {
		return p.randomName()
	}
	return names[p.rng.IntN(len(names))]
}

func (p *propertyRun) lend(step int) {
	r := LendRequest{From: p.existingName(), To: p.existingName(), CPUs: p.rng.IntN(3)}
	if p.rng.IntN(3) == 0 {
		r.Memory = uint64(p.rng.IntN(8)) * 2 * mib
	}
	before := takeSnapshot(p.l)
	ch, err := p.l.Lend(r)
	from, okF := before.allocs[r.From]
	if okF && r.From != r.To && r.CPUs > len(from.OwnedCores())-1 {
		if _, okT := before.allocs[r.To]; okT && !errors.Is(err, ErrInsufficient) {
			p.t.Fatalf("step %d: Lend(%+v) of more than the lender has = %v, want ErrInsufficient", step, r, err)
		}
	}
	if !p.outcome(step, "lend", before, ch, err) {
		return
	}
	p.checkLoan(step, "Lend", before, ch)
}

// checkLoan checks the loan a Lend or Preempt made.
func (p *propertyRun) checkLoan(step int, op string, before snapshot, ch Change) {
	p.t.Helper()
	ln := ch.Loan
	if ln == nil {
		p.t.Fatalf("step %d: %s made no loan", step, op)
	}
	from, to := before.allocs[ln.Lender], before.allocs[ln.Borrower]
	nf, _ := p.l.Get(ln.Lender)
	nt, _ := p.l.Get(ln.Borrower)
	if !slices.ContainsFunc(nt.Borrowed, func(x Loan) bool { return reflect.DeepEqual(x, *ln) }) ||
		!slices.ContainsFunc(nf.Lent, func(x Loan) bool { return reflect.DeepEqual(x, *ln) }) {
		p.t.Fatalf("step %d: %s loan %+v not recorded: borrower %+v, lender %+v", step, op, ln, nt, nf)
	}
	for _, c := range ln.Cores {
		if !slices.Contains(from.OwnedCores(), c) || p.l.Owner(c) != ln.Borrower {
			p.t.Fatalf("step %d: %s moved cpu %d, not %q's own, or not to %q", step, op, c, ln.Lender, ln.Borrower)
		}
	}
	if len(nf.Cores)+len(nt.Cores) != len(from.Cores)+len(to.Cores) || nf.Pages+nt.Pages != from.Pages+to.Pages ||
		nt.Pages != to.Pages+ln.Pages || len(nt.Cores) != len(to.Cores)+len(ln.Cores) {
		p.t.Fatalf("step %d: %s did not conserve: %+v %+v -> %+v %+v", step, op, from, to, nf, nt)
	}
}

func (p *propertyRun) preempt(step int) {
	to, from, cpus := p.existingName(LatencyCritical), p.existingName(Batch), p.rng.IntN(3)
	if p.rng.IntN(4) == 0 {
		to, from = from, to
	}
	before := takeSnapshot(p.l)
	ch, err := p.l.Preempt(to, from, cpus)
	t, okT := before.allocs[to]
	f, okF := before.allocs[from]
	rightWay := okT && okF && t.Class == LatencyCritical && f.Class == Batch
	if okT && okF && to != from && cpus > 0 && !rightWay && !errors.Is(err, ErrWrongDirection) {
		p.t.Fatalf("step %d: Preempt(%q %s <- %q %s) = %v, want ErrWrongDirection", step, to, t.Class, from, f.Class, err)
	}
	if !p.outcome(step, "preempt", before, ch, err) {
		return
	}
	if !rightWay || ch.Loan.Kind != KindPreempt {
		p.t.Fatalf("step %d: Preempt(%q <- %q) allowed: %+v", step, to, from, ch.Loan)
	}
	p.checkLoan(step, "Preempt", before, ch)
}

func (p *propertyRun) giveBack(step int) {
	loans := p.l.Loans()
	var r ReturnRequest
	switch {
	case len(loans) == 0 || p.rng.IntN(8) == 0:
		r = ReturnRequest{ID: uint64(p.rng.IntN(50)), Lender: p.randomName(), Borrower: p.randomName()}
	case p.rng.IntN(2) == 0:
		ln := loans[p.rng.IntN(len(loans))]
		r = ReturnRequest{ID: ln.ID, CPUs: p.rng.IntN(len(ln.Cores) + 2)}
	default:
		ln := loans[p.rng.IntN(len(loans))]
		r = ReturnRequest{Lender: ln.Lender, Borrower: ln.Borrower, CPUs: p.rng.IntN(len(ln.Cores) + 1)}
		if ln.Pages > 0 && p.rng.IntN(2) == 0 {
			r.Memory = uint64(p.rng.IntN(int(ln.Pages)+1)) * p.l.allocs[ln.Borrower].PageSize
		}
	}
	before := takeSnapshot(p.l)
	ch, err := p.l.Return(r)
	if !p.outcome(step, "return", before, ch, err) {
		return
	}
	borrower := r.Borrower
	if r.ID != 0 {
		for _, ln := range loans {
			if ln.ID == r.ID {
				borrower = ln.Borrower
			}
		}
	}
	old, now := before.allocs[borrower], p.l.allocs[borrower]
	returned := len(old.Cores) - len(now.Cores)
	if r.CPUs > 0 && returned != r.CPUs {
		p.t.Fatalf("step %d: Return(%+v) gave back %d cores", step, r, returned)
	}
	for _, ln := range old.Borrowed {
		if r.ID != 0 && ln.ID != r.ID || r.ID == 0 && ln.Lender != r.Lender {
			if !slices.ContainsFunc(now.Borrowed, func(x Loan) bool { return reflect.DeepEqual(x, ln) }) {
				p.t.Fatalf("step %d: Return(%+v) touched loan %+v", step, r, ln)
			}
			continue
		}
		_, lenderExists := before.allocs[ln.Lender]
		for _, c := range ln.Cores {
			if slices.Contains(now.Cores, c) {
				continue
			}
			if o := p.l.Owner(c); lenderExists && o != ln.Lender || !lenderExists && o != "" {
				p.t.Fatalf("step %d: Return(%+v): cpu %d of loan %d went to %q", step, r, c, ln.ID, o)
			}
		}
	}
}

func (p *propertyRun) setClass(step int) {
	name := p.randomName()
	c := []Class{Batch, LatencyCritical, LatencyCritical, "interactive"}[p.rng.IntN(4)]
	before := takeSnapshot(p.l)
	err := p.l.SetClass(name, c)
	if !p.outcome(step, "set-class", before, Change{}, err) {
		return
	}
	if a, _ := p.l.Get(name); a.Class != c {
		p.t.Fatalf("step %d: SetClass(%q, %q) recorded %q", step, name, c, a.Class)
	}
}
