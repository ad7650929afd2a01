package shmemdev

import (
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/internal/tokenbucket/fakeclock"
)

type delivery struct{ peer, vector int }

func newTestThrottle(l tokenbucket.Limit) (*throttle, *fakeclock.Clock, *[]delivery) {
	clk := fakeclock.New(time.Unix(10, 0))
	var got []delivery
	t := newThrottle(l, clk, func(peer, vector int) error {
		got = append(got, delivery{peer, vector})
		return nil
	})
	return t, clk, &got
}

// A flood of doorbells to one peer is held to the limit: the burst goes
// through, the rest coalesce into one pending interrupt per vector, and
// the last doorbell's vector is always delivered when tokens return.
func TestDoorbellFloodCoalesced(t *testing.T) {
	th, clk, got := newTestThrottle(tokenbucket.Limit{Rate: 1000, Burst: 4})
	for range 100 {
		if err := th.ring(1, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := th.ring(1, 2); err != nil { // the last doorbell, another vector
		t.Fatal(err)
	}
	if len(*got) != 4 {
		t.Fatalf("%d delivered at once, want the burst 4", len(*got))
	}
	st := th.statsNow()
	if st.Throttled != 97 || st.Coalesced != 95 {
		t.Fatalf("stats %+v, want 97 throttled, 95 coalesced", st)
	}
	// Tokens return at 1/ms: vector 0's pending interrupt, then vector 2's.
	clk.Advance(time.Millisecond)
	clk.Advance(time.Millisecond)
	want := []delivery{{1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 2}}
	if len(*got) != len(want) {
		t.Fatalf("delivered %v, want %v", *got, want)
	}
	for i := range want {
		if (*got)[i] != want[i] {
			t.Fatalf("delivered %v, want %v", *got, want)
		}
	}
	if clk.Pending() != 0 || th.statsNow().Deferred != 2 {
		t.Fatalf("%d timers left, stats %+v", clk.Pending(), th.statsNow())
	}
}

// Peers have their own buckets: a flood to one does not delay another.
func TestDoorbellLimitPerPeer(t *testing.T) {
	th, _, got := newTestThrottle(tokenbucket.Limit{Rate: 10, Burst: 1})
	for range 10 {
		th.ring(1, 0)
	}
	th.ring(2, 0)
	if n := len(*got); n != 2 || (*got)[1] != (delivery{2, 0}) {
		t.Fatalf("delivered %v, want one to peer 1 then peer 2's", *got)
	}
}

// Under the limit every doorbell is delivered at once; a pending one
// keeps a later doorbell behind it (order kept), and the timer is one.
func TestDoorbellOrderKept(t *testing.T) {
	th, clk, got := newTestThrottle(tokenbucket.Limit{Rate: 10, Burst: 1})
	th.ring(1, 0) // delivered
	th.ring(1, 1) // pending
	clk.Advance(50 * time.Millisecond)
	th.ring(1, 2) // half a token back: pending behind vector 1
	if clk.Pending() != 1 || len(*got) != 1 {
		t.Fatalf("%d timers, delivered %v", clk.Pending(), *got)
	}
	clk.Advance(50 * time.Millisecond)
	clk.Advance(100 * time.Millisecond)
	if len(*got) != 3 || (*got)[1].vector != 1 || (*got)[2].vector != 2 {
		t.Fatalf("delivered %v, want vectors 0, 1, 2", *got)
	}
}

// Closing stops the timer: nothing is delivered after removal.
func TestDoorbellThrottleClose(t *testing.T) {
	th, clk, got := newTestThrottle(tokenbucket.Limit{Rate: 10, Burst: 1})
	th.ring(1, 0)
	th.ring(1, 0)
	th.close()
	if clk.Pending() != 0 {
		t.Fatal("timer left after close")
	}
	clk.Advance(time.Hour)
	th.ring(1, 0)
	if len(*got) != 1 {
		t.Fatalf("delivered %v after close", *got)
	}
}
