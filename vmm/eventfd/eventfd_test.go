package eventfd

import (
	"errors"
	"testing"
)

func TestEventFD(t *testing.T) {
	a, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := a.Dup()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Pending() {
		t.Fatal("new eventfd pending")
	}
	_ = a.Signal()
	_ = b.Signal()
	if !a.Pending() || !b.Pending() {
		t.Fatal("signal not pending on both descriptors of one counter")
	}
	if !a.Pending() {
		t.Fatal("Pending consumed the counter")
	}
	if n := b.Drain(); n != 2 {
		t.Fatalf("Drain = %d, want 2", n)
	}
	if a.Drain() != 0 || a.Pending() {
		t.Fatal("counter not reset by Drain")
	}
}

// Wait returns the signalled eventfds, drained, and ErrStopped once stop
// is signalled (every later Wait too).
func TestWait(t *testing.T) {
	var evs []*EventFD
	for range 3 {
		e, err := New()
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		evs = append(evs, e)
	}
	stop, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.Close()
	_ = evs[0].Signal()
	_ = evs[2].Signal()
	ready, err := Wait(stop, evs)
	if err != nil || len(ready) != 2 || ready[0] != 0 || ready[1] != 2 || evs[0].Pending() {
		t.Fatalf("Wait = %v, %v", ready, err)
	}
	_ = stop.Signal()
	for range 2 {
		if _, err := Wait(stop, evs); !errors.Is(err, ErrStopped) {
			t.Fatalf("Wait after stop = %v", err)
		}
	}
}
