package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQEMU serves one QMP connection on a socket in a temporary
// directory: the greeting, then the lines serve answers to each request
// (nil: close the connection). Its send writes a line (an event) to the
// connection, once there is one.
type fakeQEMU struct {
	path      string
	mu        sync.Mutex
	conn      net.Conn
	connected chan struct{}
}

func newFakeQEMU(t *testing.T, greeting string, serve func(req map[string]any) []string) *fakeQEMU {
	t.Helper()
	f := &fakeQEMU{path: filepath.Join(t.TempDir(), "qmp.sock"), connected: make(chan struct{})}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() { // owner: the test (Cleanup waits)
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		f.mu.Lock()
		f.conn = conn
		f.mu.Unlock()
		close(f.connected)
		f.send(greeting)
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req map[string]any
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				return
			}
			out := serve(req)
			if out == nil {
				return
			}
			for _, l := range out {
				f.send(l)
			}
		}
	}()
	return f
}

func (f *fakeQEMU) send(line string) {
	<-f.connected
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn.Write([]byte(line + "\r\n"))
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`

func TestExecuteAndEvents(t *testing.T) {
	var got []string
	q := newFakeQEMU(t, greeting, func(req map[string]any) []string {
		cmd, _ := req["execute"].(string)
		args, _ := json.Marshal(req["arguments"])
		got = append(got, cmd+" "+string(args))
		switch cmd {
		case "device_add":
			return []string{`{"return": {}}`}
		case "device_del":
			// The answer, then the event with its data.
			return []string{`{"return": {}}`, `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "hot", "path": "/machine/peripheral/hot"}}`}
		case "bad":
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command bad has not been found"}}`}
		}
		return []string{`{"return": {}}`}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, q.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q.send(`{"timestamp": {"seconds": 1, "microseconds": 1}, "event": "RESUME"}`)
	if _, err := c.Execute(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "id": "hot"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Execute(ctx, "device_del", map[string]any{"id": "hot"}); err != nil {
		t.Fatal(err)
	}
	isHot := func(data json.RawMessage) bool {
		var d struct{ Device string }
		return json.Unmarshal(data, &d) == nil && d.Device == "hot"
	}
	e, err := c.WaitEvent(ctx, "DEVICE_DELETED", isHot)
	if err != nil || e.Name != "DEVICE_DELETED" || e.Received.IsZero() || !e.Emitted.Equal(time.Unix(1, 2000)) {
		t.Fatalf("event %+v, %v", e, err)
	}
	// WaitFor sees the whole event: QEMU's time of it among the rest.
	if e, err := c.WaitFor(ctx, "RESUME", func(e Event) bool { return e.Emitted.Equal(time.Unix(1, 1000)) }); err != nil || e.Name != "RESUME" {
		t.Fatalf("WaitFor %+v, %v", e, err)
	}
	if e, err := c.WaitEvent(ctx, "RESUME", nil); err != nil || e.Name != "RESUME" {
		t.Fatalf("RESUME %+v, %v", e, err)
	}
	var qerr *Error
	if _, err := c.Execute(ctx, "bad", nil); !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("bad command: %v", err)
	}
	want := []string{"qmp_capabilities null", `device_add {"driver":"virtio-blk-pci","id":"hot"}`, `device_del {"id":"hot"}`, "bad null"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// An event that does not come: the wait ends with its context.
	short, stop := context.WithTimeout(ctx, 10*time.Millisecond)
	defer stop()
	if _, err := c.WaitEvent(short, "DEVICE_DELETED", func(json.RawMessage) bool { return false }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait for a missing event: %v", err)
	}
}

func TestConnectionEnds(t *testing.T) {
	q := newFakeQEMU(t, greeting, func(req map[string]any) []string {
		if req["execute"] == "quit" {
			return nil // QEMU exits without answering
		}
		return []string{`{"return": {}}`}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, q.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Execute(ctx, "quit", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("quit: %v", err)
	}
	if _, err := c.WaitEvent(ctx, "SHUTDOWN", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("event after the end: %v", err)
	}
}

func TestDialFailures(t *testing.T) {
	q := newFakeQEMU(t, `{"hello": 1}`, func(map[string]any) []string { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := Dial(ctx, q.path); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Errorf("no greeting: %v", err)
	}
	short, stop := context.WithTimeout(ctx, 50*time.Millisecond)
	defer stop()
	if _, err := Dial(short, filepath.Join(t.TempDir(), "absent.sock")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no socket: %v", err)
	}
}
