package ledger

// Elasticity: resizing a subOS, lending resources between subOSes, and
// preemption. Like the rest of the ledger these only decide and record;
// each returns a Change that says which resources an actuator must move.
//
// The rules, in one place:
//   - A subOS holds its Cores and Pages: what it owns plus what it
//     borrowed (Allocation.Borrowed). It always owns at least one core and
//     one page: lending, preemption and shrinking never take the last.
//   - Only owned resources can be lent or preempted; a borrowed core is
//     never lent on, so loans do not chain.
//   - Whenever a subOS gives resources up (a shrinking resize, Return,
//     Unwind or Release), borrowed ones go back to their lenders before any
//     owned one goes back to the free pool: preempted loans first, then
//     voluntary ones, the most recent loan first within each kind.
//   - A loan whose lender no longer exists (a restarted supervisor adopted
//     the borrower but not the lender) gives its resources to the free pool
//     when returned; DissolveOrphans makes them the borrower's own instead.
//   - Every refusal leaves the ledger exactly as it was.

import (
	"errors"
	"fmt"
	"slices"
	"sort"
)

// Class says how a subOS's cores may be taken.
type Class string

// Classes. A LatencyCritical subOS may preempt cores from a Batch one,
// never the other way round.
const (
	Batch           Class = "batch"
	LatencyCritical Class = "latency-critical"
)

// LoanKind says how a loan was made.
type LoanKind string

// Loan kinds. Preempted loans are unwound before voluntary ones.
const (
	KindLend    LoanKind = "lend"
	KindPreempt LoanKind = "preempt"
)

// Sentinel errors of the elastic operations; their errors wrap them (an
// ErrInsufficient also wraps ErrNoCores or ErrNoMemory).
var (
	ErrInsufficient   = errors.New("not enough resources")
	ErrWrongDirection = errors.New("preemption in the wrong direction")
	ErrBelowMinimum   = errors.New("below the minimum of one")
	ErrNotMultiple    = errors.New("not a multiple of the block size")
	ErrNoLoan         = errors.New("no such loan")
)

// Loan is resources one subOS lent another. The borrower holds them: they
// are in its Cores and Pages, not the lender's.
type Loan struct {
	ID       uint64   `json:"id"` // unique among the ledger's loans, > 0
	Lender   string   `json:"lender"`
	Borrower string   `json:"borrower"`
	Kind     LoanKind `json:"kind"`
	Cores    []int    `json:"cores,omitempty"`  // sorted host CPU IDs
	Memory   uint64   `json:"memory,omitempty"` // bytes, Pages * the borrower's page size
	Pages    uint64   `json:"pages,omitempty"`
}

func cloneLoans(ls []Loan) []Loan {
	if ls == nil {
		return nil
	}
	out := make([]Loan, len(ls))
	for i, ln := range ls {
		ln.Cores = slices.Clone(ln.Cores)
		out[i] = ln
	}
	return out
}

// OwnedCores returns the cores a holds that are not borrowed, sorted.
func (a Allocation) OwnedCores() []int {
	borrowed := make(map[int]bool)
	for _, ln := range a.Borrowed {
		for _, c := range ln.Cores {
			borrowed[c] = true
		}
	}
	var out []int
	for _, c := range a.Cores {
		if !borrowed[c] {
			out = append(out, c)
		}
	}
	return out
}

// OwnedPages returns the pages a holds that are not borrowed.
func (a Allocation) OwnedPages() uint64 {
	var b uint64
	for _, ln := range a.Borrowed {
		b += ln.Pages
	}
	if b > a.Pages {
		return 0
	}
	return a.Pages - b
}

// Move is one transfer of resources an actuator applies, in order: the
// cores and pages leave From and join To. "" is the free pool.
type Move struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Cores  []int  `json:"cores,omitempty"`
	Pages  uint64 `json:"pages,omitempty"`
	Memory uint64 `json:"memory,omitempty"` // bytes
	Loan   uint64 `json:"loan,omitempty"`   // the loan the move makes or unwinds
}

// Change is what an elastic operation did.
type Change struct {
	Op    string `json:"op"` // "resize", "lend", "preempt", "return", "unwind", "release", "dissolve"
	Moves []Move `json:"moves"`
	// Loan is the loan Lend or Preempt made.
	Loan *Loan `json:"loan,omitempty"`
	// Allocations are those that changed, after the change (Lent filled
	// in), sorted by name: the records a caller persists.
	Allocations []Allocation `json:"allocations"`
	changed     map[string]bool
}

func (ch *Change) touch(names ...string) {
	if ch.changed == nil {
		ch.changed = make(map[string]bool)
	}
	for _, n := range names {
		if n != "" {
			ch.changed[n] = true
		}
	}
}

// finish fills ch.Allocations; the caller holds l.mu.
func (l *Ledger) finish(ch *Change) Change {
	names := make([]string, 0, len(ch.changed))
	for n := range ch.changed {
		if _, ok := l.allocs[n]; ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	ch.Allocations = make([]Allocation, 0, len(names))
	for _, n := range names {
		ch.Allocations = append(ch.Allocations, l.view(l.allocs[n]))
	}
	if ch.Moves == nil {
		ch.Moves = []Move{}
	}
	ch.changed = nil
	return *ch
}

// view returns a copy of a with Lent filled in; the caller holds l.mu.
func (l *Ledger) view(a Allocation) Allocation {
	a = a.clone()
	a.Lent = l.lentBy(a.Name)
	return a
}

// lentBy returns the loans lender made, by ID.
func (l *Ledger) lentBy(lender string) []Loan {
	var out []Loan
	for _, b := range l.allocs {
		for _, ln := range b.Borrowed {
			if ln.Lender == lender {
				out = append(out, ln)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return cloneLoans(out)
}

// Loans returns every loan, by ID.
func (l *Ledger) Loans() []Loan {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Loan
	for _, a := range l.allocs {
		out = append(out, a.Borrowed...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return cloneLoans(out)
}

// SetClass sets name's class.
func (l *Ledger) SetClass(name string, c Class) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.allocs[name]
	if !ok {
		return fmt.Errorf("ledger: set class of %q: %w", name, ErrNotFound)
	}
	if c != Batch && c != LatencyCritical {
		return fmt.Errorf("ledger: set class of %q: unknown class %q, want %q or %q: %w", name, c, LatencyCritical, Batch, ErrInvalid)
	}
	a.Class = c
	l.allocs[name] = a
	return nil
}

// classOf reads "" as Batch.
func classOf(a Allocation) Class {
	if a.Class == "" {
		return Batch
	}
	return a.Class
}

// ResizeCPUs makes name hold n cores. Growing takes free cores of its
// memory node by Reserve's rule (one thread of each wholly free core
// first, then their siblings, then threads of shared cores; never a
// housekeeping core). Shrinking gives cores up, borrowed ones to their
// lenders first (see the package rules). It refuses n < 1
// (ErrBelowMinimum) and more cores than its node has free
// (ErrInsufficient).
func (l *Ledger) ResizeCPUs(name string, n int) (Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.allocs[name]
	if !ok {
		return Change{}, fmt.Errorf("ledger: resize %q: %w", name, ErrNotFound)
	}
	if n < 1 {
		return Change{}, fmt.Errorf("ledger: resize %q to %d cpus: a subOS needs at least one: %w", name, n, ErrBelowMinimum)
	}
	ch := &Change{Op: "resize"}
	ch.touch(name)
	switch have := len(a.Cores); {
	case n > have:
		want := n - have
		if _, _, free := l.freeOnNode(a.Node); free < want {
			return Change{}, fmt.Errorf("ledger: resize %q from %d to %d cpus: wants %d more on node %d, only %d free there: %w: %w",
				name, have, n, want, a.Node, free, ErrInsufficient, ErrNoCores)
		}
		got := l.pickOnNode(a.Node, want)
		sort.Ints(got)
		for _, c := range got {
			l.owner[c] = name
		}
		a.Cores = slices.Sorted(slices.Values(append(slices.Clone(a.Cores), got...)))
		l.allocs[name] = a
		ch.Moves = append(ch.Moves, Move{From: "", To: name, Cores: got})
	case n < have:
		l.shedCores(name, have-n, ch)
	}
	return l.finish(ch), nil
}

// ResizeMemory makes name hold bytes of memory, in its pool (node, page
// size). bytes must be a multiple of block (the hotplug block size) and
// of the page size (ErrNotMultiple), and more than 0 (ErrBelowMinimum).
// Growing takes free pages (ErrInsufficient when too few); shrinking gives
// pages up, borrowed ones to their lenders first.
func (l *Ledger) ResizeMemory(name string, bytes, block uint64) (Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.allocs[name]
	if !ok {
		return Change{}, fmt.Errorf("ledger: resize %q: %w", name, ErrNotFound)
	}
	switch {
	case block == 0:
		return Change{}, fmt.Errorf("ledger: resize %q: block size 0: %w", name, ErrInvalid)
	case bytes == 0:
		return Change{}, fmt.Errorf("ledger: resize %q to 0 bytes of memory: a subOS needs at least one page: %w", name, ErrBelowMinimum)
	case bytes%block != 0:
		return Change{}, fmt.Errorf("ledger: resize %q to %d bytes: not a multiple of the block size %s: %w", name, bytes, sizeName(block), ErrNotMultiple)
	case bytes%a.PageSize != 0:
		return Change{}, fmt.Errorf("ledger: resize %q to %d bytes: not a multiple of its page size %s: %w", name, bytes, sizeName(a.PageSize), ErrNotMultiple)
	}
	ch := &Change{Op: "resize"}
	ch.touch(name)
	pages := bytes / a.PageSize
	switch {
	case pages > a.Pages:
		want := pages - a.Pages
		k := poolKey{a.Node, a.PageSize}
		if free := l.freePages(k); free < want {
			return Change{}, fmt.Errorf("ledger: resize %q from %s to %s: wants %d more pages of %s on node %d, only %d free: %w: %w",
				name, sizeName(a.Memory), sizeName(bytes), want, sizeName(a.PageSize), a.Node, free, ErrInsufficient, ErrNoMemory)
		}
		l.used[k] += want
		a.Pages, a.Memory = pages, bytes
		l.allocs[name] = a
		ch.Moves = append(ch.Moves, Move{From: "", To: name, Pages: want, Memory: want * a.PageSize})
	case pages < a.Pages:
		l.shedPages(name, a.Pages-pages, ch)
	}
	return l.finish(ch), nil
}

// LendRequest asks that From lend To some of its own cores and memory.
type LendRequest struct {
	From   string // lender
	To     string // borrower
	CPUs   int    // cores to lend
	Memory uint64 // bytes to lend, a multiple of the page size; the two must share a pool
}

// Lend moves CPUs of From's own cores and Memory of its own pages to To,
// recorded as a loan. The lender keeps at least one core and one page
// (ErrInsufficient); the cores it gives are those on To's memory node
// first, highest ID first.
func (l *Ledger) Lend(r LendRequest) (Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lend("lend", KindLend, r)
}

// Preempt takes cpus of from's own cores for to, recorded as a preempted
// loan. to must be LatencyCritical and from Batch (ErrWrongDirection);
// from keeps at least one core (ErrInsufficient).
func (l *Ledger) Preempt(to, from string, cpus int) (Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lend("preempt", KindPreempt, LendRequest{From: from, To: to, CPUs: cpus})
}

func (l *Ledger) lend(op string, kind LoanKind, r LendRequest) (Change, error) {
	fail := func(format string, args ...any) (Change, error) {
		return Change{}, fmt.Errorf("ledger: %s %d cpus and %d bytes from %q to %q: "+format,
			append([]any{op, r.CPUs, r.Memory, r.From, r.To}, args...)...)
	}
	from, ok := l.allocs[r.From]
	if !ok {
		return fail("lender %q does not exist: %w", r.From, ErrNotFound)
	}
	to, ok := l.allocs[r.To]
	if !ok {
		return fail("borrower %q does not exist: %w", r.To, ErrNotFound)
	}
	switch {
	case r.From == r.To:
		return fail("a subOS cannot lend to itself: %w", ErrInvalid)
	case r.CPUs < 0:
		return fail("negative cpus: %w", ErrInvalid)
	case r.CPUs == 0 && r.Memory == 0:
		return fail("nothing to move: %w", ErrInvalid)
	}
	if kind == KindPreempt && (classOf(to) != LatencyCritical || classOf(from) != Batch) {
		return fail("only a %s subOS may preempt a %s one; %q is %s and %q is %s: %w",
			LatencyCritical, Batch, r.To, classOf(to), r.From, classOf(from), ErrWrongDirection)
	}
	owned := from.OwnedCores()
	if r.CPUs > 0 && r.CPUs > len(owned)-1 {
		return fail("%q owns %d cores (and borrowed %d) and keeps at least one, so it can lend at most %d: %w: %w",
			r.From, len(owned), len(from.Cores)-len(owned), len(owned)-1, ErrInsufficient, ErrNoCores)
	}
	var pages uint64
	if r.Memory > 0 {
		switch {
		case from.Node != to.Node || from.PageSize != to.PageSize:
			return fail("memory moves only within a pool: %q has %s pages on node %d, %q %s pages on node %d: %w",
				r.From, sizeName(from.PageSize), from.Node, r.To, sizeName(to.PageSize), to.Node, ErrInvalid)
		case r.Memory%from.PageSize != 0:
			return fail("%d bytes is not a multiple of the page size %s: %w", r.Memory, sizeName(from.PageSize), ErrNotMultiple)
		}
		pages = r.Memory / from.PageSize
		if own := from.OwnedPages(); own == 0 || pages > own-1 {
			return fail("%q owns %d pages of %s and keeps at least one, so it can lend at most %d: %w: %w",
				r.From, own, sizeName(from.PageSize), max(own, 1)-1, ErrInsufficient, ErrNoMemory)
		}
	}

	// Pick the cores: on the borrower's node first, highest ID first.
	cand := slices.Clone(owned)
	sort.SliceStable(cand, func(i, j int) bool {
		ni, nj := l.cpus[cand[i]].Node == to.Node, l.cpus[cand[j]].Node == to.Node
		if ni != nj {
			return ni
		}
		return cand[i] > cand[j]
	})
	cores := slices.Sorted(slices.Values(cand[:r.CPUs]))
	if len(cores) == 0 {
		cores = nil
	}

	l.nextLoan++
	ln := Loan{ID: l.nextLoan, Lender: r.From, Borrower: r.To, Kind: kind, Cores: cores, Pages: pages, Memory: pages * from.PageSize}
	from.Cores = without(from.Cores, cores)
	from.Pages -= pages
	from.Memory = from.Pages * from.PageSize
	to.Cores = slices.Sorted(slices.Values(append(slices.Clone(to.Cores), cores...)))
	to.Pages += pages
	to.Memory = to.Pages * to.PageSize
	to.Borrowed = append(cloneLoans(to.Borrowed), ln)
	for _, c := range cores {
		l.owner[c] = r.To
	}
	l.allocs[r.From], l.allocs[r.To] = from, to
	ch := &Change{Op: op}
	ch.touch(r.From, r.To)
	ch.Moves = []Move{{From: r.From, To: r.To, Cores: slices.Clone(cores), Pages: pages, Memory: ln.Memory, Loan: ln.ID}}
	out := l.finish(ch)
	lnCopy := cloneLoans([]Loan{ln})[0]
	out.Loan = &lnCopy
	return out, nil
}

// ReturnRequest says which borrowed resources go back. With ID, that loan;
// else every loan from Lender to Borrower (preempted ones first, the most
// recent first). CPUs and Memory say how much; both 0 means all of it.
type ReturnRequest struct {
	ID       uint64
	Lender   string
	Borrower string
	CPUs     int
	Memory   uint64 // bytes, a multiple of the page size
}

// Return gives borrowed resources back to their lender (to the free pool
// when the lender no longer exists). It refuses when there is no such loan
// (ErrNoLoan) or the loans hold less than asked (ErrInsufficient).
func (l *Ledger) Return(r ReturnRequest) (Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	what := fmt.Sprintf("loan %d", r.ID)
	if r.ID == 0 {
		what = fmt.Sprintf("the loans from %q to %q", r.Lender, r.Borrower)
	}
	fail := func(format string, args ...any) (Change, error) {
		return Change{}, fmt.Errorf("ledger: return %s: "+format, append([]any{what}, args...)...)
	}
	borrower := r.Borrower
	if r.ID != 0 {
		borrower = ""
		for name, a := range l.allocs {
			for _, ln := range a.Borrowed {
				if ln.ID == r.ID {
					borrower = name
				}
			}
		}
		if borrower == "" {
			return fail("no loan has that ID: %w", ErrNoLoan)
		}
	}
	a, ok := l.allocs[borrower]
	if !ok {
		return fail("borrower %q does not exist: %w", borrower, ErrNotFound)
	}
	var ids []uint64
	var cores int
	var pages uint64
	for _, ln := range unwindOrder(a.Borrowed) {
		if ln.ID == r.ID || (r.ID == 0 && ln.Lender == r.Lender) {
			ids = append(ids, ln.ID)
			cores += len(ln.Cores)
			pages += ln.Pages
		}
	}
	if len(ids) == 0 {
		return fail("%q borrowed nothing from %q: %w", r.Borrower, r.Lender, ErrNoLoan)
	}
	wantCores, wantPages := r.CPUs, uint64(0)
	switch {
	case r.CPUs < 0:
		return fail("negative cpus: %w", ErrInvalid)
	case r.Memory%a.PageSize != 0:
		return fail("%d bytes is not a multiple of the page size %s: %w", r.Memory, sizeName(a.PageSize), ErrNotMultiple)
	case r.CPUs == 0 && r.Memory == 0:
		wantCores, wantPages = cores, pages
	default:
		wantPages = r.Memory / a.PageSize
	}
	if wantCores > cores || wantPages > pages {
		return fail("asks back %d cores and %d pages, the loans hold %d cores and %d pages: %w",
			wantCores, wantPages, cores, pages, ErrInsufficient)
	}
	ch := &Change{Op: "return"}
	ch.touch(borrower)
	for _, id := range ids {
		wantCores -= l.returnCores(borrower, id, wantCores, ch)
		wantPages -= l.returnPages(borrower, id, wantPages, ch)
	}
	return l.finish(ch), nil
}

// Unwind settles name's loans: what it borrowed goes back to the lenders
// (to the free pool when a lender no longer exists) and what it lent
// becomes the borrowers' own. Release does the same before freeing.
func (l *Ledger) Unwind(name string) (Change, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.allocs[name]; !ok {
		return Change{}, fmt.Errorf("ledger: unwind %q: %w", name, ErrNotFound)
	}
	ch := &Change{Op: "unwind"}
	l.unwind(name, ch)
	return l.finish(ch), nil
}

func (l *Ledger) unwind(name string, ch *Change) {
	ch.touch(name)
	for _, ln := range unwindOrder(l.allocs[name].Borrowed) {
		l.returnCores(name, ln.ID, len(ln.Cores), ch)
		l.returnPages(name, ln.ID, ln.Pages, ch)
	}
	for bname, b := range l.allocs {
		kept := b.Borrowed[:0:0]
		for _, ln := range b.Borrowed {
			if ln.Lender == name {
				ch.touch(bname)
				ch.Moves = append(ch.Moves, Move{From: name, To: bname, Loan: ln.ID}) // ownership only
				continue
			}
			kept = append(kept, ln)
		}
		if len(kept) != len(b.Borrowed) {
			b.Borrowed = nilIfEmpty(kept)
			l.allocs[bname] = b
		}
	}
}

// DissolveOrphans makes every loan whose lender does not exist the
// borrower's own, e.g. after a restarted supervisor adopted a borrower but
// not its lender. Call it once every record has been adopted.
func (l *Ledger) DissolveOrphans() Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := &Change{Op: "dissolve"}
	for bname, b := range l.allocs {
		kept := b.Borrowed[:0:0]
		for _, ln := range b.Borrowed {
			if _, ok := l.allocs[ln.Lender]; !ok {
				ch.touch(bname)
				ch.Moves = append(ch.Moves, Move{From: ln.Lender, To: bname, Loan: ln.ID})
				continue
			}
			kept = append(kept, ln)
		}
		if len(kept) != len(b.Borrowed) {
			b.Borrowed = nilIfEmpty(kept)
			l.allocs[bname] = b
		}
	}
	return l.finish(ch)
}

// unwindOrder returns loans in the order they go back: preempted before
// lent, the most recent (highest ID) first within each kind.
func unwindOrder(ls []Loan) []Loan {
	out := slices.Clone(ls)
	sort.Slice(out, func(i, j int) bool {
		pi, pj := out[i].Kind == KindPreempt, out[j].Kind == KindPreempt
		if pi != pj {
			return pi
		}
		return out[i].ID > out[j].ID
	})
	return out
}

// shedCores gives up k of name's cores, k < len(Cores): borrowed first,
// then owned ones (highest ID first) to the free pool.
func (l *Ledger) shedCores(name string, k int, ch *Change) {
	for _, ln := range unwindOrder(l.allocs[name].Borrowed) {
		if k == 0 {
			return
		}
		k -= l.returnCores(name, ln.ID, k, ch)
	}
	if k == 0 {
		return
	}
	a := l.allocs[name]
	// Owned cores off the memory node go first, then the highest IDs
	// (with Linux numbering, second SMT threads before first ones).
	owned := a.OwnedCores()
	sort.SliceStable(owned, func(i, j int) bool {
		oi, oj := l.cpus[owned[i]].Node != a.Node, l.cpus[owned[j]].Node != a.Node
		if oi != oj {
			return oi
		}
		return owned[i] > owned[j]
	})
	gone := slices.Sorted(slices.Values(owned[:k]))
	for _, c := range gone {
		delete(l.owner, c)
	}
	a.Cores = without(a.Cores, gone)
	l.allocs[name] = a
	ch.Moves = append(ch.Moves, Move{From: name, To: "", Cores: gone})
}

// shedPages gives up n of name's pages, n < Pages: borrowed first, then
// owned ones to the free pool.
func (l *Ledger) shedPages(name string, n uint64, ch *Change) {
	for _, ln := range unwindOrder(l.allocs[name].Borrowed) {
		if n == 0 {
			return
		}
		n -= l.returnPages(name, ln.ID, n, ch)
	}
	if n == 0 {
		return
	}
	a := l.allocs[name]
	a.Pages -= n
	a.Memory = a.Pages * a.PageSize
	l.allocs[name] = a
	k := poolKey{a.Node, a.PageSize}
	l.used[k] -= n
	if l.used[k] == 0 {
		delete(l.used, k)
	}
	ch.Moves = append(ch.Moves, Move{From: name, To: "", Pages: n, Memory: n * a.PageSize})
}

// returnCores gives up to k cores of loan id (held by borrower) back to
// its lender, highest ID first, and returns how many.
func (l *Ledger) returnCores(borrower string, id uint64, k int, ch *Change) int {
	a := l.allocs[borrower]
	i := slices.IndexFunc(a.Borrowed, func(ln Loan) bool { return ln.ID == id })
	if i < 0 || k <= 0 || len(a.Borrowed[i].Cores) == 0 {
		return 0
	}
	a.Borrowed = cloneLoans(a.Borrowed)
	ln := &a.Borrowed[i]
	k = min(k, len(ln.Cores))
	back := slices.Clone(ln.Cores[len(ln.Cores)-k:])
	ln.Cores = nilIfEmpty(ln.Cores[:len(ln.Cores)-k])
	a.Cores = without(a.Cores, back)
	to := ""
	if lender, ok := l.allocs[ln.Lender]; ok {
		to = ln.Lender
		lender.Cores = slices.Sorted(slices.Values(append(slices.Clone(lender.Cores), back...)))
		l.allocs[to] = lender
	}
	for _, c := range back {
		if to == "" {
			delete(l.owner, c)
		} else {
			l.owner[c] = to
		}
	}
	ch.Moves = append(ch.Moves, Move{From: borrower, To: to, Cores: back, Loan: id})
	ch.touch(to)
	a.Borrowed = dropEmpty(a.Borrowed)
	l.allocs[borrower] = a
	return k
}

// returnPages gives up to n pages of loan id back to its lender and
// returns how many.
func (l *Ledger) returnPages(borrower string, id uint64, n uint64, ch *Change) uint64 {
	a := l.allocs[borrower]
	i := slices.IndexFunc(a.Borrowed, func(ln Loan) bool { return ln.ID == id })
	if i < 0 || n == 0 || a.Borrowed[i].Pages == 0 {
		return 0
	}
	a.Borrowed = cloneLoans(a.Borrowed)
	ln := &a.Borrowed[i]
	n = min(n, ln.Pages)
	ln.Pages -= n
	ln.Memory = ln.Pages * a.PageSize
	a.Pages -= n
	a.Memory = a.Pages * a.PageSize
	to := ""
	if lender, ok := l.allocs[ln.Lender]; ok {
		to = ln.Lender
		lender.Pages += n
		lender.Memory = lender.Pages * lender.PageSize
		l.allocs[to] = lender
	} else {
		k := poolKey{a.Node, a.PageSize}
		l.used[k] -= n
		if l.used[k] == 0 {
			delete(l.used, k)
		}
	}
	ch.Moves = append(ch.Moves, Move{From: borrower, To: to, Pages: n, Memory: n * a.PageSize, Loan: id})
	ch.touch(to)
	a.Borrowed = dropEmpty(a.Borrowed)
	l.allocs[borrower] = a
	return n
}

func dropEmpty(ls []Loan) []Loan {
	out := ls[:0]
	for _, ln := range ls {
		if len(ln.Cores) > 0 || ln.Pages > 0 {
			out = append(out, ln)
		}
	}
	return nilIfEmpty(out)
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// without returns s less the elements of drop, in a new slice.
func without(s, drop []int) []int {
	var out []int
	for _, x := range s {
		if !slices.Contains(drop, x) {
			out = append(out, x)
		}
	}
	return out
}

// checkBorrowed adds what is wrong with a.Borrowed to ps; the caller holds
// l.mu. The lender need not exist (see DissolveOrphans).
func (l *Ledger) checkBorrowed(a Allocation, ps *problems) {
	if len(a.Borrowed) == 0 {
		return
	}
	taken := make(map[uint64]bool)
	for _, b := range l.allocs {
		for _, ln := range b.Borrowed {
			taken[ln.ID] = true
		}
	}
	seen := make(map[uint64]bool)
	inLoan := make(map[int]uint64)
	for _, ln := range a.Borrowed {
		for _, msg := range loanProblems(a, ln) {
			ps.add(ErrInvalid, "borrowed", msg)
		}
		switch {
		case seen[ln.ID]:
			ps.add(ErrInvalid, "borrowed", fmt.Sprintf("loan %d listed twice", ln.ID))
		case taken[ln.ID]:
			ps.add(ErrExists, "borrowed", fmt.Sprintf("loan %d is already recorded for another subOS", ln.ID))
		}
		seen[ln.ID] = true
		for _, c := range ln.Cores {
			if prev, dup := inLoan[c]; dup {
				ps.add(ErrInvalid, "borrowed", fmt.Sprintf("cpu %d is in loans %d and %d", c, prev, ln.ID))
			}
			inLoan[c] = ln.ID
		}
	}
	if len(a.OwnedCores()) == 0 {
		ps.add(ErrInvalid, "borrowed", "every core is borrowed: a subOS owns at least one")
	}
	var borrowed uint64
	for _, ln := range a.Borrowed {
		borrowed += ln.Pages
	}
	if borrowed >= a.Pages {
		ps.add(ErrInvalid, "borrowed", fmt.Sprintf("%d pages borrowed of %d held: a subOS owns at least one", borrowed, a.Pages))
	}
}

// loanProblems says what is wrong with loan ln held by a, by itself.
func loanProblems(a Allocation, ln Loan) []string {
	var out []string
	bad := func(format string, args ...any) {
		out = append(out, fmt.Sprintf("loan %d: ", ln.ID)+fmt.Sprintf(format, args...))
	}
	if ln.ID == 0 {
		bad("ID 0 is not a loan ID")
	}
	if ln.Borrower != a.Name {
		bad("borrower %q, held by %q", ln.Borrower, a.Name)
	}
	if msg := NameProblem(ln.Lender); msg != "" {
		bad("lender %s", msg)
	} else if ln.Lender == a.Name {
		bad("lent by %q to itself", a.Name)
	}
	if ln.Kind != KindLend && ln.Kind != KindPreempt {
		bad("kind %q, want %q or %q", ln.Kind, KindLend, KindPreempt)
	}
	if len(ln.Cores) == 0 && ln.Pages == 0 {
		bad("lends nothing")
	}
	if !slices.IsSorted(ln.Cores) {
		bad("cores %v not sorted", ln.Cores)
	}
	for _, c := range ln.Cores {
		if !slices.Contains(a.Cores, c) {
			bad("cpu %d is not among the borrower's cores %v", c, a.Cores)
		}
	}
	if ln.Memory != ln.Pages*a.PageSize {
		bad("%d pages of %s is not %d bytes", ln.Pages, sizeName(a.PageSize), ln.Memory)
	}
	return out
}

// verifyLoans checks the loans against the allocations; the caller holds l.mu.
func (l *Ledger) verifyLoans() []error {
	var errs []error
	ids := make(map[uint64]string)
	for name, a := range l.allocs {
		if a.Class != Batch && a.Class != LatencyCritical {
			errs = append(errs, fmt.Errorf("allocation %q: class %q", name, a.Class))
		}
		if len(a.Lent) > 0 {
			errs = append(errs, fmt.Errorf("allocation %q: Lent recorded, not derived", name))
		}
		var pages uint64
		inLoan := make(map[int]bool)
		for _, ln := range a.Borrowed {
			for _, msg := range loanProblems(a, ln) {
				errs = append(errs, fmt.Errorf("allocation %q: %s", name, msg))
			}
			if prev, dup := ids[ln.ID]; dup {
				errs = append(errs, fmt.Errorf("loan %d held by both %q and %q", ln.ID, prev, name))
			}
			ids[ln.ID] = name
			if ln.ID > l.nextLoan {
				errs = append(errs, fmt.Errorf("loan %d above the last ID handed out, %d", ln.ID, l.nextLoan))
			}
			for _, c := range ln.Cores {
				if inLoan[c] {
					errs = append(errs, fmt.Errorf("allocation %q: cpu %d in two loans", name, c))
				}
				inLoan[c] = true
			}
			pages += ln.Pages
		}
		if len(a.OwnedCores()) == 0 {
			errs = append(errs, fmt.Errorf("allocation %q owns no core, all %v are borrowed", name, a.Cores))
		}
		if pages >= a.Pages {
			errs = append(errs, fmt.Errorf("allocation %q owns no page: %d borrowed of %d", name, pages, a.Pages))
		}
	}
	return errs
}

// Restore puts back allocations as a Change's caller saw them before the
// change (Get of every subOS the change touched), undoing it: the caller
// could not apply it to the host. Each named subOS must still exist, and
// the restored cores must be free or held by the restored subOSes
// (ErrInvalid otherwise, changing nothing).
func (l *Ledger) Restore(allocs []Allocation) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := map[string]bool{}
	for _, a := range allocs {
		if _, ok := l.allocs[a.Name]; !ok {
			return fmt.Errorf("ledger: restore %q: %w", a.Name, ErrNotFound)
		}
		names[a.Name] = true
	}
	for _, a := range allocs {
		for _, c := range a.Cores {
			if o, held := l.owner[c]; held && !names[o] {
				return fmt.Errorf("ledger: restore %q: core %d is %q's now: %w", a.Name, c, o, ErrInvalid)
			}
		}
	}
	for _, a := range allocs {
		cur := l.allocs[a.Name]
		for _, c := range cur.Cores {
			delete(l.owner, c)
		}
		k := poolKey{cur.Node, cur.PageSize}
		l.used[k] -= cur.Pages
		if l.used[k] == 0 {
			delete(l.used, k)
		}
	}
	for _, a := range allocs {
		a = a.clone()
		a.Lent = nil // a view, rebuilt from the borrowers
		for _, c := range a.Cores {
			l.owner[c] = a.Name
		}
		l.used[poolKey{a.Node, a.PageSize}] += a.Pages
		l.allocs[a.Name] = a
	}
	return nil
}
