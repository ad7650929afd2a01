package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// exchange sends n sequenced messages from tx to rx on another goroutine
// and checks they arrive in order.
func exchange(t *testing.T, tx, rx transport, n int) {
	t.Helper()
	errs := make(chan error, 1)
	go func() {
		var m message
		for i := 0; i < n; i++ {
			m.setWord(0, uint64(i))
			m.setWord(7, ^uint64(i))
			if err := tx.send(&m); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	var m message
	for i := 0; i < n; i++ {
		if err := rx.recv(&m); err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if m.word(0) != uint64(i) || m.word(7) != ^uint64(i) {
			t.Fatalf("message %d arrived as %d/%#x", i, m.word(0), m.word(7))
		}
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

func TestSHMTransport(t *testing.T) {
	fd, err := unix.MemfdCreate("ficm-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, shmBytes); err != nil {
		t.Fatal(err)
	}
	parent, err := newSHMTransport(fd, false)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.close()
	child, err := newSHMTransport(fd, false) // same process: no parent check
	if err != nil {
		t.Fatal(err)
	}
	child.tx, child.rx = child.rx, child.tx
	defer child.close()
	// More than a ring's worth, so the sender also waits for space.
	exchange(t, parent, child, 10*ringSlotCount+3)
	exchange(t, child, parent, 3*ringSlotCount)

	// A receiver waiting on an empty ring gives up after abort.
	done := make(chan error, 1)
	go func() { var m message; done <- parent.recv(&m) }()
	time.Sleep(20 * time.Millisecond)
	parent.abort()
	select {
	case err := <-done:
		if !errors.Is(err, errAborted) {
			t.Errorf("recv after abort: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("recv did not return after abort")
	}
}

func TestSHMRingBounds(t *testing.T) {
	if _, err := newSHMRing(make([]byte, ringBytes-1), func() error { return nil }); err == nil {
		t.Error("ring on too little memory accepted")
	}
	if _, err := u32At(make([]byte, 8), 6); err == nil {
		t.Error("word past the end accepted")
	}
	if _, err := u32At(make([]byte, 8), 2); err == nil {
		t.Error("unaligned word accepted")
	}
}

func TestFDTransport(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := fdTransport{fds[0], fds[0]}, fdTransport{fds[1], fds[1]}
	exchange(t, a, b, 1000)
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	var m message
	if err := b.recv(&m); err == nil {
		t.Error("recv after the peer closed succeeded")
	}
	b.close()
}

func TestPlanArgs(t *testing.T) {
	p := procPlan{mech: mechTCP, warmup: 3, trips: 100, stream: 7, core: 1, port: 4242}
	got, err := parsePlan(p.args())
	if err != nil || got != p {
		t.Errorf("round trip of %+v: %+v, %v", p, got, err)
	}
	for _, bad := range [][]string{nil, {"x"}, {childArg, "pipe", "1", "2", "3", "4", "z"}, {"nope", "pipe", "1", "2", "3", "4", "5"}} {
		if _, err := parsePlan(bad); err == nil {
			t.Errorf("parsePlan(%q) accepted", bad)
		}
	}
}

func TestWindowSampler(t *testing.T) {
	var n atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // about one event per microsecond
		for ctx.Err() == nil {
			n.Add(100)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	s := windowSampler{duration: 100 * time.Millisecond, window: 10 * time.Millisecond}
	samples, rate, err := s.sample(ctx, n.Load)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) < 1 || rate <= 0 {
		t.Errorf("%d samples, rate %v", len(samples), rate)
	}
	var stuck atomic.Uint64
	stuck.Store(5)
	if _, _, err := s.sample(ctx, stuck.Load); !errors.Is(err, errNoProgress) {
		t.Errorf("stuck counter: %v", err)
	}
}

// The guest programs assemble and fit the test guest's code area.
func TestGuestPrograms(t *testing.T) {
	for name, code := range map[string][]byte{
		"ping": pingCode(), "pong": pongCode(), "producer": producerCode(),
		"consumer": consumerCode(), "ringer": ringerCode(), "acker": ackerCode(),
	} {
		if len(code) == 0 || len(code) > 0x10000 {
			t.Errorf("%s: %d bytes", name, len(code))
		}
	}
}
