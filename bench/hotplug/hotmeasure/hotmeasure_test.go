package hotmeasure

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/bench/internal/guestconsole"
)

var testMarkers = Markers{Ready: "READY", Added: "ADDED", Removed: "REMOVED"}

func TestFormatParseRoundTrip(t *testing.T) {
	for _, s := range []Sample{
		{System: "rfm", Run: 1, Op: OpAdd, Request: 80 * time.Millisecond, Guest: 950 * time.Millisecond, CLI: 40 * time.Millisecond},
		{System: "qemu", Run: 2, Op: OpRemove, Request: time.Millisecond, Guest: 300 * time.Millisecond, Removed: 310 * time.Millisecond},
		{System: "qemu", Run: 3, Op: OpAdd, Error: "qmp: device_add: GenericError: \"no slot\"\n"},
	} {
		got, ok, err := ParseLine("[   1.0] " + FormatLine(s) + "\r")
		if !ok || err != nil || got != s {
			t.Errorf("round trip of %+v: %+v %v %v", s, got, ok, err)
		}
	}
	for _, l := range []string{"RF-HOTBENCH system=rfm run=1", "RF-HOTBENCH op=add run=1", "RF-HOTBENCH system=a op=add run=-1",
		"RF-HOTBENCH system=a op=add guest_us=x", "RF-HOTBENCH system=a op=swap"} {
		if _, ok, err := ParseLine(l); !ok || !errors.Is(err, ErrBadLine) {
			t.Errorf("%q: %v %v", l, ok, err)
		}
	}
	if _, ok, err := ParseLine("RF-HOTBENCH-INFO x"); ok || err != nil {
		t.Errorf("not a result: %v %v", ok, err)
	}
}

func TestDone(t *testing.T) {
	add := Sample{Op: OpAdd, Request: time.Second, Guest: 2 * time.Second}
	rm := Sample{Op: OpRemove, Guest: 2 * time.Second, Removed: 3 * time.Second}
	if add.Done() != 2*time.Second || rm.Done() != 3*time.Second {
		t.Errorf("done %v %v", add.Done(), rm.Done())
	}
}

// fakeGuest is a console fed through a pipe: say writes a line.
type fakeGuest struct {
	mu sync.Mutex
	w  *io.PipeWriter
}

func (g *fakeGuest) say(line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	io.WriteString(g.w, line+"\r\n")
}

func newFakeGuest(t *testing.T, echo io.Writer) (*fakeGuest, *guestconsole.Console) {
	r, w := io.Pipe()
	g := &fakeGuest{w: w}
	con := guestconsole.Watch(r, testMarkers.list(), echo, "[g#1] ")
	t.Cleanup(func() { w.Close(); <-con.Closed() })
	return g, con
}

// TestMeasure drives a fake system whose guest answers each request on
// its console.
func TestMeasure(t *testing.T) {
	g, con := newFakeGuest(t, nil)
	cfg := Config{System: "fake", Run: 3, Markers: testMarkers, Settle: time.Millisecond}
	cfg.defaults()
	var calls []string
	removed := make(chan time.Time, 1)
	baseline := func(context.Context) (time.Duration, error) {
		calls = append(calls, "baseline")
		return time.Millisecond, nil
	}
	samples := measure(context.Background(), cfg, con,
		func(ctx context.Context) error {
			g.say("READY")
			_, err := con.Wait(ctx, "READY", time.Time{})
			return err
		},
		ops{
			prepare:  func(context.Context) error { calls = append(calls, "prepare"); return nil },
			baseline: baseline,
			add:      func(context.Context) error { calls = append(calls, "add"); g.say("ADDED"); return nil },
			remove: func(context.Context) error {
				calls = append(calls, "remove")
				g.say("REMOVED")
				removed <- time.Now()
				return nil
			},
			removed: func(context.Context) (time.Time, error) { return <-removed, nil },
		})
	if strings.Join(calls, " ") != "prepare baseline add baseline remove" {
		t.Errorf("calls %q", calls)
	}
	if len(samples) != 2 {
		t.Fatalf("samples %+v", samples)
	}
	add, rm := samples[0], samples[1]
	if !add.OK() || add.Op != OpAdd || add.System != "fake" || add.Run != 3 || add.Guest <= 0 || add.Request <= 0 || add.Removed != 0 || add.CLI != time.Millisecond {
		t.Errorf("add %+v", add)
	}
	if !rm.OK() || rm.Op != OpRemove || rm.Guest <= 0 || rm.Removed <= 0 {
		t.Errorf("remove %+v", rm)
	}
}

func TestMeasureFailures(t *testing.T) {
	cfg := Config{System: "fake", Run: 1, Markers: testMarkers, Settle: time.Millisecond, OpTimeout: 50 * time.Millisecond}
	cfg.defaults()
	ready := func(context.Context) error { return nil }
	boom := errors.New("boom")
	ok := func(context.Context) error { return nil }

	// Not ready: both samples say so.
	_, con := newFakeGuest(t, nil)
	s := measure(context.Background(), cfg, con, func(context.Context) error { return boom }, ops{add: ok, remove: ok})
	if len(s) != 2 || !strings.Contains(s[0].Error, "guest not ready: boom") || !strings.Contains(s[1].Error, "not measured") {
		t.Errorf("not ready: %+v", s)
	}
	// The add is refused.
	s = measure(context.Background(), cfg, con, ready, ops{add: func(context.Context) error { return boom }, remove: ok})
	if s[0].Error != "boom" || s[1].Error != "not measured: the add failed" {
		t.Errorf("add refused: %+v", s)
	}
	// The guest never sees the disk: the operation's bound.
	s = measure(context.Background(), cfg, con, ready, ops{add: ok, remove: ok})
	if !strings.Contains(s[0].Error, "ADDED") || s[0].OK() || s[1].OK() {
		t.Errorf("no marker: %+v", s)
	}
	// The remove is answered and the guest lets go, but the VMM never
	// says the device is gone.
	g, con := newFakeGuest(t, nil)
	s = measure(context.Background(), cfg, con, ready, ops{
		add:     func(context.Context) error { g.say("ADDED"); return nil },
		remove:  func(context.Context) error { g.say("REMOVED"); return nil },
		removed: func(ctx context.Context) (time.Time, error) { <-ctx.Done(); return time.Time{}, ctx.Err() },
	})
	if !s[0].OK() || !strings.Contains(s[1].Error, "deadline") {
		t.Errorf("no removal event: %+v", s)
	}
	// A failed baseline.
	s = measure(context.Background(), cfg, con, ready, ops{add: ok, remove: ok,
		baseline: func(context.Context) (time.Duration, error) { return 0, boom }})
	if s[0].Error != "baseline: boom" {
		t.Errorf("baseline: %+v", s)
	}
	// A failed prepare.
	s = measure(context.Background(), cfg, con, ready, ops{prepare: func(context.Context) error { return boom }, add: ok, remove: ok})
	if !strings.Contains(s[0].Error, "prepare the add: boom") {
		t.Errorf("prepare: %+v", s)
	}
}
