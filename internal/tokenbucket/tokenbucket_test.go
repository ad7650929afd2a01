package tokenbucket_test

import (
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/internal/tokenbucket/fakeclock"
)

var t0 = time.Unix(1000, 0)

func TestUnlimitedIsNil(t *testing.T) {
	b := tokenbucket.New(tokenbucket.Limit{}, t0)
	if b != nil {
		t.Fatal("unlimited bucket is not nil")
	}
	if w := b.Take(t0, 1<<40); w != 0 {
		t.Fatalf("nil bucket waits %v", w)
	}
}

func TestRateAndBurst(t *testing.T) {
	b := tokenbucket.New(tokenbucket.Limit{Rate: 10, Burst: 5}, t0)
	for i := range 5 {
		if w := b.Take(t0, 1); w != 0 {
			t.Fatalf("take %d within the burst waits %v", i, w)
		}
	}
	if w := b.Delay(t0, 1); w != 100*time.Millisecond {
		t.Fatalf("Delay on an empty bucket: %v, want 100ms", w)
	}
	if w := b.Take(t0, 1); w != 100*time.Millisecond {
		t.Fatalf("empty bucket: wait %v, want 100ms", w)
	}
	if w := b.Take(t0.Add(100*time.Millisecond), 1); w != 0 {
		t.Fatalf("after refill: wait %v", w)
	}
	// A long idle time refills to the burst only.
	now := t0.Add(time.Hour)
	granted := 0
	for b.Take(now, 1) == 0 {
		granted++
	}
	if granted != 5 {
		t.Fatalf("after an hour: %d granted at once, want the burst 5", granted)
	}
}

func TestDefaultBurstIsOneSecond(t *testing.T) {
	b := tokenbucket.New(tokenbucket.Limit{Rate: 100}, t0)
	if w := b.Take(t0, 100); w != 0 {
		t.Fatalf("one second's worth waits %v", w)
	}
	if w := b.Take(t0, 1); w == 0 {
		t.Fatal("empty bucket granted")
	}
}

func TestOversizedCostLeavesDebt(t *testing.T) {
	b := tokenbucket.New(tokenbucket.Limit{Rate: 1000, Burst: 1000}, t0)
	if w := b.Take(t0, 4000); w != 0 {
		t.Fatalf("oversized cost on a full bucket waits %v", w)
	}
	// 3000 tokens of debt plus 1 for the next: 3.001 s.
	if w := b.Take(t0, 1); w != 3001*time.Millisecond {
		t.Fatalf("after debt: wait %v, want 3.001s", w)
	}
	// An oversized cost waits for a full bucket, not for its own size.
	if w := b.Take(t0.Add(3*time.Second), 5000); w != time.Second {
		t.Fatalf("oversized cost on an empty bucket: wait %v, want 1s", w)
	}
}

func TestHeldToRate(t *testing.T) {
	// A taker that always asks is held to burst + rate*elapsed.
	clk := fakeclock.New(t0)
	b := tokenbucket.New(tokenbucket.Limit{Rate: 50, Burst: 10}, clk.Now())
	granted := 0
	for range 1000 {
		if w := b.Take(clk.Now(), 1); w == 0 {
			granted++
		} else {
			clk.Advance(w)
		}
	}
	elapsed := clk.Now().Sub(t0)
	if limit := 10 + int(elapsed.Seconds()*50+0.5); granted > limit {
		t.Fatalf("%d granted in %v, limit %d", granted, elapsed, limit)
	}
	if granted < 500 {
		t.Fatalf("only %d of 1000 granted", granted)
	}
}

func TestFakeClockAfterFunc(t *testing.T) {
	clk := fakeclock.New(t0)
	var got []int
	clk.AfterFunc(2*time.Second, func() { got = append(got, 2) })
	stop := clk.AfterFunc(time.Second, func() { got = append(got, 1) })
	clk.AfterFunc(3*time.Second, func() {
		got = append(got, 3)
		clk.AfterFunc(0, func() { got = append(got, 4) })
	})
	clk.Advance(1500 * time.Millisecond)
	if len(got) != 1 || got[0] != 1 {
		t.Fatalf("after 1.5s ran %v", got)
	}
	if stop() {
		t.Fatal("stop of a function that ran reports true")
	}
	clk.Advance(5 * time.Second)
	if len(got) != 4 || got[3] != 4 || clk.Pending() != 0 {
		t.Fatalf("ran %v, %d pending", got, clk.Pending())
	}
	if s := clk.AfterFunc(time.Second, func() { t.Error("stopped function ran") }); !s() {
		t.Fatal("stop before due reports false")
	}
	clk.Advance(2 * time.Second)
}

func TestTakeUpToTakesAPart(t *testing.T) {
	b := tokenbucket.New(tokenbucket.Limit{Rate: 100, Burst: 50}, t0)
	if got := b.TakeUpTo(t0, 80); got != 50 {
		t.Errorf("first take %d, want the burst (50)", got)
	}
	if got := b.TakeUpTo(t0, 1); got != 0 {
		t.Errorf("empty bucket gave %d", got)
	}
	if d := b.Delay(t0, 10); d != 100*time.Millisecond {
		t.Errorf("delay %v, want 100ms", d)
	}
	if got := b.TakeUpTo(t0.Add(time.Hour), 80); got != 50 {
		t.Errorf("refill beyond the burst: %d", got)
	}
	var unlimited *tokenbucket.Bucket
	if got := unlimited.TakeUpTo(t0, 1<<40); got != 1<<40 {
		t.Errorf("nil bucket gave %d", got)
	}
}
