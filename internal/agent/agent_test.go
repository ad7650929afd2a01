package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"rainforest/internal/agentproto"
)

// startAgent serves an agent on a Unix socket until the test ends.
func startAgent(t *testing.T, maxExecs int) (dial func() *client, stop func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := NewServer(Config{Software: "rf-agent test", Proc: os.DirFS("/proc"), MaxExecs: maxExecs})
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	stop = func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			stop()
		}
	})
	return func() *client {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return newClient(t, c)
	}, stop
}

// client is a test's host side.
type client struct {
	t     *testing.T
	c     net.Conn
	pc    *agentproto.Conn
	hello *agentproto.Hello
}

// newClient reads the agent's hello and answers with the host's.
func newClient(t *testing.T, c net.Conn) *client {
	t.Helper()
	cl := &client{t: t, c: c, pc: agentproto.NewConn(c)}
	m, err := cl.pc.Recv()
	if err != nil {
		t.Fatalf("reading the agent's hello: %v", err)
	}
	h, ok := m.(*agentproto.Hello)
	if !ok {
		t.Fatalf("first message %s, want hello", m.Type())
	}
	cl.hello = h
	return cl
}

func (cl *client) send(m agentproto.Message) {
	cl.t.Helper()
	if err := cl.pc.Send(m); err != nil {
		cl.t.Fatalf("sending %s: %v", m.Type(), err)
	}
}

func (cl *client) recv() agentproto.Message {
	cl.t.Helper()
	m, err := cl.pc.Recv()
	if err != nil {
		cl.t.Fatalf("receiving: %v", err)
	}
	return m
}

// exec sends the hellos' second half and req.
func (cl *client) exec(req *agentproto.Exec) {
	cl.t.Helper()
	cl.send(agentproto.NewHello("rfm test"))
	cl.send(req)
}

// result reads an exec's output up to its Exit (or an Error).
func (cl *client) result() (stdout, stderr string, exit *agentproto.Exit, refusal *agentproto.Error) {
	cl.t.Helper()
	var out, errb bytes.Buffer
	for {
		switch m := cl.recv().(type) {
		case *agentproto.Data:
			if m.Stream == agentproto.TypeStderr {
				errb.Write(m.Bytes)
			} else {
				out.Write(m.Bytes)
			}
		case *agentproto.Exit:
			if _, err := cl.pc.Recv(); err != io.EOF {
				cl.t.Errorf("after exit: %v, want the agent to close", err)
			}
			return out.String(), errb.String(), m, nil
		case *agentproto.Error:
			return out.String(), errb.String(), nil, m
		default:
			cl.t.Fatalf("unexpected %s during exec", m.Type())
		}
	}
}

// readUntil reads stdout until it contains want.
func (cl *client) readUntil(want string) string {
	cl.t.Helper()
	var out bytes.Buffer
	for !strings.Contains(out.String(), want) {
		switch m := cl.recv().(type) {
		case *agentproto.Data:
			out.Write(m.Bytes)
		default:
			cl.t.Fatalf("unexpected %s (%+v) waiting for %q in %q", m.Type(), m, want, out.String())
		}
	}
	return out.String()
}

func TestHello(t *testing.T) {
	dial, _ := startAgent(t, 0)
	h := dial().hello
	if h.ProtocolMajor != agentproto.ProtocolMajor || h.Software != "rf-agent test" || h.NProc == 0 || h.Kernel == "" || h.Hostname == "" {
		t.Errorf("hello %+v", h)
	}
}

// A host of another major version is refused with a clear error.
func TestVersionRefused(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.send(&agentproto.Hello{ProtocolMajor: agentproto.ProtocolMajor + 1, Software: "rfm 99"})
	e, ok := cl.recv().(*agentproto.Error)
	if !ok || e.Code != agentproto.ErrCodeVersion || !strings.Contains(e.Message, "protocol 2.0") {
		t.Fatalf("got %+v, want a version error", e)
	}
	if _, err := cl.pc.Recv(); err != io.EOF {
		t.Errorf("after the refusal: %v, want EOF", err)
	}
	// The host side's check reads the same.
	if err := agentproto.CheckVersion(&agentproto.Hello{ProtocolMajor: 7}); !errors.Is(err, agentproto.ErrVersion) {
		t.Errorf("CheckVersion: %v", err)
	}
}

func TestBadRequest(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.send(&agentproto.Exec{Argv: []string{"true"}}) // no hello
	if e, ok := cl.recv().(*agentproto.Error); !ok || e.Code != agentproto.ErrCodeBadRequest {
		t.Fatalf("got %+v, want bad_request", e)
	}
	cl = dial()
	cl.send(agentproto.NewHello("rfm test"))
	cl.send(&agentproto.Resize{Rows: 1})
	if e, ok := cl.recv().(*agentproto.Error); !ok || e.Code != agentproto.ErrCodeBadRequest {
		t.Fatalf("got %+v, want bad_request", e)
	}
}

// Heartbeats and stats come at once and then on their intervals; a new
// Watch changes them.
func TestWatch(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.send(agentproto.NewHello("rfm test"))
	cl.send(&agentproto.Watch{HeartbeatMS: agentproto.MinIntervalMS, StatsMS: agentproto.MinIntervalMS})
	var beats, stats int
	var lastSeq uint64
	for beats < 3 || stats < 2 {
		switch m := cl.recv().(type) {
		case *agentproto.Heartbeat:
			beats++
			if m.Seq != lastSeq+1 {
				t.Fatalf("heartbeat seq %d after %d", m.Seq, lastSeq)
			}
			lastSeq = m.Seq
		case *agentproto.Stats:
			stats++
			if len(m.CPUs) == 0 || m.Memory.Total == 0 || m.Processes == 0 || m.Seq != uint64(stats) {
				t.Fatalf("stats %+v", m)
			}
			if stats > 1 && m.IntervalMS == 0 {
				t.Errorf("a later report has no interval")
			}
		default:
			t.Fatalf("unexpected %s", m.Type())
		}
	}
	// No more stats: only heartbeats from the next heartbeat on.
	cl.send(&agentproto.Watch{HeartbeatMS: agentproto.MinIntervalMS})
	for {
		if _, ok := cl.recv().(*agentproto.Heartbeat); ok {
			break
		}
	}
	for range 3 {
		if m := cl.recv(); m.Type() != agentproto.TypeHeartbeat {
			t.Fatalf("got %s after stats were turned off", m.Type())
		}
	}
}

func TestExecPipes(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", `echo out; echo "err $FOO" >&2; test -t 0 || echo notty; exit 3`}, Env: []string{"FOO=bar"}})
	out, errs, exit, refusal := cl.result()
	if refusal != nil || out != "out\nnotty\n" || errs != "err bar\n" || exit.Code != 3 || exit.Signal != 0 {
		t.Errorf("got %q %q %+v %v", out, errs, exit, refusal)
	}
}

// Stdin is forwarded, in chunks, up to its close; output in chunks.
func TestExecStdin(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"cat"}, Stdin: true})
	want := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB
	go func() {
		for b := want; len(b) > 0; {
			n := min(len(b), agentproto.MaxChunk)
			if cl.pc.Send(&agentproto.Data{Stream: agentproto.TypeStdin, Bytes: b[:n]}) != nil {
				return
			}
			b = b[n:]
		}
		cl.pc.Send(&agentproto.StdinClose{})
	}()
	out, _, exit, refusal := cl.result()
	if refusal != nil || out != string(want) || exit.Code != 0 {
		t.Errorf("got %d bytes (equal: %v), %+v %v", len(out), out == string(want), exit, refusal)
	}
}

// Without stdin the command reads /dev/null.
func TestExecNoStdin(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", "cat; echo done"}})
	if out, _, exit, _ := cl.result(); out != "done\n" || exit.Code != 0 {
		t.Errorf("got %q %+v", out, exit)
	}
}

func TestExecStatus(t *testing.T) {
	dial, _ := startAgent(t, 0)
	for _, tc := range []struct {
		argv []string
		want agentproto.Exit
	}{
		{[]string{"true"}, agentproto.Exit{Code: 0}},
		{[]string{"sh", "-c", "kill -TERM $$"}, agentproto.Exit{Code: 128 + 15, Signal: 15}},
	} {
		cl := dial()
		cl.exec(&agentproto.Exec{Argv: tc.argv})
		if _, _, exit, _ := cl.result(); exit == nil || *exit != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.argv, exit, tc.want)
		}
	}
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"/no/such/program"}})
	if _, _, exit, _ := cl.result(); exit == nil || exit.Code != 127 || !strings.Contains(exit.Error, "/no/such/program") {
		t.Errorf("not found: %+v", exit)
	}
	cl = dial()
	cl.exec(&agentproto.Exec{Argv: []string{"true"}, Dir: "/no/such/dir"})
	if _, _, exit, _ := cl.result(); exit == nil || exit.Code != 127 || exit.Error == "" {
		t.Errorf("bad dir: %+v", exit)
	}
}

// A Signal reaches the command.
func TestExecSignal(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", "echo ready; exec sleep 1000"}})
	cl.readUntil("ready\n")
	cl.send(&agentproto.Signal{Signal: uint32(syscall.SIGINT)})
	if _, _, exit, _ := cl.result(); exit == nil || exit.Signal != uint32(syscall.SIGINT) {
		t.Errorf("got %+v, want killed by SIGINT", exit)
	}
}

// A TTY: the command sees a terminal of the requested size, which Resize
// changes; stdin is typed into it.
func TestExecTTY(t *testing.T) {
	dial, _ := startAgent(t, 0)
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", `test -t 0 && test -t 1 && echo "tty $TERM"; stty size; read x; stty size; echo "got $x"`},
		TTY: true, Stdin: true, Rows: 24, Cols: 80})
	cl.readUntil("24 80")
	cl.send(&agentproto.Resize{Rows: 30, Cols: 100})
	cl.send(&agentproto.Data{Stream: agentproto.TypeStdin, Bytes: []byte("hello\n")})
	out, errs, exit, _ := cl.result()
	if !strings.Contains(out, "30 100") || !strings.Contains(out, "got hello") || errs != "" || exit == nil || exit.Code != 0 {
		t.Errorf("got %q %q %+v", out, errs, exit)
	}
	cl = dial()
	cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", `test -t 1 && echo "tty $TERM"`}, TTY: true})
	if out, _, exit, _ := cl.result(); !strings.Contains(out, "tty xterm") || exit.Code != 0 {
		t.Errorf("tty: %q %+v", out, exit)
	}
	// ^D ends cat's input on a TTY.
	cl = dial()
	cl.exec(&agentproto.Exec{Argv: []string{"cat"}, TTY: true, Stdin: true})
	cl.send(&agentproto.Data{Stream: agentproto.TypeStdin, Bytes: []byte("abc\n")})
	cl.send(&agentproto.StdinClose{})
	if out, _, exit, _ := cl.result(); !strings.Contains(out, "abc") || exit == nil || exit.Code != 0 {
		t.Errorf("tty stdin close: %q %+v", out, exit)
	}
}

// gone reports whether pid has exited (gone, or a zombie not yet reaped
// by whoever inherited it).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}

func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		for !gone(pid) {
			time.Sleep(10 * time.Millisecond) // polling; the test's timeout bounds it
		}
	}
}

// pidsOf parses "PID PID ...\n" from the command.
func pidsOf(t *testing.T, line string) []int {
	var pids []int
	for _, f := range strings.Fields(line) {
		p, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pids %q", line)
		}
		pids = append(pids, p)
	}
	return pids
}

// A host that goes away takes the command's tree with it: its process
// group, and a child that moved to a session of its own.
func TestHostGoneKillsTree(t *testing.T) {
	dial, _ := startAgent(t, 0)
	for _, tty := range []bool{false, true} {
		cl := dial()
		cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", `sleep 1000 & setsid sleep 1001 & echo "$$ $!"; wait`}, TTY: tty})
		out := cl.readUntil("\n")
		pids := pidsOf(t, out)
		if len(pids) != 2 {
			t.Fatalf("pids %q", out)
		}
		cl.c.Close()
		waitGone(t, pids...)
		// The background sleep: any process named sleep 1000 whose
		// parent was the shell is gone with the group.
	}
}

// Closing the agent (its context) kills running commands too.
func TestStopKillsCommands(t *testing.T) {
	dial, stop := startAgent(t, 0)
	cl := dial()
	cl.exec(&agentproto.Exec{Argv: []string{"sh", "-c", `echo $$; exec sleep 1000`}})
	pids := pidsOf(t, cl.readUntil("\n"))
	stop()
	waitGone(t, pids...)
}

// At most MaxExecs commands run; the next is refused "busy" until one
// ends.
func TestExecBound(t *testing.T) {
	dial, _ := startAgent(t, 1)
	first := dial()
	first.exec(&agentproto.Exec{Argv: []string{"sh", "-c", "echo started; cat"}, Stdin: true})
	first.readUntil("started")
	second := dial()
	second.exec(&agentproto.Exec{Argv: []string{"true"}})
	if _, _, exit, refusal := second.result(); refusal == nil || refusal.Code != agentproto.ErrCodeBusy || exit != nil {
		t.Fatalf("second exec: %+v %+v, want busy", exit, refusal)
	}
	// Watching is not bounded by commands.
	w := dial()
	w.send(agentproto.NewHello("rfm test"))
	w.send(&agentproto.Watch{HeartbeatMS: 1000})
	if m := w.recv(); m.Type() != agentproto.TypeHeartbeat {
		t.Fatalf("watch while busy: %s", m.Type())
	}
	first.send(&agentproto.StdinClose{})
	if _, _, exit, _ := first.result(); exit == nil || exit.Code != 0 {
		t.Fatalf("first: %+v", exit)
	}
	third := dial()
	third.exec(&agentproto.Exec{Argv: []string{"echo", "third"}})
	if out, _, exit, refusal := third.result(); out != "third\n" || exit == nil || refusal != nil {
		t.Errorf("third exec: %q %+v %+v", out, exit, refusal)
	}
}

// ServeConn takes any net.Conn: here one end of net.Pipe.
func TestServeConnPipe(t *testing.T) {
	agentEnd, hostEnd := net.Pipe()
	s := NewServer(Config{Software: "rf-agent test", Proc: os.DirFS("/proc")})
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), agentEnd) }()
	cl := newClient(t, hostEnd)
	cl.exec(&agentproto.Exec{Argv: []string{"echo", "piped"}})
	if out, _, exit, _ := cl.result(); out != "piped\n" || exit == nil || exit.Code != 0 {
		t.Errorf("got %q %+v", out, exit)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeConn: %v", err)
	}
}

// The host's side of the handshake, as the supervisor will use it,
// against the agent.
func TestHostHandshakeWithAgent(t *testing.T) {
	agentEnd, hostEnd := net.Pipe()
	defer hostEnd.Close()
	s := NewServer(Config{Software: "rf-agent test", Proc: os.DirFS("/proc")})
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), agentEnd) }()
	pc := agentproto.NewConn(hostEnd)
	h, err := agentproto.HostHandshake(pc, "rfm test")
	if err != nil || h.Software != "rf-agent test" {
		t.Fatalf("HostHandshake: %+v, %v", h, err)
	}
	if err := pc.Send(&agentproto.Watch{HeartbeatMS: 1000, StatsMS: 1000}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []agentproto.Type{agentproto.TypeHeartbeat, agentproto.TypeStats} {
		if m, err := pc.Recv(); err != nil || m.Type() != want {
			t.Fatalf("got %v, %v; want %s", m, err, want)
		}
	}
	hostEnd.Close()
	if err := <-done; err != nil {
		t.Errorf("ServeConn after the host closed: %v", err)
	}
}

// flakyListener gives Serve the accept results of errs in turn, then the
// connections of conns, then blocks until closed.
type flakyListener struct {
	mu     sync.Mutex
	errs   []error
	conns  []net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	if len(l.conns) > 0 {
		c := l.conns[0]
		l.conns = l.conns[1:]
		l.mu.Unlock()
		return c, nil
	}
	l.mu.Unlock()
	<-l.closed
	return nil, net.ErrClosed
}

func (l *flakyListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *flakyListener) Addr() net.Addr { return &net.UnixAddr{Name: "flaky", Net: "unix"} }

// An accept that fails for a passing reason is retried; one that fails
// for good ends Serve and every connection with it, so that the agent
// exits (and is restarted) instead of living on without a listener.
func TestServeAcceptFailures(t *testing.T) {
	s := NewServer(Config{Software: "rf-agent test", Proc: os.DirFS("/proc")})
	agentEnd, hostEnd := net.Pipe()
	ln := &flakyListener{errs: []error{syscall.ECONNABORTED, fmt.Errorf("vsock accept: %w", syscall.ECONNRESET)}, conns: []net.Conn{agentEnd}, closed: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	cl := newClient(t, hostEnd)
	cl.exec(&agentproto.Exec{Argv: []string{"echo", "after retries"}})
	if out, _, exit, _ := cl.result(); out != "after retries\n" || exit == nil {
		t.Fatalf("exec after transient accept failures: %q %+v", out, exit)
	}
	// A lasting failure, with a connection still open.
	agentEnd2, hostEnd2 := net.Pipe()
	defer hostEnd2.Close()
	ln2 := &flakyListener{conns: []net.Conn{agentEnd2}, closed: make(chan struct{})}
	done2 := make(chan error, 1)
	go func() { done2 <- s.Serve(context.Background(), ln2) }()
	_ = newClient(t, hostEnd2) // the handshake: the connection is being served
	ln2.Close()                // the blocked Accept fails for good (net.ErrClosed)
	if err := <-done2; err == nil {
		t.Error("Serve ended by a closed listener returned nil, want the accept error")
	}
	// The open connection ended with it.
	hostEnd2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := hostEnd2.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the connection outlived Serve: read %v", err)
	}
	ln.Close()
	if err := <-done; err == nil {
		t.Error("Serve returned nil after its listener closed under it")
	}
}
