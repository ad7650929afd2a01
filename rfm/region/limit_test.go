package region

import (
	"context"
	"strings"
	"testing"
	"time"

	"rainforest/ficm/control"
	"rainforest/internal/tokenbucket"
	"rainforest/internal/tokenbucket/fakeclock"
)

// A peer flooding the Host with PINGs gets its burst answered and the
// rest dropped and counted, with one log line; another peer is still
// answered. The fake clock never moves, so no token returns.
func TestFloodingPeerIsThrottled(t *testing.T) {
	clk := fakeclock.New(time.Unix(100, 0))
	const burst, flood = 5, 40
	g := newGroupWith(t, 3, func(h *Host) { h.LimitPeers(tokenbucket.Limit{Rate: 10, Burst: burst}, clk) }, 1, 2)
	for i := range flood {
		if err := g.guests[1].send(HostPeer, control.Ping(uint64(i))); err != nil {
			t.Fatalf("flood ping %d: %v", i, err)
		}
	}
	if err := g.guests[2].send(HostPeer, control.Ping(0xBEEF)); err != nil {
		t.Fatal(err)
	}
	if c := g.guests[2].expect(t, control.TypePong); c.Cookie != 0xBEEF {
		t.Fatalf("other peer's PONG cookie %#x", c.Cookie)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, ctx, "every message received", func() bool { return g.h.Stats().Received == flood+1 })
	for range burst {
		g.guests[1].expect(t, control.TypePong)
	}
	st := g.h.Stats()
	if st.Throttled != flood-burst || st.PingsAnswered != burst+1 {
		t.Fatalf("stats %+v: want %d throttled, %d answered", st, flood-burst, burst+1)
	}
	select {
	case m := <-g.guests[1].msgs:
		t.Fatalf("flooder got a message past its burst: %+v", m)
	default:
	}
	if n := strings.Count(g.logText(), "more than its rate"); n != 1 {
		t.Fatalf("%d log lines about the throttled peer, want 1:\n%s", n, g.logText())
	}
	// Tokens return with time: the flooder is answered again.
	clk.Advance(time.Second)
	if err := g.guests[1].send(HostPeer, control.Ping(0xF00D)); err != nil {
		t.Fatal(err)
	}
	if c := g.guests[1].expect(t, control.TypePong); c.Cookie != 0xF00D {
		t.Fatalf("PONG cookie %#x after refill", c.Cookie)
	}
}
