package api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/internal/tokenbucket/fakeclock"
	"rainforest/ledger/store"
	"rainforest/rfm/supervisor"
)

// chunks is a writer that collects what a stream sends and lets a test
// wait for a text.
type chunks struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{}
}

func newChunks() *chunks { return &chunks{more: make(chan struct{}, 1)} }

func (c *chunks) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (c *chunks) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// waitFor waits until what came ends with want (bounded by the test's
// timeout only).
func (c *chunks) waitFor(t *testing.T, want string) {
	t.Helper()
	for !strings.HasSuffix(c.String(), want) {
		<-c.more
	}
}

// serveBackend serves b within lim and returns the socket and a function
// stopping the server (which returns Serve's error).
func serveBackend(t *testing.T, b Backend, lim Limits) (string, func() error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rfm.sock")
	ln, err := Listen(path, ownPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeLimited(ctx, ln, b, lim) }()
	var once sync.Once
	var serr error
	stop := func() error {
		once.Do(func() { cancel(); serr = <-done })
		return serr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return path, stop
}

// logs -f: the last tail bytes, then what is appended, read again from the
// start after an in-place rotation, until the subOS is gone.
func TestFollowLog(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}}
	log := filepath.Join(t.TempDir(), "a.log")
	os.WriteFile(log, []byte("old\none\n"), 0o600)
	b.subos["a"] = supervisor.Info{Name: "a", State: supervisor.StateRunning, Log: log}
	path, _ := serveBackend(t, b, DefaultLimits())
	c := NewClient(path)
	out := newChunks()
	done := make(chan error, 1)
	go func() { done <- c.FollowLog(context.Background(), "a", 4, out) }()
	out.waitFor(t, "one\n")
	if got := out.String(); got != "one\n" {
		t.Fatalf("tail: %q", got)
	}
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("two \x1b[31m\n")
	out.waitFor(t, "two \x1b[31m\n")
	// vmm/consolelog rotates in place: the file shrinks.
	f.Truncate(0)
	f.WriteString("rot\n")
	f.Close()
	out.waitFor(t, "rot\n")
	if got, want := out.String(), "one\ntwo \x1b[31m\nrot\n"; got != want {
		t.Errorf("followed %q, want %q", got, want)
	}
	b.Destroy(context.Background(), "a")
	if err := <-done; err != nil {
		t.Errorf("the subOS ended: %v", err)
	}
	var ae *APIError
	if err := c.FollowLog(context.Background(), "nope", 10, out); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("unknown subOS: %v", err)
	}
}

// The client going away ends a log stream.
func TestFollowLogClientGone(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}}
	log := filepath.Join(t.TempDir(), "a.log")
	os.WriteFile(log, []byte("x\n"), 0o600)
	b.subos["a"] = supervisor.Info{Name: "a", Log: log}
	path, _ := serveBackend(t, b, DefaultLimits())
	ctx, cancel := context.WithCancel(context.Background())
	out := newChunks()
	done := make(chan error, 1)
	go func() { done <- NewClient(path).FollowLog(ctx, "a", 10, out) }()
	out.waitFor(t, "x\n")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// events --follow: the past after since, then each new event; only new
// ones without since; since_time selects by time.
func TestFollowEvents(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}, events: []store.Event{}}
	for _, w := range []string{"create", "message"} {
		b.addEvent(store.Event{What: w, Name: "a"})
	}
	path, _ := serveBackend(t, b, DefaultLimits())
	c := NewClient(path)
	follow := func(ctx context.Context, q EventQuery) (chan uint64, chan error) {
		seqs, done := make(chan uint64, 10), make(chan error, 1)
		go func() {
			done <- c.FollowEvents(ctx, q, func(e store.Event) error { seqs <- e.Seq; return nil })
		}()
		return seqs, done
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fromOne, _ := follow(ctx, EventQuery{Since: 1})
	if s := <-fromOne; s != 2 {
		t.Errorf("since 1: first %d", s)
	}
	fromTime, _ := follow(ctx, EventQuery{SinceTime: b.events[1].Time})
	if s := <-fromTime; s != 2 {
		t.Errorf("since_time: first %d", s)
	}
	all, _ := follow(ctx, EventQuery{Past: true})
	for want := uint64(1); want <= 2; want++ {
		if s := <-all; s != want {
			t.Errorf("from the start: %d, want %d", s, want)
		}
	}
	// Live only: wait until it is subscribed (4 subscribers), then
	// record.
	live, liveDone := follow(ctx, EventQuery{})
	for b.feed.Subscribers() < 4 {
		time.Sleep(time.Millisecond)
	}
	b.addEvent(store.Event{What: "destroy", Name: "a"})
	for name, ch := range map[string]chan uint64{"since 1": fromOne, "since_time": fromTime, "past": all, "live": live} {
		if s := <-ch; s != 3 {
			t.Errorf("%s: got %d, want the new event 3", name, s)
		}
	}
	cancel()
	if err := <-liveDone; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// The server drops the subscriptions of the clients gone.
	for b.feed.Subscribers() != 0 {
		time.Sleep(time.Millisecond)
	}
	if ev, err := c.EventsMatching(context.Background(), EventQuery{SinceTime: b.events[2].Time}); err != nil || len(ev) != 1 || ev[0].Seq != 3 {
		t.Errorf("listed since_time: %+v, %v", ev, err)
	}
}

// Shutting the server down ends the streams: Serve returns, and the
// client learns the stream ended.
func TestShutdownEndsStreams(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}, events: []store.Event{}}
	b.addEvent(store.Event{What: "create"})
	path, stop := serveBackend(t, b, DefaultLimits())
	seen, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- NewClient(path).FollowEvents(context.Background(), EventQuery{Past: true}, func(store.Event) error { close(seen); return nil })
	}()
	<-seen
	if err := stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrStreamEnded) {
		t.Errorf("client: %v", err)
	}
}

// A stream holds one of the connections the server allows, and the
// per-connection request rate does not cut it.
func TestStreamWithinLimits(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}, events: []store.Event{}}
	lim := DefaultLimits()
	lim.MaxConns = 1
	lim.Requests, lim.Clock = tokenbucket.Limit{Rate: 1, Burst: 1}, fakeclock.New(time.Unix(1, 0))
	path, _ := serveBackend(t, b, lim)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seqs, done := make(chan uint64), make(chan error, 1)
	go func() {
		done <- NewClient(path).FollowEvents(ctx, EventQuery{}, func(e store.Event) error { seqs <- e.Seq; return nil })
	}()
	for b.feed.Subscribers() < 1 {
		time.Sleep(time.Millisecond)
	}
	// The clock stands still: the connection's one token is spent, yet
	// the stream goes on.
	for want := uint64(1); want <= 5; want++ {
		b.addEvent(store.Event{What: "message"})
		if s := <-seqs; s != want {
			t.Fatalf("event %d, want %d", s, want)
		}
	}
	over := dial(t, path)
	resp, err := http.ReadResponse(over.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(VersionHeader) == "" {
		t.Errorf("a connection beside the stream, over the cap of 1: %d %v", resp.StatusCode, resp.Header)
	}
	cancel()
	<-done
}
