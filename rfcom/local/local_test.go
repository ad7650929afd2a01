package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/endpoint/fakeirq"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/rfcom"
)

// group is a FICM group on plain memory: peer 0 (the supervisor) is a
// bare endpoint driven by the test, peers 1..n-1 are Nodes, each served
// by a daemon on its own socket.
type group struct {
	state *endpoint.StateTable
	irq   *fakeirq.Interrupts
	eps   []*endpoint.Endpoint
	nodes []*rfcom.Node
	socks []string
	stop  []func() error // stops daemon p and returns Serve's error
	board *board.Writer
}

func newGroup(t *testing.T, peers int) *group {
	t.Helper()
	l, err := endpoint.NewLayout(peers, rfcom.Slots)
	if err != nil {
		t.Fatal(err)
	}
	irq := fakeirq.New(peers)
	g := &group{irq: irq}
	var outs, sections [][]byte
	for range peers {
		out := ring.AlignedBytes(rfcom.InfoPageSize + l.SectionSize())
		outs = append(outs, out)
		sections = append(sections, out[rfcom.SectionOffset:])
	}
	if g.state, err = endpoint.NewStateTable(ring.AlignedBytes(endpoint.StateTableSize(peers)), peers); err != nil {
		t.Fatal(err)
	}
	if g.board, err = board.NewWriter(outs[0][:rfcom.InfoPageSize]); err != nil {
		t.Fatal(err)
	}
	if _, err := g.board.Publish([]board.Entry{
		{Peer: 1, State: board.StateRunning, Name: "alpha", CommCores: []int{2, 3}},
		{Peer: 2, State: board.StateRunning, Name: "beta", MAC: [6]byte{0x52, 0x54, 0, 0, 0, 2}},
	}); err != nil {
		t.Fatal(err)
	}
	for p := range peers {
		g.state.SetAlive(p, true)
		e, err := endpoint.New(endpoint.Config{
			Self: p, Layout: l, Sections: sections, State: g.state,
			Doorbell: irq, Waiter: irq.Waiter(p), PollRounds: 4,
		})
		if err != nil {
			t.Fatal(err)
		}
		g.eps = append(g.eps, e)
	}
	dir := t.TempDir()
	g.nodes = make([]*rfcom.Node, peers)
	g.socks = make([]string, peers)
	g.stop = make([]func() error, peers)
	for p := 1; p < peers; p++ {
		n, err := rfcom.NewNode(g.eps[p], outs[0][:rfcom.InfoPageSize], g.state, rfcom.Options{})
		if err != nil {
			t.Fatal(err)
		}
		g.nodes[p] = n
		g.socks[p] = filepath.Join(dir, fmt.Sprintf("rfcom%d.sock", p))
		ln, remove, err := Listen(g.socks[p])
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
		go func() { done <- Serve(ctx, n, ln, log.With("daemon", p)) }()
		var once sync.Once
		var serveErr error
		g.stop[p] = func() error {
			once.Do(func() {
				cancel()
				select {
				case serveErr = <-done:
				case <-time.After(10 * time.Second):
					serveErr = fmt.Errorf("Serve on peer %d did not return", p)
				}
				remove()
			})
			return serveErr
		}
		t.Cleanup(func() {
			if err := g.stop[p](); err != nil {
				t.Errorf("Serve on peer %d: %v", p, err)
			}
			n.Close()
		})
	}
	return g
}

// testWriter sends the daemons' logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// send sends m from the bare endpoint of peer from.
func (g *group) send(t *testing.T, from, to int, m queue.Message) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := g.eps[from].Send(to, m)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("raw send %d->%d: %v", from, to, err)
		}
		time.Sleep(10 * time.Microsecond)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// dialRetry dials until the other side listens.
func dialRetry(ctx context.Context, t *testing.T, sock string, peer int, port uint16) *Conn {
	t.Helper()
	for {
		c, err := Dial(ctx, sock, peer, port)
		if err == nil {
			return c
		}
		if !errors.Is(err, rfcom.ErrRefused) || ctx.Err() != nil {
			t.Fatalf("dial peer %d port %d: %v", peer, port, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func randomFrames(r *rand.Rand, n int) [][]byte {
	frames := make([][]byte, n)
	for i := range frames {
		size := 1 + r.IntN(200)
		if i%5 == 0 {
			size = 1 + r.IntN(rfcom.MaxFrame)
		}
		f := make([]byte, size)
		for j := range f {
			f[j] = byte(r.Uint32())
		}
		frames[i] = f
	}
	return frames
}

// swap sends out on c while it reads and checks in, then finishes c.
func swap(ctx context.Context, c *Conn, out, in [][]byte) error {
	errs := make(chan error, 2)
	go func() {
		for _, f := range out {
			if _, err := c.WriteContext(ctx, f); err != nil {
				errs <- fmt.Errorf("write: %w", err)
				return
			}
		}
		errs <- nil
	}()
	go func() {
		for i, want := range in {
			got, err := c.ReadFrame(ctx)
			if err != nil {
				errs <- fmt.Errorf("read frame %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("frame %d: got %d bytes, want %d", i, len(got), len(want))
				return
			}
		}
		errs <- nil
	}()
	return errors.Join(<-errs, <-errs)
}

func TestDialAcceptFrames(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 60*time.Second)
	r := rand.New(rand.NewPCG(1, 2))
	ab, ba := randomFrames(r, 40), randomFrames(r, 40)

	type accepted struct {
		c    *Conn
		peer int
		err  error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, peer, err := Accept(ctx, g.socks[2], 7)
		acc <- accepted{c, peer, err}
	}()
	a := dialRetry(ctx, t, g.socks[1], 2, 7)
	if a.Peer() != 2 || a.Port() != 7 {
		t.Errorf("dialed conn peer %d port %d", a.Peer(), a.Port())
	}
	got := <-acc
	if got.err != nil || got.peer != 1 || got.c.Peer() != 1 {
		t.Fatalf("accept: %+v", got)
	}
	b := got.c
	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() { errA = swap(ctx, a, ab, ba) })
	wg.Go(func() { errB = swap(ctx, b, ba, ab) })
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("a: %v; b: %v", errA, errB)
	}
	// a finishes: b reads the end of the stream, then a's Finish returns.
	finished := make(chan error, 1)
	go func() { finished <- a.Finish(ctx) }()
	if _, err := b.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("b after a's Finish: %v", err)
	}
	if err := <-finished; err != nil {
		t.Fatalf("Finish: %v", err)
	}
	b.Close()

	// By name, and a refused one (nobody ever accepted on port 17).
	if _, err := DialName(ctx, g.socks[1], "beta", 17); !errors.Is(err, rfcom.ErrRefused) {
		t.Fatalf("DialName with no listener: %v", err)
	}
	if _, err := DialName(ctx, g.socks[1], "gamma", 7); !errors.Is(err, rfcom.ErrUnknownName) || err.Error() != `rfcom: no such subOS: "gamma" is not on the board` {
		t.Fatalf("DialName gamma: %v", err)
	}
	if _, err := Dial(ctx, g.socks[1], 1, 7); !errors.Is(err, rfcom.ErrNoPeer) {
		t.Fatalf("Dial self: %v", err)
	}
	go func() {
		c, peer, err := Accept(ctx, g.socks[2], 8)
		acc <- accepted{c, peer, err}
	}()
	var c *Conn
	for {
		var err error
		if c, err = DialName(ctx, g.socks[1], "beta", 8); err == nil {
			break
		}
		if !errors.Is(err, rfcom.ErrRefused) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	got = <-acc
	if got.err != nil {
		t.Fatal(got.err)
	}
	if _, err := got.c.Write([]byte("from beta")); err != nil {
		t.Fatal(err)
	}
	// b closes: c reads the frame, then the end of the stream.
	got.c.Close()
	if f, err := c.ReadFrame(ctx); err != nil || string(f) != "from beta" {
		t.Fatalf("ReadFrame = %q, %v", f, err)
	}
	if _, err := c.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame after close: %v", err)
	}
	c.Close()
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
	if _, err := got.c.Write(nil); !errors.Is(err, rfcom.ErrFrameSize) {
		t.Fatalf("empty Write: %v", err)
	}
}

func TestConcurrentChannels(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 60*time.Second)
	const clients = 6
	var wg sync.WaitGroup
	errs := make(chan error, 2*clients)
	peers := make(chan int, clients)
	for i := range clients {
		// Every acceptor waits on the shared port 9; each echoes one
		// channel.
		wg.Go(func() {
			c, peer, err := Accept(ctx, g.socks[2], 9)
			if err != nil {
				errs <- fmt.Errorf("accept %d: %w", i, err)
				return
			}
			defer c.Close()
			peers <- peer
			for {
				f, err := c.ReadFrame(ctx)
				if errors.Is(err, io.EOF) {
					return
				}
				if err != nil {
					errs <- fmt.Errorf("echo %d: %w", i, err)
					return
				}
				if _, err := c.WriteContext(ctx, f); err != nil {
					errs <- fmt.Errorf("echo %d: %w", i, err)
					return
				}
			}
		})
	}
	for i := range clients {
		wg.Go(func() {
			c := dialRetry(ctx, t, g.socks[1], 2, 9)
			defer c.Close()
			frames := randomFrames(rand.New(rand.NewPCG(uint64(i), 9)), 30)
			if err := swap(ctx, c, frames, frames); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			if err := c.Finish(ctx); err != nil {
				errs <- fmt.Errorf("client %d finish: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	close(peers)
	for p := range peers {
		if p != 1 {
			t.Errorf("accepted from peer %d", p)
		}
	}
	// Nobody waits on port 9 any more: the daemon stopped listening.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := Dial(ctx, g.socks[1], 2, 9)
		if errors.Is(err, rfcom.ErrRefused) {
			break
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial after every acceptor left: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestControl(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 30*time.Second)
	early, _ := control.Text("before anyone listens")
	g.send(t, 0, 1, early)
	g.send(t, 0, 1, control.Board(6))
	g.send(t, 2, 1, control.Board(99)) // not from the supervisor: dropped
	time.Sleep(200 * time.Millisecond)
	sub, err := Control(ctx, g.socks[1])
	if err != nil {
		t.Fatal(err)
	}
	late, _ := control.Text("after")
	g.send(t, 0, 1, late)
	want := []control.Control{
		{Type: control.TypeText, Text: "before anyone listens"},
		{Type: control.TypeBoard, Seq: 6},
		{Type: control.TypeText, Text: "after"},
	}
	for i, w := range want {
		c, err := sub.Next(ctx)
		if err != nil || c != w {
			t.Fatalf("message %d = %+v, %v; want %+v", i, c, err, w)
		}
	}
	// Two subscribers both get the next one.
	sub2, err := Control(ctx, g.socks[1])
	if err != nil {
		t.Fatal(err)
	}
	both, _ := control.Text("to both")
	g.send(t, 0, 1, both)
	for _, s := range []*Subscription{sub, sub2} {
		if c, err := s.Next(ctx); err != nil || c.Text != "to both" {
			t.Fatalf("Next = %+v, %v", c, err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := sub.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next with nothing to come = %v", err)
	}
	// The subscription still works after a timed-out Next.
	again, _ := control.Text("again")
	g.send(t, 0, 1, again)
	if c, err := sub.Next(ctx); err != nil || c.Text != "again" {
		t.Fatalf("Next after timeout = %+v, %v", c, err)
	}
	last, _ := control.Text("last")
	g.send(t, 0, 1, last)
	for c, err := range sub2.Messages(ctx) {
		if err != nil || c.Text != "again" && c.Text != "last" {
			t.Fatalf("Messages: %+v, %v", c, err)
		}
		if c.Text == "last" {
			break
		}
	}
	sub.Close()
	sub2.Close()
}

func TestInfo(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 10*time.Second)
	info, err := Info(ctx, g.socks[2])
	if err != nil {
		t.Fatal(err)
	}
	if info.Self != 2 || info.Peers != 3 || info.BoardErr != nil || len(info.Board.Entries) != 2 {
		t.Fatalf("info %+v", info)
	}
	e, ok := info.Board.Lookup("beta")
	if !ok || e.Peer != 2 || e.MAC != [6]byte{0x52, 0x54, 0, 0, 0, 2} || info.Board.Seq == 0 {
		t.Fatalf("board %+v", info.Board)
	}
	if e, _ := info.Board.Lookup("alpha"); len(e.CommCores) != 2 || e.CommCores[1] != 3 {
		t.Fatalf("alpha %+v", e)
	}
	if ok, err := Running(ctx, g.socks[2]); !ok || err != nil {
		t.Fatalf("Running = %v, %v", ok, err)
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if ok, err := Running(ctx, missing); ok || err != nil {
		t.Fatalf("Running(missing) = %v, %v", ok, err)
	}
	if _, err := Info(ctx, missing); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("Info(missing) = %v", err)
	}
}

// rawRequest sends msg on a new connection and returns the reply and
// whether the daemon then closed the connection.
func rawRequest(t *testing.T, sock string, msg []byte) (string, bool) {
	t.Helper()
	c, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, MaxReply)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reply to %q: %v", msg, err)
	}
	_, err = c.Read(buf)
	return string(buf[:n]), errors.Is(err, io.EOF)
}

func TestMalformedRequests(t *testing.T) {
	g := newGroup(t, 3)
	sock := g.socks[1]
	for _, req := range []string{
		`not json`,
		`{"op":"frobnicate"}`,
		`{}`,
		`{"op":"dial","port":1}`,
		`{"op":"dial","peer":2,"to":"beta","port":1}`,
		`{"op":"dial","peer":2}`,
		`{"op":"dial","peer":-1,"port":1}`,
		`{"op":"dial","peer":2,"port":70000}`,
		`{"op":"accept","port":1,"peer":2}`,
		`{"op":"info","port":1}`,
		`{"op":"info","extra":true}`,
		`{"op":"info"} {"op":"info"}`,
		`{"op":"info"` + string(bytes.Repeat([]byte(" "), MaxRequest)) + `}`,
		`[1,2]`,
	} {
		reply, closed := rawRequest(t, sock, []byte(req))
		if !bytes.Contains([]byte(reply), []byte(`"code":"bad-request"`)) || !closed {
			t.Errorf("request %.40q: reply %s, closed %v", req, reply, closed)
		}
	}
	// An empty message is the end of the stream: no reply.
	c, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(nil)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 100)); !errors.Is(err, io.EOF) {
		t.Errorf("after an empty request: %d, %v", n, err)
	}
	c.Close()
	// A bad request through the client is ErrBadRequest.
	if _, err := Dial(ctxT(t, 5*time.Second), sock, 70000, 1); !errors.Is(err, ErrBadRequest) {
		t.Errorf("Dial peer 70000: %v", err)
	}
	// Still healthy.
	if info, err := Info(ctxT(t, 5*time.Second), sock); err != nil || info.Self != 1 {
		t.Fatalf("info after bad requests: %+v, %v", info, err)
	}
}

func TestClientLeaves(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 30*time.Second)

	// A client that leaves while waiting to accept, and one while dialing
	// a peer that never answers (peer 0 is a bare endpoint).
	c, err := net.Dial("unixpacket", g.socks[2])
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"op":"accept","port":3}`))
	time.Sleep(50 * time.Millisecond)
	c.Close()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if _, err := Dial(short, g.socks[1], 0, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial of a silent peer: %v", err)
	}
	cancel()

	// A client that sends a big frame and leaves at once, and a reader
	// that leaves while the daemon is writing frames to it.
	acc := make(chan *Conn, 1)
	go func() {
		c, _, err := Accept(ctx, g.socks[2], 4)
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	a := dialRetry(ctx, t, g.socks[1], 2, 4)
	b := <-acc
	big := bytes.Repeat([]byte{7}, rfcom.MaxFrame)
	for range 3 {
		if _, err := b.WriteContext(ctx, big); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.WriteContext(ctx, big); err != nil {
		t.Fatal(err)
	}
	a.Close() // with frames unread: an abort, a's frame may be lost
	// b sees at most the frame, then the end of the stream (the peer's
	// daemon closed the channel when a left).
	f, err := b.ReadFrame(ctx)
	if err == nil {
		if len(f) != rfcom.MaxFrame {
			t.Fatalf("ReadFrame = %d bytes", len(f))
		}
		_, err = b.ReadFrame(ctx)
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame after a left: %v", err)
	}
	b.Close()

	// A frame over MaxFrame ends the connection.
	go func() {
		c, _, err := Accept(ctx, g.socks[2], 5)
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	a = dialRetry(ctx, t, g.socks[1], 2, 5)
	b = <-acc
	if _, err := a.c.Write(make([]byte, rfcom.MaxFrame+1)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReadFrame(ctx); err == nil {
		t.Fatal("ReadFrame after an oversized frame succeeded")
	}
	if _, err := b.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("peer after an oversized frame: %v", err)
	}
	a.Close()
	b.Close()

	// The daemons are healthy: a new channel works.
	go func() {
		c, _, err := Accept(ctx, g.socks[2], 6)
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	a = dialRetry(ctx, t, g.socks[1], 2, 6)
	b = <-acc
	if err := swap(ctx, a, [][]byte{[]byte("ok")}, nil); err != nil {
		t.Fatal(err)
	}
	if f, err := b.ReadFrame(ctx); err != nil || string(f) != "ok" {
		t.Fatalf("after the leaves: %q, %v", f, err)
	}
	a.Close()
	b.Close()
}

func TestPeerGone(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 30*time.Second)
	acc := make(chan *Conn, 1)
	go func() {
		c, _, err := Accept(ctx, g.socks[2], 4)
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	a := dialRetry(ctx, t, g.socks[1], 2, 4)
	<-acc
	g.state.SetAlive(2, false)
	g.irq.StateChanged(2) // the state-change interrupt
	if _, err := a.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame after the peer died: %v", err)
	}
	if _, err := Dial(ctx, g.socks[1], 2, 4); !errors.Is(err, rfcom.ErrPeerGone) {
		t.Fatalf("Dial of a dead peer: %v", err)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.sock")
	ln, remove, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v, %v", fi.Mode(), err)
	}
	if _, _, err := Listen(path); err == nil {
		t.Fatal("second Listen on a live socket succeeded")
	}
	ln.Close() // leaves a stale socket
	ln, remove2, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	remove() // not its socket any more: kept
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("remove of an old listener deleted the new socket: %v", err)
	}
	ln.Close()
	remove2()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after remove: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, _, err := Listen(file); err == nil {
		t.Fatal("Listen over a regular file succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
}

func TestServeStops(t *testing.T) {
	g := newGroup(t, 3)
	ctx := ctxT(t, 30*time.Second)
	sub, err := Control(ctx, g.socks[1])
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan *Conn, 1)
	go func() {
		c, _, err := Accept(ctx, g.socks[2], 4)
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	a := dialRetry(ctx, t, g.socks[1], 2, 4)
	b := <-acc
	if err := g.stop[1](); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := sub.Next(ctx); !errors.Is(err, ErrDaemonGone) {
		t.Fatalf("Next after the daemon stopped: %v", err)
	}
	if _, err := a.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame after the daemon stopped: %v", err)
	}
	// The channel was closed: the other side sees its end.
	if _, err := b.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("peer ReadFrame after the daemon stopped: %v", err)
	}
	if _, err := Info(ctx, g.socks[1]); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("Info after the daemon stopped: %v", err)
	}
}
