package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/internal/agentproto"
)

func TestParseLatency(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"p99 12.5ms", 12500 * time.Microsecond, false},
		{"p99 12.5ms\n", 12500 * time.Microsecond, false},
		{"800us", 800 * time.Microsecond, false},
		{"1500", 1500 * time.Microsecond, false},
		{`{"p99_us": 12500}`, 12500 * time.Microsecond, false},
		{`{"p99": "3ms"}`, 3 * time.Millisecond, false},
		{"", 0, true},
		{"p50 3ms", 0, true},
		{"p99 -3ms", 0, true},
		{"p99 fast", 0, true},
		{"p99 2h", 0, true},
		{"p99 1ms\np99 2ms", 0, true},
		{`{"p99_us": -1}`, 0, true},
		{`{"p99_us": 1e300}`, 0, true},
		{`{"other": 1}`, 0, true},
		{`{"p99_us": `, 0, true},
		{"p99 " + strings.Repeat("1", MaxLatencyMessage), 0, true},
	} {
		got, err := ParseLatency([]byte(tc.in))
		if tc.bad {
			if !errors.Is(err, ErrLatencyFormat) {
				t.Errorf("%q: %v, %v; want ErrLatencyFormat", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// latencyPath is a short socket path (sun_path is 108 bytes).
func latencyPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rfl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "latency.sock")
}

// The socket takes good samples, ignores and counts bad ones (oversized
// included), and SendLatency reaches it.
func TestLatencySocket(t *testing.T) {
	path := latencyPath(t)
	c, err := ListenLatency(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %v, %v; want 0666", st.Mode(), err)
	}
	s := NewServer(Config{})
	l := &Latency{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeLatency(ctx, c, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeLatency: %v", err)
		}
	})
	w, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, msg := range []string{"nonsense", strings.Repeat("x", 4*MaxLatencyMessage), `{"p99_us": -5}`} {
		if _, err := w.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := SendLatency(ctx, path, 7*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.Sample(time.Now()) == nil {
		if time.Now().After(deadline) {
			t.Fatal("no sample arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := l.Sample(time.Now())
	if got.Seq != 1 || got.P99US != 7000 {
		t.Errorf("sample %+v, want seq 1 of 7000us", got)
	}
	if n := l.Refused(); n != 3 {
		t.Errorf("%d messages refused, want 3", n)
	}
	if err := SendLatency(ctx, filepath.Join(filepath.Dir(path), "none.sock"), time.Millisecond); err == nil {
		t.Error("SendLatency to no socket worked")
	}
}

// Stats reports carry the latest sample with its age.
func TestWatchCarriesLatency(t *testing.T) {
	l := &Latency{}
	l.Record(12*time.Millisecond, time.Now().Add(-time.Second))
	s := NewServer(Config{Software: "rf-agent test", Proc: os.DirFS("/proc"), Latency: l})
	host, guest := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeConn(ctx, guest)
	}()
	t.Cleanup(func() {
		cancel()
		host.Close()
		<-done
	})
	cl := newClient(t, host)
	cl.send(agentproto.NewHello("rfm test"))
	cl.send(&agentproto.Watch{HeartbeatMS: agentproto.MaxIntervalMS, StatsMS: agentproto.MaxIntervalMS})
	for {
		m, ok := cl.recv().(*agentproto.Stats)
		if !ok {
			continue
		}
		if m.Latency == nil || m.Latency.Seq != 1 || m.Latency.P99US != 12000 || m.Latency.AgeMS < 1000 {
			t.Fatalf("stats latency %+v", m.Latency)
		}
		return
	}
}

func TestLatencyNoneYet(t *testing.T) {
	var l Latency
	if s := l.Sample(time.Now()); s != nil {
		t.Errorf("sample before any: %+v", s)
	}
	l.Record(time.Millisecond, time.Now().Add(-48*time.Hour))
	if s := l.Sample(time.Now()); s != nil {
		t.Errorf("a sample older than the protocol allows: %+v", s)
	}
}
