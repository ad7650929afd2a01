package ledger

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// expectElasticRefused checks that op fails with every sentinel in want,
// says each of msgs, and leaves the ledger as it was.
func expectElasticRefused(t *testing.T, l *Ledger, op func() error, want []error, msgs ...string) {
	t.Helper()
	before := takeSnapshot(l)
	err := op()
	if err == nil {
		t.Fatalf("succeeded, want %v", want)
	}
	for _, w := range want {
		if !errors.Is(err, w) {
			t.Errorf("error %q does not wrap %v", err, w)
		}
	}
	for _, m := range msgs {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not say %q", err, m)
		}
	}
	if after := takeSnapshot(l); !reflect.DeepEqual(before, after) {
		t.Errorf("refusal changed the ledger:\n%+v\n%+v", before, after)
	}
}

func mustChange(t *testing.T, l *Ledger, op func() (Change, error)) Change {
	t.Helper()
	ch, err := op()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func TestResizeCPUs(t *testing.T) {
	l := newTestLedger(t) // cpu 0 is housekeeping
	mustReserve(t, l, Request{Name: "web", Cores: []int{2}, Node: -1, Memory: 2 * mib, PageSize: 2 * mib})
	// Node 1 has free 3, 6, 7: a whole core's threads (3, then 7) before
	// the free thread of a core shared with another owner (6), Reserve's rule.
	ch := mustChange(t, l, func() (Change, error) { return l.ResizeCPUs("web", 3) })
	if a, _ := l.Get("web"); !slices.Equal(a.Cores, []int{2, 3, 7}) {
		t.Errorf("grown to %v, want [2 3 7]", a.Cores)
	}
	if want := []Move{{From: "", To: "web", Cores: []int{3, 7}}}; !reflect.DeepEqual(ch.Moves, want) {
		t.Errorf("moves %+v, want %+v", ch.Moves, want)
	}
	expectElasticRefused(t, l, func() error { _, err := l.ResizeCPUs("web", 5); return err },
		[]error{ErrInsufficient, ErrNoCores}, "2 more on node 1, only 1 free")
	expectElasticRefused(t, l, func() error { _, err := l.ResizeCPUs("web", 0); return err },
		[]error{ErrBelowMinimum}, "at least one")
	expectElasticRefused(t, l, func() error { _, err := l.ResizeCPUs("nope", 1); return err }, []error{ErrNotFound})
	mustChange(t, l, func() (Change, error) { return l.ResizeCPUs("web", 1) })
	if a, _ := l.Get("web"); !slices.Equal(a.Cores, []int{2}) {
		t.Errorf("shrunk to %v, want [2]", a.Cores)
	}
}

func TestResizeMemory(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "web", CPUs: 1, Node: 1, Memory: 64 * mib, PageSize: 2 * mib})
	expectElasticRefused(t, l, func() error { _, err := l.ResizeMemory("web", 100*mib, 128*mib); return err },
		[]error{ErrNotMultiple}, "block size 128 MiB")
	expectElasticRefused(t, l, func() error { _, err := l.ResizeMemory("web", 0, 128*mib); return err },
		[]error{ErrBelowMinimum})
	expectElasticRefused(t, l, func() error { _, err := l.ResizeMemory("web", 1024*mib, 128*mib); return err },
		[]error{ErrInsufficient, ErrNoMemory}, "only 224 free")
	mustChange(t, l, func() (Change, error) { return l.ResizeMemory("web", 512*mib, 128*mib) })
	if l.FreePages(1, 2*mib) != 0 {
		t.Errorf("free pages %d, want 0", l.FreePages(1, 2*mib))
	}
	mustChange(t, l, func() (Change, error) { return l.ResizeMemory("web", 128*mib, 128*mib) })
	if a, _ := l.Get("web"); a.Memory != 128*mib || a.Pages != 64 || l.FreePages(1, 2*mib) != 192 {
		t.Errorf("after shrink: %+v, free %d", a, l.FreePages(1, 2*mib))
	}
}

func TestLendReturn(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "a", Cores: []int{1, 5, 4}, Node: 0, Memory: 64 * mib, PageSize: 2 * mib})
	mustReserve(t, l, Request{Name: "b", Cores: []int{2}, Node: 0, Memory: 64 * mib, PageSize: 2 * mib, anyNode: true})
	expectElasticRefused(t, l, func() error { _, err := l.Lend(LendRequest{From: "a", To: "b", CPUs: 3}); return err },
		[]error{ErrInsufficient}, "can lend at most 2")
	expectElasticRefused(t, l, func() error { _, err := l.Lend(LendRequest{From: "a", To: "b", Memory: 64 * mib}); return err },
		[]error{ErrInsufficient, ErrNoMemory}, "at most 31")
	expectElasticRefused(t, l, func() error { _, err := l.Lend(LendRequest{From: "a", To: "a", CPUs: 1}); return err },
		[]error{ErrInvalid}, "itself")
	ch := mustChange(t, l, func() (Change, error) { return l.Lend(LendRequest{From: "a", To: "b", CPUs: 2, Memory: 16 * mib}) })
	want := Loan{ID: 1, Lender: "a", Borrower: "b", Kind: KindLend, Cores: []int{4, 5}, Pages: 8, Memory: 16 * mib}
	if ch.Loan == nil || !reflect.DeepEqual(*ch.Loan, want) {
		t.Fatalf("loan %+v, want %+v", ch.Loan, want)
	}
	a, _ := l.Get("a")
	b, _ := l.Get("b")
	if !slices.Equal(a.Cores, []int{1}) || a.Pages != 24 || !reflect.DeepEqual(a.Lent, []Loan{want}) {
		t.Errorf("lender %+v", a)
	}
	if !slices.Equal(b.Cores, []int{2, 4, 5}) || !slices.Equal(b.OwnedCores(), []int{2}) || b.Pages != 40 || b.OwnedPages() != 32 ||
		!reflect.DeepEqual(b.Borrowed, []Loan{want}) {
		t.Errorf("borrower %+v", b)
	}
	if !reflect.DeepEqual(ch.Allocations, []Allocation{a, b}) {
		t.Errorf("change allocations %+v", ch.Allocations)
	}
	// The borrower cannot lend on what it borrowed.
	expectElasticRefused(t, l, func() error { _, err := l.Lend(LendRequest{From: "b", To: "a", CPUs: 1}); return err },
		[]error{ErrInsufficient}, "owns 1 cores (and borrowed 2)")
	expectElasticRefused(t, l, func() error { _, err := l.Return(ReturnRequest{ID: 9}); return err }, []error{ErrNoLoan})
	expectElasticRefused(t, l, func() error {
		_, err := l.Return(ReturnRequest{Lender: "a", Borrower: "b", CPUs: 3})
		return err
	}, []error{ErrInsufficient}, "loans hold 2 cores")
	mustChange(t, l, func() (Change, error) { return l.Return(ReturnRequest{Lender: "a", Borrower: "b", CPUs: 1}) })
	if a, _ := l.Get("a"); !slices.Equal(a.Cores, []int{1, 5}) {
		t.Errorf("after returning one core, lender holds %v", a.Cores)
	}
	mustChange(t, l, func() (Change, error) { return l.Return(ReturnRequest{ID: 1}) })
	a, _ = l.Get("a")
	b, _ = l.Get("b")
	if !slices.Equal(a.Cores, []int{1, 4, 5}) || a.Pages != 32 || a.Lent != nil || b.Borrowed != nil || !slices.Equal(b.Cores, []int{2}) {
		t.Errorf("after return: %+v %+v", a, b)
	}
}

func TestPreemptUnwindsFirst(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "lc", Cores: []int{1}, Node: 0, Memory: 8 * mib, PageSize: 2 * mib, Class: LatencyCritical})
	mustReserve(t, l, Request{Name: "batch", Cores: []int{2, 6}, Node: 1, Memory: 8 * mib, PageSize: 2 * mib})
	mustReserve(t, l, Request{Name: "friend", Cores: []int{3, 7}, Node: 1, Memory: 8 * mib, PageSize: 2 * mib, Class: LatencyCritical})
	expectElasticRefused(t, l, func() error { _, err := l.Preempt("batch", "lc", 1); return err },
		[]error{ErrWrongDirection}, `"batch" is batch and "lc" is latency-critical`)
	expectElasticRefused(t, l, func() error { _, err := l.Preempt("lc", "friend", 1); return err }, []error{ErrWrongDirection})
	expectElasticRefused(t, l, func() error { _, err := l.Preempt("lc", "batch", 2); return err }, []error{ErrInsufficient})
	mustChange(t, l, func() (Change, error) { return l.Preempt("lc", "batch", 1) })                            // loan 1: cpu 6
	mustChange(t, l, func() (Change, error) { return l.Lend(LendRequest{From: "friend", To: "lc", CPUs: 1}) }) // loan 2: cpu 7
	mustChange(t, l, func() (Change, error) { return l.ResizeCPUs("lc", 4) })                                  // owned: 1 and 4 (node 0)
	// Shrinking by one gives the preempted core back, though the loan from friend is newer.
	ch := mustChange(t, l, func() (Change, error) { return l.ResizeCPUs("lc", 3) })
	if want := []Move{{From: "lc", To: "batch", Cores: []int{6}, Loan: 1}}; !reflect.DeepEqual(ch.Moves, want) {
		t.Errorf("moves %+v, want %+v", ch.Moves, want)
	}
	// Then the lent core, then owned ones to the free pool.
	ch = mustChange(t, l, func() (Change, error) { return l.ResizeCPUs("lc", 1) })
	if want := []Move{{From: "lc", To: "friend", Cores: []int{7}, Loan: 2}, {From: "lc", To: "", Cores: []int{4}}}; !reflect.DeepEqual(ch.Moves, want) {
		t.Errorf("moves %+v, want %+v", ch.Moves, want)
	}
	// Release unwinds: the preempted core goes back to batch, not to the pool.
	mustChange(t, l, func() (Change, error) { return l.Preempt("lc", "batch", 1) })
	if _, err := l.Release("lc"); err != nil {
		t.Fatal(err)
	}
	if a, _ := l.Get("batch"); !slices.Equal(a.Cores, []int{2, 6}) {
		t.Errorf("after the borrower's release, batch holds %v", a.Cores)
	}
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseLenderAndOrphans(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "a", Cores: []int{2, 6}, Node: 1, Memory: 8 * mib, PageSize: 2 * mib})
	mustReserve(t, l, Request{Name: "b", Cores: []int{3}, Node: 1, Memory: 8 * mib, PageSize: 2 * mib})
	mustChange(t, l, func() (Change, error) { return l.Lend(LendRequest{From: "a", To: "b", CPUs: 1, Memory: 2 * mib}) })
	b, _ := l.Get("b")
	// A restarted supervisor adopts the borrower but not the lender.
	l2, err := New(testInventory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l2.Adopt(b); err != nil {
		t.Fatal(err)
	}
	if err := l2.Verify(); err != nil {
		t.Fatal(err)
	}
	ch := l2.DissolveOrphans()
	if got, _ := l2.Get("b"); got.Borrowed != nil || !slices.Equal(got.OwnedCores(), []int{3, 6}) || len(ch.Allocations) != 1 {
		t.Errorf("after DissolveOrphans: %+v (%+v)", got, ch)
	}
	// Releasing the lender leaves the borrower owning what it borrowed.
	if _, err := l.Release("a"); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Get("b"); got.Borrowed != nil || !slices.Equal(got.Cores, []int{3, 6}) {
		t.Errorf("after the lender's release: %+v", got)
	}
	if err := l.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestAdoptRefusesBadLoans(t *testing.T) {
	l := newTestLedger(t)
	base := Allocation{Name: "b", Cores: []int{2, 6}, Node: 1, Memory: 8 * mib, PageSize: 2 * mib, Pages: 4}
	loan := Loan{ID: 3, Lender: "a", Borrower: "b", Kind: KindLend, Cores: []int{6}}
	for name, mod := range map[string]func(a *Allocation){
		"core not held":   func(a *Allocation) { a.Borrowed[0].Cores = []int{7} },
		"all borrowed":    func(a *Allocation) { a.Borrowed[0].Cores = []int{2, 6} },
		"self loan":       func(a *Allocation) { a.Borrowed[0].Lender = "b" },
		"bad kind":        func(a *Allocation) { a.Borrowed[0].Kind = "gift" },
		"id 0":            func(a *Allocation) { a.Borrowed[0].ID = 0 },
		"all pages":       func(a *Allocation) { a.Borrowed[0].Pages, a.Borrowed[0].Memory = 4, 8*mib },
		"wrong borrower":  func(a *Allocation) { a.Borrowed[0].Borrower = "c" },
		"duplicate loans": func(a *Allocation) { a.Borrowed = append(a.Borrowed, a.Borrowed[0]) },
	} {
		a := base.clone()
		a.Borrowed = []Loan{loan}
		a.Borrowed[0].Cores = slices.Clone(loan.Cores)
		mod(&a)
		before := takeSnapshot(l)
		if err := l.Adopt(a); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Adopt = %v, want ErrInvalid", name, err)
		}
		if !reflect.DeepEqual(before, takeSnapshot(l)) {
			t.Errorf("%s: refused Adopt changed the ledger", name)
		}
	}
}

// An allocation recorded before classes and loans existed still decodes
// and adopts, as a batch subOS with no loans.
func TestOldAllocationRecord(t *testing.T) {
	var a Allocation
	old := `{"name":"web","cores":[2,3],"node":1,"memory":67108864,"page_size":2097152,"pages":32,"devices":null}`
	if err := json.Unmarshal([]byte(old), &a); err != nil {
		t.Fatal(err)
	}
	l := newTestLedger(t)
	if err := l.Adopt(a); err != nil {
		t.Fatal(err)
	}
	got, _ := l.Get("web")
	if got.Class != Batch || got.Borrowed != nil {
		t.Errorf("adopted %+v", got)
	}
	out, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"name":"web","cores":[2,3],"node":1,"memory":67108864,"page_size":2097152,"pages":32,"devices":null,"class":"batch"}`; string(out) != want {
		t.Errorf("JSON %s, want %s", out, want)
	}
}

// Restore undoes a resize and a loan exactly, and refuses to take cores
// another subOS holds now.
func TestRestore(t *testing.T) {
	l := newTestLedger(t)
	mustReserve(t, l, Request{Name: "a", Cores: []int{1, 5, 4}, Node: 0, Memory: 64 * mib, PageSize: 2 * mib})
	mustReserve(t, l, Request{Name: "b", Cores: []int{2}, Node: 0, Memory: 64 * mib, PageSize: 2 * mib, anyNode: true})
	for _, op := range []func() (Change, error){
		func() (Change, error) { return l.ResizeCPUs("a", 2) },
		func() (Change, error) { return l.ResizeCPUs("a", 1) },
		func() (Change, error) { return l.Lend(LendRequest{From: "a", To: "b", CPUs: 2, Memory: 16 * mib}) },
	} {
		before := takeSnapshot(l)
		var saved []Allocation
		for _, n := range []string{"a", "b"} {
			a, _ := l.Get(n)
			saved = append(saved, a)
		}
		mustChange(t, l, op)
		if err := l.Restore(saved); err != nil {
			t.Fatal(err)
		}
		if err := l.Verify(); err != nil {
			t.Fatal(err)
		}
		if after := takeSnapshot(l); !reflect.DeepEqual(before, after) {
			t.Errorf("restore did not undo the change:\n%+v\n%+v", before, after)
		}
	}
	// b grows onto a core; restoring a's old allocation holding it is refused.
	old, _ := l.Get("a")
	mustChange(t, l, func() (Change, error) { return l.ResizeCPUs("a", 1) })
	mustReserve(t, l, Request{Name: "c", Cores: []int{4}, Node: 0, Memory: 2 * mib, PageSize: 2 * mib})
	expectElasticRefused(t, l, func() error { return l.Restore([]Allocation{old}) }, []error{ErrInvalid}, "core 4")
	expectElasticRefused(t, l, func() error { return l.Restore([]Allocation{{Name: "zz"}}) }, []error{ErrNotFound})
}
