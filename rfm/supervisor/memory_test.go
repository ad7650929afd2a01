package supervisor

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"rainforest/ledger"
)

// newMemoryHost creates a (32 MiB, max_memory 96 MiB: a 64 MiB hotplug
// region) and b (bMemory, no hotplug memory) on the test pool of 64 2 MiB
// pages.
func newMemoryHost(t *testing.T, bMemory uint64) *elasticHost {
	t.Helper()
	h := &elasticHost{act: &fakeActuator{}, l: &fakeLauncher{}, guests: map[string]*fakeGuest{}}
	h.s = newTestSupervisor(t, t.TempDir(), h.act, h.l)
	t.Cleanup(func() { h.s.Close() })
	a, b := testSpec(t, "a", 1), testSpec(t, "b", 1)
	a.MaxMemory = 96 << 20
	b.Memory = bMemory
	for _, spec := range []Spec{a, b} {
		if _, err := h.s.Create(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// memory checks that the ledger, the record and the VMM agree that a
// holds want bytes.
func (h *elasticHost) memory(t *testing.T, step string, want uint64) {
	t.Helper()
	info, err := h.s.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if info.Allocation.Memory != want || info.Allocation.Pages != want/(2<<20) {
		t.Errorf("%s: the ledger gives a %d bytes (%d pages), want %d", step, info.Allocation.Memory, info.Allocation.Pages, want)
	}
	if plugged, requested := h.l.proc(info.PID).plugged(); plugged != want-32<<20 || requested != plugged {
		t.Errorf("%s: a's VMM has %d bytes plugged of %d requested, want %d", step, plugged, requested, want-32<<20)
	}
	recs, _ := h.s.store.Records()
	for _, r := range recs {
		if r.Allocation.Name == "a" && (r.Allocation.Memory != want || r.Intent != nil) {
			t.Errorf("%s: a's record holds %d bytes, intent %s", step, r.Allocation.Memory, r.Intent)
		}
	}
}

func TestResizeMemory(t *testing.T) {
	h := newMemoryHost(t, 32<<20)
	ctx := context.Background()
	info, _ := h.s.Get("a")
	if doc := h.l.proc(info.PID).doc; doc.HotplugMemory != 64<<20 || doc.Memory != 32<<20 {
		t.Fatalf("a's VMM has %d bytes of memory and %d of hotplug memory; want 32 MiB and 64 MiB", doc.Memory, doc.HotplugMemory)
	}
	h.memory(t, "created", 32<<20)
	pool := h.act.pages
	if _, err := h.s.ResizeMemory(ctx, "a", 64<<20); err != nil {
		t.Fatal(err)
	}
	h.memory(t, "grown", 64<<20)
	if h.act.pages != pool+16 {
		t.Errorf("the pool grew by %d pages for 32 MiB, want 16", h.act.pages-pool)
	}
	if _, err := h.s.ResizeMemory(ctx, "a", 32<<20); err != nil {
		t.Fatal(err)
	}
	h.memory(t, "shrunk", 32<<20)
	if h.act.pages != pool {
		t.Errorf("after the shrink the pool holds %d pages more than before the grow, want 0", h.act.pages-pool)
	}

	// Refusals change nothing.
	before := h.s.ledger.Allocations()
	for _, c := range []struct {
		name  string
		bytes uint64
		want  error
		says  string
	}{
		{"a", 16 << 20, ErrInvalid, "boot memory"},
		{"a", 128 << 20, ErrInvalid, "max_memory"},
		{"a", 33 << 20, ErrInvalid, "block"},
		{"b", 64 << 20, ErrInvalid, "no hotplug memory"},
		{"nope", 64 << 20, ErrNotFound, ""},
	} {
		if _, err := h.s.ResizeMemory(ctx, c.name, c.bytes); !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("resize %s to %d: %v, want %v saying %q", c.name, c.bytes, err, c.want, c.says)
		}
	}
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("refused resizes changed the ledger:\n%+v\n%+v", before, after)
	}
	h.memory(t, "refused", 32<<20)
}

// Growing past the free pool is refused, and a hugepage pool that cannot
// grow leaves everything as it was.
func TestResizeMemoryPool(t *testing.T) {
	h := newMemoryHost(t, 80<<20) // 112 of the 128 MiB: 16 MiB free
	ctx := context.Background()
	before := h.s.ledger.Allocations()
	if _, err := h.s.ResizeMemory(ctx, "a", 64<<20); !errors.Is(err, ledger.ErrNoMemory) {
		t.Errorf("resize past the free pool: %v, want ErrNoMemory", err)
	}
	h.act.failOn = "hugepages"
	if _, err := h.s.ResizeMemory(ctx, "a", 48<<20); err == nil || !strings.Contains(err.Error(), "hugepages") {
		t.Errorf("resize with a pool that cannot grow: %v", err)
	}
	h.act.failOn = ""
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("refused resizes changed the ledger:\n%+v\n%+v", before, after)
	}
	h.memory(t, "refused", 32<<20)
}

// A guest that plugs only part of it: the result says so exactly, and the
// ledger, the VMM and the pool hold what it reached.
func TestResizeMemoryPartial(t *testing.T) {
	h := newMemoryHost(t, 32<<20)
	ctx := context.Background()
	info, _ := h.s.Get("a")
	proc := h.l.proc(info.PID)
	proc.mu.Lock()
	proc.ceiling = 16 << 20
	proc.mu.Unlock()
	pool := h.act.pages
	got, err := h.s.ResizeMemory(ctx, "a", 96<<20)
	var perr *PartialError
	if !errors.As(err, &perr) || !errors.Is(err, ErrPartial) || perr.Requested != 96<<20 || perr.Memory != 48<<20 || perr.Plugged != 16<<20 {
		t.Fatalf("partial grow: %v (%+v)", err, perr)
	}
	if got.Allocation.Memory != 48<<20 {
		t.Errorf("the partial result's info gives %d bytes", got.Allocation.Memory)
	}
	h.memory(t, "partial", 48<<20)
	if h.act.pages != pool+8 {
		t.Errorf("the pool holds %d pages more, want the 8 the guest took", h.act.pages-pool)
	}
	proc.mu.Lock()
	proc.ceiling = 0
	proc.mu.Unlock()
	if _, err := h.s.ResizeMemory(ctx, "a", 32<<20); err != nil {
		t.Fatal(err)
	}
	h.memory(t, "shrunk", 32<<20)
	if h.act.pages != pool {
		t.Errorf("after the shrink the pool holds %d pages more, want 0", h.act.pages-pool)
	}
}

// A supervisor that dies during a resize: its successor puts the guest
// back on the memory of the record.
func TestMemoryChangeCrash(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	spec := testSpec(t, "a", 1)
	spec.MaxMemory = 96 << 20
	if _, err := s.Create(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	info, _ := s.Get("a")
	crashAt(s, 1)
	if step := run(func() { s.ResizeMemory(context.Background(), "a", 64<<20) }); step != "memory:a" {
		t.Fatalf("crashed at %q", step)
	}
	// The guest plugged before the crash.
	if _, err := l.proc(info.PID).SetMemory(context.Background(), 32<<20); err != nil {
		t.Fatal(err)
	}
	s.crashPoint = nil
	s.Close()
	s2 := newTestSupervisor(t, dir, act, l)
	defer s2.Close()
	h := &elasticHost{s: s2, act: act, l: l}
	h.memory(t, "after the restart", 32<<20)
}

// Memory lent between two subOSes with hotplug memory: the lender's guest
// unplugs, the borrower's plugs, the loan is recorded; a return reverses
// it; a lender without plugged memory, or a borrower that stops short,
// changes nothing.
func TestLendMemory(t *testing.T) {
	h := newMemoryHost(t, 32<<20)
	ctx := context.Background()
	c := testSpec(t, "c", 1)
	c.MaxMemory = 96 << 20
	if _, err := h.s.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	plugged := func(name string) uint64 {
		info, _ := h.s.Get(name)
		p, _ := h.l.proc(info.PID).plugged()
		return p
	}
	before := h.s.ledger.Allocations()
	// a has no hotplugged memory to lend: its boot memory never goes.
	if _, err := h.s.Lend(ctx, LendRequest{From: "a", To: "c", Memory: 16 << 20}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "boot memory") {
		t.Errorf("lend of boot memory: %v", err)
	}
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("a refused loan changed the ledger:\n%+v\n%+v", before, after)
	}
	if _, err := h.s.ResizeMemory(ctx, "a", 64<<20); err != nil {
		t.Fatal(err)
	}
	loan, err := h.s.Lend(ctx, LendRequest{From: "a", To: "c", Memory: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if loan.Memory != 32<<20 || loan.Lender != "a" || loan.Borrower != "c" {
		t.Errorf("loan %+v", loan)
	}
	h.memory(t, "lent", 32<<20)
	if _, err := h.s.ResizeMemory(ctx, "c", 32<<20); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "borrowed") {
		t.Errorf("shrinking a borrower: %v, want a refusal naming the loan", err)
	}
	if cInfo, _ := h.s.Get("c"); cInfo.Allocation.Memory != 64<<20 || plugged("c") != 32<<20 {
		t.Errorf("borrower holds %d bytes, %d plugged; want 64 MiB, 32 MiB", cInfo.Allocation.Memory, plugged("c"))
	}
	if err := h.s.Return(ctx, ReturnRequest{ID: loan.ID}); err != nil {
		t.Fatal(err)
	}
	h.memory(t, "returned", 64<<20)
	if plugged("c") != 0 || len(h.s.Loans()) != 0 {
		t.Errorf("after the return c has %d plugged, loans %+v", plugged("c"), h.s.Loans())
	}

	// A borrower that plugs only part of it: the loan is undone.
	info, _ := h.s.Get("c")
	proc := h.l.proc(info.PID)
	proc.mu.Lock()
	proc.ceiling = 16 << 20
	proc.mu.Unlock()
	before = h.s.ledger.Allocations()
	if _, err := h.s.Lend(ctx, LendRequest{From: "a", To: "c", Memory: 32 << 20}); !errors.Is(err, ErrGuestRefused) || !strings.Contains(err.Error(), "undone") {
		t.Errorf("lend to a borrower that stops short: %v", err)
	}
	if after := h.s.ledger.Allocations(); !reflect.DeepEqual(before, after) {
		t.Errorf("an undone loan changed the ledger:\n%+v\n%+v", before, after)
	}
	h.memory(t, "undone", 64<<20)
	if p := plugged("c"); p != 0 {
		t.Errorf("after the undone loan c has %d bytes plugged", p)
	}
}
