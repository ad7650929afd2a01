package rfcom

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/queue"
	"rainforest/rfcom/fakesys"
	"rainforest/vmm/shmem/abi"
)

func TestDatagrams(t *testing.T) {
	for _, poll := range []bool{false, true} {
		g := newGroup(t, 3, nil, Options{Poll: poll})
		a, b := g.nodes[1], g.nodes[2]
		ctx := ctxT(t, 10*time.Second)
		for i := range 500 {
			if err := a.Send(ctx, 2, 0x80+uint8(i%128), []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			var d Datagram
			var err error
			if poll {
				d, err = b.RecvPoll(ctx)
			} else {
				d, err = b.Recv(ctx)
			}
			if err != nil || d.From != 1 || d.Type != 0x80+uint8(i%128) || len(d.Payload) != 1 || d.Payload[0] != byte(i) {
				t.Fatalf("datagram %d = %+v, %v", i, d, err)
			}
		}
		if _, ok := b.TryRecv(); ok {
			t.Fatal("TryRecv on empty queue")
		}
		if err := a.Send(ctx, 2, 0x7F, nil); !errors.Is(err, ErrBadType) {
			t.Fatalf("Send(0x7f) = %v", err)
		}
		if err := a.Send(ctx, 2, 0x80, make([]byte, 63)); !errors.Is(err, ErrTooLong) {
			t.Fatalf("Send(63 bytes) = %v", err)
		}
		if err := a.Send(ctx, 1, 0x80, nil); !errors.Is(err, ErrNoPeer) {
			t.Fatalf("Send(self) = %v", err)
		}
		g.kill(2)
		if err := a.Send(ctx, 2, 0x80, nil); !errors.Is(err, ErrPeerGone) {
			t.Fatalf("Send(dead) = %v", err)
		}
	}
}

// Multicast and broadcast reach each listed (or each live) peer once.
func TestMulticastBroadcast(t *testing.T) {
	g := newGroup(t, 5, nil, Options{})
	ctx := ctxT(t, 10*time.Second)
	a := g.nodes[1]
	expect := func(peer int, want byte) {
		t.Helper()
		d, err := g.nodes[peer].Recv(ctx)
		if err != nil || d.From != 1 || d.Payload[0] != want {
			t.Fatalf("peer %d got %+v, %v; want %d", peer, d, err, want)
		}
	}
	if err := a.Multicast(ctx, []int{2, 4, 2}, 0x90, []byte{7}); err != nil {
		t.Fatal(err)
	}
	expect(2, 7)
	expect(4, 7)
	if _, ok := g.nodes[2].TryRecv(); ok {
		t.Error("peer 2 got the multicast twice")
	}
	if _, ok := g.nodes[3].TryRecv(); ok {
		t.Error("peer 3 got a multicast it was not sent")
	}
	g.kill(3)
	n, err := a.Broadcast(ctx, 0x91, []byte{9})
	if err != nil || n != 2 {
		t.Fatalf("Broadcast = %d, %v; want 2 live peers", n, err)
	}
	expect(2, 9)
	expect(4, 9)
	if err := a.Multicast(ctx, []int{2, 3}, 0x90, []byte{1}); !errors.Is(err, ErrPeerGone) {
		t.Errorf("multicast to a dead peer: %v", err)
	}
	expect(2, 1)
}

func TestControlAndPing(t *testing.T) {
	g := newGroup(t, 4, []int{3}, Options{})
	a, b := g.nodes[1], g.nodes[2]
	ctx := ctxT(t, 10*time.Second)
	txt, _ := control.Text("maintenance at 5")
	g.send(t, 3, 1, txt) // from a guest: dropped
	g.send(t, 3, 1, control.Board(9))
	g.send(t, 0, 1, txt) // from the supervisor: delivered
	g.send(t, 0, 1, control.Board(42))
	g.send(t, 0, 1, queue.Message{Type: control.TypePing, Len: 3}) // malformed
	c, err := a.Control(ctx)
	if err != nil || c.Type != control.TypeText || c.Text != "maintenance at 5" {
		t.Fatalf("Control = %+v, %v", c, err)
	}
	if c, err = a.Control(ctx); err != nil || c.Type != control.TypeBoard || c.Seq != 42 {
		t.Fatalf("Control = %+v, %v", c, err)
	}
	waitStats(t, a, "forbidden", func(s Stats) bool { return s.Forbidden == 2 && s.Malformed == 1 })
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if c, err := a.Control(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third Control = %+v, %v", c, err)
	}
	// PING from the supervisor and from a guest are both answered.
	for _, from := range []int{0, 3} {
		g.send(t, from, 1, control.Ping(uint64(from)+77))
		p, m := g.recv(t, from)
		r, err := control.Decode(m)
		if p != 1 || err != nil || r.Type != control.TypePong || r.Cookie != uint64(from)+77 {
			t.Fatalf("answer to PING from %d: %d %+v %v", from, p, r, err)
		}
	}
	// Node to node.
	if rtt, err := a.Ping(ctx, 2); err != nil || rtt <= 0 {
		t.Fatalf("Ping = %v, %v", rtt, err)
	}
	if _, err := b.Ping(ctx, 1); err != nil {
		t.Fatal(err)
	}
}

func TestBoardLookup(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	a := g.nodes[1]
	if _, err := a.Board(); err != nil {
		t.Fatalf("empty board: %v", err)
	}
	_, err := g.board.Publish([]board.Entry{
		{Peer: 1, State: board.StateRunning, Name: "web", CommCores: []int{2}},
		{Peer: 2, State: board.StateStopping, Name: "db"},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := a.Board()
	if err != nil || len(b.Entries) != 2 {
		t.Fatalf("Board = %+v, %v", b, err)
	}
	if p, err := a.Lookup("db"); err != nil || p != 2 {
		t.Fatalf("Lookup(db) = %d, %v", p, err)
	}
	if _, err := a.Lookup("nope"); !errors.Is(err, ErrUnknownName) {
		t.Fatalf("Lookup(nope) = %v", err)
	}
	// A corrupt page is reported, not trusted.
	g.board.Publish(nil)
	if _, err := NewNode(g.eps[0], make([]byte, 100), nil, Options{}); err == nil {
		t.Fatal("NewNode with a short board page")
	}
}

func TestNewNodeOptions(t *testing.T) {
	g := newGroup(t, 2, []int{1}, Options{})
	for _, w := range []int{1, MaxFrame - 1, MaxWindow + 1} {
		if _, err := NewNode(g.eps[1], g.outs[0], nil, Options{Window: w}); err == nil {
			t.Errorf("window %d accepted", w)
		}
	}
	if _, err := NewNode(nil, g.outs[0], nil, Options{}); err == nil {
		t.Error("nil endpoint accepted")
	}
}

func segTree(t *testing.T) *fakesys.Tree {
	t.Helper()
	tr, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	devs := []fakesys.Device{
		{Address: "0000:00:04.0", Protocol: abi.ProtocolFICM, Name: "ficm", Peers: 3, ID: 1, OutputSize: 65536, UIO: true},
		{Address: "0000:00:05.0", Protocol: abi.ProtocolSegment, Name: "shared", Peers: 2, ID: 1, RWSize: 8192, OutputSize: 4096},
		{Address: "0000:00:06.0", Protocol: abi.ProtocolSegment, Name: "config", Peers: 3, ID: 2, RWSize: 4096, OutputSize: 4096, ReadOnly: true},
	}
	for _, d := range devs {
		if _, err := tr.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

func TestMapSegment(t *testing.T) {
	tr := segTree(t)
	opts := Options{SysRoot: tr.Sys, DevRoot: tr.Dev}
	ctx := ctxT(t, 10*time.Second)
	infos, err := Segments(ctx, opts)
	if err != nil || len(infos) != 2 || infos[0].Name != "shared" || infos[0].Size != 8192 || infos[0].ReadOnly ||
		infos[1].Name != "config" || !infos[1].ReadOnly {
		t.Fatalf("Segments = %+v, %v", infos, err)
	}
	s, err := MapSegment(ctx, opts, "shared")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "shared" || s.Size() != 8192 || len(s.Bytes()) != 8192 || s.ReadOnly() {
		t.Fatalf("segment %q %d %v", s.Name(), s.Size(), s.ReadOnly())
	}
	copy(s.Bytes()[100:], "hello")
	// The RW section follows the 4 KiB state table in the memory BAR.
	got, err := tr.ReadMemory("0000:00:05.0", 4096+100, 5)
	if err != nil || string(got) != "hello" {
		t.Fatalf("memory = %q, %v", got, err)
	}
	if err := s.Unmap(); err != nil {
		t.Fatal(err)
	}
	ro, err := MapSegment(ctx, opts, "config")
	if err != nil || !ro.ReadOnly() {
		t.Fatalf("MapSegment(config) = %v", err)
	}
	ro.Unmap()
	_, err = MapSegment(ctx, opts, "secret")
	if !errors.Is(err, ErrNotGranted) || !strings.Contains(err.Error(), `"secret"`) {
		t.Fatalf("MapSegment(secret) = %v", err)
	}
	// No uio binding happened for segments.
	if _, err := os.Lstat(tr.Path("0000:00:05.0") + "/driver"); err == nil {
		t.Fatal("segment bound to a driver")
	}
}

func TestOpenOnFakeTree(t *testing.T) {
	tr := segTree(t)
	ctx := ctxT(t, 10*time.Second)
	n, err := Open(ctx, Options{SysRoot: tr.Sys, DevRoot: tr.Dev})
	if err != nil {
		t.Fatal(err)
	}
	if n.Self() != 1 || n.Peers() != 3 || n.Device() == nil || n.Device().Name() != "ficm" {
		t.Fatalf("node %d of %d", n.Self(), n.Peers())
	}
	// STATE=1 written; the board page (zero: no board yet) is corrupt.
	regs, _ := os.ReadFile(tr.Path("0000:00:04.0") + "/resource0")
	if regs[abi.RegState] != abi.StateAlive {
		t.Fatalf("STATE = %d", regs[abi.RegState])
	}
	if _, err := n.Board(); !errors.Is(err, board.ErrCorrupt) {
		t.Fatalf("Board = %v", err)
	}
	// Every peer is dead in the (zero) state table.
	if _, err := n.Dial(ctx, 2, 1); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Dial = %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	regs, _ = os.ReadFile(tr.Path("0000:00:04.0") + "/resource0")
	if regs[abi.RegState] != 0 {
		t.Fatalf("STATE after Close = %d", regs[abi.RegState])
	}
	empty, _ := fakesys.New(t.TempDir())
	if _, err := Open(ctx, Options{SysRoot: empty.Sys, DevRoot: empty.Dev}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("Open without device = %v", err)
	}
}

// idleWaits waits until peer's dispatcher sleeps (its waiter's call count
// holds still for 50 ms) and returns the count.
func (g *group) idleWaits(t *testing.T, peer int) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	last := g.irq.Waits(peer)
	for {
		time.Sleep(50 * time.Millisecond)
		now := g.irq.Waits(peer)
		if now == last && now > 0 {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer %d's dispatcher never went to sleep (%d waits)", peer, now)
		}
		last = now
	}
}

// An idle node sleeps on its doorbell without a timer: no wake-up in
// 300 ms without an interrupt.
func TestIdleNodeDoesNotWake(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	before := g.idleWaits(t, 1)
	time.Sleep(300 * time.Millisecond)
	if woke := g.irq.Waits(1) - before; woke != 0 {
		t.Errorf("an idle node went to sleep %d more times in 300 ms without an interrupt", woke)
	}
	// A doorbell wakes it once, and it goes back to sleep.
	g.irq.Ring(1)
	if n := g.idleWaits(t, 1); n != before+1 {
		t.Errorf("one doorbell: %d waits, want %d", n, before+1)
	}
}

// A peer's state change reaches a sleeping node through the state-change
// interrupt, and only through it.
func TestStateChangeInterrupt(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	ctx := ctxT(t, 10*time.Second)
	c, _ := g.connect(t, ctx, 1, 2, 9)
	errc := readLater(ctx, c)
	before := g.idleWaits(t, 1)
	// The entry changes without the interrupt: the node does not look.
	g.state.SetAlive(2, false)
	time.Sleep(200 * time.Millisecond)
	if len(errc) != 0 || g.irq.Waits(1) != before {
		t.Fatalf("the node noticed without an interrupt (%d more waits)", g.irq.Waits(1)-before)
	}
	// The interrupt: the blocked Read ends at once.
	start := time.Now()
	g.irq.StateChanged(2)
	if err := <-errc; !errors.Is(err, ErrPeerGone) || time.Since(start) > 2*time.Second {
		t.Fatalf("Read after the state change = %v after %v", err, time.Since(start))
	}
	t.Logf("state change noticed in %v", time.Since(start))
}
