package interrupt

import (
	"errors"
	"io"
	"log/slog"
	"testing"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/pci"
	"rainforest/vmm/vm"
	"rainforest/vmm/vm/vmtest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// A group's vectors have eventfds and GSIs from the start; an unmasked
// vector is an irqfd for its message, a masked one is detached and keeps
// its signals; Close gives everything back.
func TestMSIXGroup(t *testing.T) {
	chip := vmtest.New()
	g, err := NewMSIXGroup(chip, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u := chip.Usage(); u.GSIs != 3 || u.IRQFDs != 0 {
		t.Fatalf("after NewMSIXGroup: %+v, want 3 GSIs and no irqfd", u)
	}
	msg := pci.MSIMessage{Addr: 0xFEE00000, Data: 0x41}
	if err := g.Route(1, msg, false); err != nil {
		t.Fatal(err)
	}
	q, ok := chip.IRQFDs()[g.EventFD(1).Fd()]
	if !ok || q.GSI != g.GSI(1) || q.Resample != -1 {
		t.Fatalf("vector 1 unmasked: irqfd %+v %v", q, ok)
	}
	if addr, data, ok := chip.Route(g.GSI(1)); !ok || addr != msg.Addr || data != msg.Data {
		t.Fatalf("route %#x %#x %v", addr, data, ok)
	}
	// Re-routing an attached vector keeps one irqfd.
	if err := g.Route(1, pci.MSIMessage{Addr: 0xFEE01000, Data: 0x42}, false); err != nil || len(chip.IRQFDs()) != 1 {
		t.Fatalf("re-route: %v, %d irqfds", err, len(chip.IRQFDs()))
	}
	// A masked vector keeps signals in its counter.
	if err := g.Fire(0); err != nil {
		t.Fatal(err)
	}
	if !g.Pending() {
		t.Error("a signal on a masked vector is not pending")
	}
	if err := g.Route(1, msg, true); err != nil || len(chip.IRQFDs()) != 0 {
		t.Fatalf("mask: %v, irqfds %v", err, chip.IRQFDs())
	}
	if err := g.Route(3, msg, false); !errors.Is(err, pci.ErrBadVector) {
		t.Errorf("Route of vector 3 of 3: %v", err)
	}
	if err := g.Fire(-1); !errors.Is(err, pci.ErrBadVector) {
		t.Errorf("Fire of vector -1: %v", err)
	}
	if g.EventFD(3) != nil {
		t.Error("EventFD of vector 3 of 3")
	}
	if err := g.Route(2, msg, false); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if u := chip.Usage(); u != (vm.Usage{}) {
		t.Fatalf("after Close: %+v, want nothing held", u)
	}
	if err := g.Fire(0); !errors.Is(err, ErrClosed) {
		t.Errorf("Fire after Close: %v", err)
	}
	if err := g.Route(0, msg, false); !errors.Is(err, ErrClosed) {
		t.Errorf("Route after Close: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Incoming eventfds are duplicated, one per vector, and a signal on the
// original reaches the group's.
func TestMSIXGroupIncoming(t *testing.T) {
	chip := vmtest.New()
	ev, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	if _, err := NewMSIXGroup(chip, 2, []*eventfd.EventFD{ev}); err == nil {
		t.Fatal("one eventfd for two vectors accepted")
	}
	if u := chip.Usage(); u.GSIs != 0 {
		t.Fatalf("a failed NewMSIXGroup left %d GSIs", u.GSIs)
	}
	g, err := NewMSIXGroup(chip, 1, []*eventfd.EventFD{ev})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.EventFD(0).Fd() == ev.Fd() {
		t.Fatal("incoming eventfd not duplicated")
	}
	if err := ev.Signal(); err != nil {
		t.Fatal(err)
	}
	if !g.Pending() {
		t.Error("a signal on the incoming eventfd is not the vector's")
	}
}

// While INTx is on, the vectors the guest has not unmasked drive the line
// through resampling irqfds sharing one resample eventfd; an unmasked
// vector is an MSI; INTx off detaches them.
func TestMSIXGroupINTx(t *testing.T) {
	chip := vmtest.New()
	lines := NewLines(chip, quiet)
	line := lines.Line(18)
	g, err := NewMSIXGroup(chip, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetINTx(line); err != nil {
		t.Fatal(err)
	}
	qs := chip.IRQFDs()
	q0, q1 := qs[g.EventFD(0).Fd()], qs[g.EventFD(1).Fd()]
	if len(qs) != 2 || q0.GSI != 18 || q1.GSI != 18 || q0.Resample < 0 || q0.Resample != q1.Resample {
		t.Fatalf("INTx on: irqfds %+v", qs)
	}
	if err := g.Route(0, pci.MSIMessage{Addr: 0xFEE00000, Data: 0x41}, false); err != nil {
		t.Fatal(err)
	}
	if q := chip.IRQFDs()[g.EventFD(0).Fd()]; q.GSI != g.GSI(0) || q.Resample != -1 {
		t.Fatalf("unmasked vector under INTx: %+v", q)
	}
	if err := g.SetINTx(nil); err != nil {
		t.Fatal(err)
	}
	if qs := chip.IRQFDs(); len(qs) != 1 {
		t.Fatalf("INTx off: irqfds %+v, want only the MSI", qs)
	}
	if !line.Asserted() {
		chip.SetAsserted(18, true)
		if !line.Asserted() {
			t.Error("Asserted does not report the chip's state")
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if u := chip.Usage(); u != (vm.Usage{}) {
		t.Fatalf("after Close: %+v", u)
	}
}

// Lines sharing a GSI are a wired OR: KVM_IRQ_LINE is issued only when the
// number of models driving it high goes from 0 to 1 or back.
func TestLinesShare(t *testing.T) {
	chip := vmtest.New()
	lines := NewLines(chip, quiet)
	a, b, c := lines.Line(17), lines.Line(17), lines.Line(18)
	level := func(gsi uint32) bool { on, _ := chip.Asserted(gsi); return on }
	a.SetLevel(true)
	a.SetLevel(true)
	b.SetLevel(true)
	a.SetLevel(false)
	if !level(17) {
		t.Fatal("GSI 17 lowered while b still drives it")
	}
	c.SetLevel(true)
	b.SetLevel(false)
	if level(17) || !level(18) {
		t.Fatalf("levels 17=%v 18=%v", level(17), level(18))
	}
	b.SetLevel(false)
	c.SetLevel(false)
	if level(18) || a.GSI() != 17 {
		t.Fatal("GSI 18 still high")
	}
}
