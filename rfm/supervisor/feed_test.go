package supervisor

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"rainforest/ledger/store"
)

// Subscribers get every event after they subscribed, in order, and stop
// with their context.
func TestSubscribeEvents(t *testing.T) {
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, &fakeLauncher{})
	defer s.Close()
	s.event("test", "before", "", 0, "")
	ctx, cancel := context.WithCancel(context.Background())
	sub := s.SubscribeEvents(ctx)
	if _, err := s.Create(context.Background(), testSpec(t, "a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	want, _ := s.Events(1, 0)
	for _, w := range want {
		if got := <-sub.C; got != w {
			t.Errorf("got %+v, want %+v", got, w)
		}
	}
	if len(want) < 2 || want[0].What != "create" {
		t.Errorf("events %+v", want)
	}
	cancel()
	if _, ok := <-sub.C; ok {
		t.Error("an event after the context ended")
	}
	if !errors.Is(sub.Err(), context.Canceled) || s.feed.Subscribers() != 0 {
		t.Errorf("ended with %v, %d subscribers left", sub.Err(), s.feed.Subscribers())
	}
}

// A subscriber that does not keep up is dropped; the publisher never
// waits, and the others keep theirs.
func TestSlowSubscriberDropped(t *testing.T) {
	var f EventFeed
	ctx := context.Background()
	slow, fast := f.Subscribe(ctx), f.Subscribe(ctx)
	for i := 1; i <= SubscriberBuffer+1; i++ {
		f.Publish(store.Event{Seq: uint64(i)})
		if e := <-fast.C; e.Seq != uint64(i) {
			t.Fatalf("fast got %d, want %d", e.Seq, i)
		}
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != SubscriberBuffer || !errors.Is(slow.Err(), ErrSlowSubscriber) {
		t.Errorf("slow: %d events, %v", n, slow.Err())
	}
	if fast.Err() != nil || f.Subscribers() != 1 {
		t.Errorf("fast: %v; %d subscribers", fast.Err(), f.Subscribers())
	}
	f.Close()
	if _, ok := <-fast.C; ok || !errors.Is(fast.Err(), ErrFeedClosed) {
		t.Errorf("after Close: %v", fast.Err())
	}
	late := f.Subscribe(ctx)
	if _, ok := <-late.C; ok || !errors.Is(late.Err(), ErrFeedClosed) {
		t.Errorf("subscribed after Close: %v", late.Err())
	}
}

// Closing the supervisor ends its subscriptions; a context already done
// ends one at once.
func TestSubscriptionEnds(t *testing.T) {
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, &fakeLauncher{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := s.SubscribeEvents(ctx)
	if _, ok := <-done.C; ok || !errors.Is(done.Err(), context.Canceled) {
		t.Errorf("done context: %v", done.Err())
	}
	sub := s.SubscribeEvents(context.Background())
	s.Close()
	if _, ok := <-sub.C; ok || !errors.Is(sub.Err(), ErrFeedClosed) {
		t.Errorf("after Close: %v", sub.Err())
	}
}

// Usage: housekeeping, free cores, what each subOS owns, the pools.
func TestUsage(t *testing.T) {
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, &fakeLauncher{})
	defer s.Close()
	if _, err := s.Create(context.Background(), testSpec(t, "a", 2)); err != nil {
		t.Fatal(err)
	}
	u := s.Usage()
	got := fmt.Sprint(u.Housekeeping, u.FreeCores, len(u.Allocations), u.Allocations[0].Name, u.Pools)
	if want := fmt.Sprint([]int{0}, []int{3}, 1, "a", []PoolUsage{{Node: 0, PageSize: 2 << 20, Capacity: 64, Owned: 16, Free: 48}}); got != want {
		t.Errorf("usage %s, want %s", got, want)
	}
}
