package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/internal/agent"
	"rainforest/internal/agentproto"
	"rainforest/vmm/virtio/vsock"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// eventually polls cond until it holds (the test's own timeout bounds it).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if t.Context().Err() != nil {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A session's health follows the heartbeats on the session's clock:
// unknown before it connects, healthy, unhealthy after AgentSilentBeats
// silent intervals, healthy again on the next heartbeat.
func TestAgentHealth(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	guest := make(chan net.Conn, 1)
	var mu sync.Mutex
	var changes []string
	a := &agentSession{name: "a", software: "rfm test", now: clock.now, beat: time.Second, stats: time.Second,
		onChange: func(from AgentState, now AgentInfo) {
			mu.Lock()
			defer mu.Unlock()
			changes = append(changes, string(from)+">"+string(now.State))
		},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		dial: func(ctx context.Context) (net.Conn, error) {
			h, g := net.Pipe()
			guest <- g
			return h, nil
		}}
	if st := a.info().State; st != AgentUnknown {
		t.Fatalf("before connecting: %s", st)
	}
	a.start()
	defer a.stop()
	g := <-guest
	defer g.Close()
	pc := agentproto.NewConn(g)
	if err := pc.Send(&agentproto.Hello{ProtocolMajor: agentproto.ProtocolMajor, Software: "rf-agent fake\x1b[2J"}); err != nil {
		t.Fatal(err)
	}
	if m, err := pc.Recv(); err != nil || m.Type() != agentproto.TypeHello {
		t.Fatalf("host hello: %v %v", m, err)
	}
	m, err := pc.Recv()
	if w, ok := m.(*agentproto.Watch); err != nil || !ok || w.HeartbeatMS != 1000 || w.StatsMS != 1000 {
		t.Fatalf("watch: %#v %v", m, err)
	}
	eventually(t, "connected and told", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.reported == AgentHealthy
	})
	if v := a.info().Version; !strings.Contains(v, "rf-agent fake") {
		t.Errorf("version %q", v)
	}
	clock.add(3 * time.Second)
	if st := a.info().State; st != AgentHealthy {
		t.Errorf("after exactly 3 intervals: %s", st)
	}
	clock.add(time.Millisecond)
	if st := a.info().State; st != AgentUnhealthy {
		t.Errorf("after 3 silent intervals: %s", st)
	}
	a.checkHealth()
	if err := pc.Send(&agentproto.Heartbeat{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "healthy again", func() bool { return a.info().State == AgentHealthy })
	a.checkHealth()
	if a.latest() != nil {
		t.Error("a report before any was sent")
	}
	if err := pc.Send(&agentproto.Stats{Seq: 1, Processes: 42, CPUs: []agentproto.CPUUse{{CPU: 0, Idle: 100}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a report", func() bool { return a.latest() != nil })
	if r := a.latest(); r.Processes != 42 || r.Name != "a" || !r.Time.Equal(clock.now()) {
		t.Errorf("report %+v", r)
	}
	// The guest goes away: the session redials (and stays healthy until
	// the silence is long enough).
	g.Close()
	g2 := <-guest
	g2.Close()
	clock.add(4 * time.Second)
	if st := a.info().State; st != AgentUnhealthy {
		t.Errorf("disconnected and silent: %s", st)
	}
	a.checkHealth()
	mu.Lock()
	defer mu.Unlock()
	if want := "[unknown>healthy healthy>unhealthy unhealthy>healthy healthy>unhealthy]"; fmt.Sprint(changes) != want {
		t.Errorf("changes %v, want %s", changes, want)
	}
}

// An agent of another major version is refused and never counted as
// connected.
func TestAgentVersionRefused(t *testing.T) {
	guest := make(chan net.Conn, 1)
	a := &agentSession{name: "a", software: "rfm test", now: time.Now, beat: time.Second, stats: time.Second,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		dial: func(ctx context.Context) (net.Conn, error) {
			h, g := net.Pipe()
			guest <- g
			return h, nil
		}}
	a.start()
	defer a.stop()
	g := <-guest
	pc := agentproto.NewConn(g)
	if err := pc.Send(&agentproto.Hello{ProtocolMajor: agentproto.ProtocolMajor + 1, Software: "rf-agent future"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Recv(); err == nil {
		t.Error("the host answered an agent of another major version")
	}
	g.Close()
	if st := a.info().State; st != AgentUnknown {
		t.Errorf("state %s", st)
	}
}

// serveFakeDevice plays a VMM's vsock device on path: it takes CONNECT
// 1024, answers OK and hands the stream to a real agent server.
func serveFakeDevice(t *testing.T, path string) {
	t.Helper()
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := agent.NewServer(agent.Config{Software: "rf-agent test", Proc: os.DirFS("/proc")})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Byte by byte: what follows the line is the agent's.
				var buf []byte
				one := make([]byte, 1)
				var err error
				for len(buf) < 32 {
					if _, err = c.Read(one); err != nil || one[0] == '\n' {
						break
					}
					buf = append(buf, one[0])
				}
				port, perr := vsock.ParseConnect(string(buf))
				if err != nil || perr != nil || port != agentproto.Port {
					c.Close()
					return
				}
				c.Write([]byte("OK 1073741824\n"))
				srv.ServeConn(ctx, c)
			}()
		}
	}()
}

// A subOS gets a vsock socket and a session following its agent: stats
// and exec go through it; the socket goes with the subOS.
func TestSupervisorAgent(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Create(ctx, testSpec(t, "a", 1)); err != nil {
		t.Fatal(err)
	}
	info, _ := s.Get("a")
	if info.Agent == nil || info.Agent.State != AgentUnknown {
		t.Fatalf("agent before it answers: %+v", info.Agent)
	}
	if _, err := s.AgentStats("a"); !errors.Is(err, ErrNoAgent) {
		t.Errorf("stats without an agent: %v", err)
	}
	serveFakeDevice(t, s.vsockPath("a"))
	eventually(t, "agent healthy", func() bool {
		info, _ := s.Get("a")
		return info.Agent != nil && info.Agent.State == AgentHealthy
	})
	eventually(t, "a stats report", func() bool { _, err := s.AgentStats("a"); return err == nil })
	st, _ := s.AgentStats("a")
	if st.Memory.Total == 0 || len(st.CPUs) == 0 {
		t.Errorf("stats %+v", st)
	}
	ex, err := s.Exec(ctx, "a", agentproto.Exec{Argv: []string{"sh", "-c", "echo hi; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	var out strings.Builder
	for {
		m, err := ex.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := m.(*agentproto.Data); ok {
			out.Write(d.Bytes)
			continue
		}
		if e, ok := m.(*agentproto.Exit); !ok || e.Code != 3 {
			t.Fatalf("end %#v", m)
		}
		break
	}
	if out.String() != "hi\n" {
		t.Errorf("output %q", out.String())
	}
	if _, err := s.Exec(ctx, "nope", agentproto.Exec{Argv: []string{"true"}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("exec in no subOS: %v", err)
	}
	// runInGuest (the supervisor's own commands, such as mounting a
	// hot-added share): the status, and the output quoted on failure.
	if err := s.runInGuest(ctx, "a", []string{"true"}); err != nil {
		t.Errorf("runInGuest true: %v", err)
	}
	if err := s.runInGuest(ctx, "a", []string{"sh", "-c", "printf 'no\\033[2J'; exit 2"}); err == nil || !strings.Contains(err.Error(), "exited 2") ||
		!strings.Contains(err.Error(), `no\x1b[2J`) {
		t.Errorf("runInGuest of a failing command: %v", err)
	}
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.vsockPath("a")); !os.IsNotExist(err) {
		t.Errorf("vsock socket left after destroy: %v", err)
	}
	ev, _ := s.Events(0, 100)
	var healthy bool
	for _, e := range ev {
		healthy = healthy || (e.What == "agent-healthy" && e.Name == "a" && strings.Contains(e.Detail, fmt.Sprintf(`"rf-agent test, protocol %d.%d"`, agentproto.ProtocolMajor, agentproto.ProtocolMinor)))
	}
	if !healthy {
		t.Errorf("no agent-healthy event: %+v", ev)
	}
}

// CIDs are the lowest free, persisted, and kept by an adopted subOS.
func TestAgentCIDs(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := s.Create(ctx, testSpec(t, n, 1)); err != nil {
			t.Fatal(err)
		}
	}
	cids := func(s *Supervisor) map[string]uint32 {
		s.mu.Lock()
		defer s.mu.Unlock()
		m := map[string]uint32{}
		for n, so := range s.subos {
			m[n] = so.cid
		}
		return m
	}
	if c := cids(s); c["a"] != 3 || c["b"] != 4 {
		t.Fatalf("cids %v", c)
	}
	s.Close()
	s2 := newTestSupervisor(t, dir, act, l)
	defer s2.Close()
	if c := cids(s2); c["a"] != 3 || c["b"] != 4 {
		t.Fatalf("after a restart: cids %v", c)
	}
	if info, _ := s2.Get("a"); info.Agent == nil {
		t.Error("an adopted subOS lost its agent")
	}
}
