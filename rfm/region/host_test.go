package region

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/vmm/shmem/abi"
)

// guest is a fake subOS peer of the FICM group: a ficm/endpoint over the
// same memory, its doorbell ringing the region's eventfds and its waiter
// sleeping on its own.
type guest struct {
	peer   int
	ep     *endpoint.Endpoint
	sendMu sync.Mutex
	msgs   chan queue.Message // non-PING messages received (from peer 0)
}

type guestBell struct{ r *Region }

func (b guestBell) Ring(peer int) error { return b.r.Ring(peer, 0) }

type guestWaiter struct {
	r    *Region
	peer int
}

func (w guestWaiter) Wait(ctx context.Context) error { return w.r.Wait(ctx, w.peer, 0) }

func newGuest(t *testing.T, r *Region, peer int) *guest {
	t.Helper()
	peers := r.Spec().Layout.Peers
	el, err := endpoint.NewLayout(peers, FICMSlots)
	if err != nil {
		t.Fatal(err)
	}
	sections := make([][]byte, peers)
	for i := range sections {
		out, err := r.Output(i)
		if err != nil {
			t.Fatal(err)
		}
		sections[i] = out[InfoPageSize:]
	}
	st, err := endpoint.NewStateTable(r.StateTable(), peers)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := endpoint.New(endpoint.Config{Self: peer, Layout: el, Sections: sections, State: st,
		Doorbell: guestBell{r}, Waiter: guestWaiter{r, peer}, PollRounds: 4})
	if err != nil {
		t.Fatal(err)
	}
	return &guest{peer: peer, ep: ep, msgs: make(chan queue.Message, 256)}
}

func (g *guest) send(to int, m queue.Message) error {
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	return g.ep.Send(to, m)
}

// run answers PINGs and forwards every other message until ctx is done.
func (g *guest) run(ctx context.Context, t *testing.T) {
	for {
		from, m, err := g.ep.RecvWait(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			t.Errorf("guest %d: %v", g.peer, err)
			return
		}
		if from != HostPeer {
			t.Errorf("guest %d: message from %d", g.peer, from)
			continue
		}
		if m.Type == control.TypePing {
			c, err := control.Decode(m)
			if err != nil {
				t.Errorf("guest %d: %v", g.peer, err)
				continue
			}
			if err := g.send(from, control.Pong(c.Cookie)); err != nil {
				t.Errorf("guest %d: pong: %v", g.peer, err)
			}
			continue
		}
		g.msgs <- m
	}
}

func (g *guest) expect(t *testing.T, typ uint8) control.Control {
	t.Helper()
	select {
	case m := <-g.msgs:
		c, err := control.Decode(m)
		if err != nil || c.Type != typ {
			t.Fatalf("guest %d: got %+v, %v; want type %#x", g.peer, c, err, typ)
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("guest %d: no message of type %#x", g.peer, typ)
	}
	return control.Control{}
}

// group is a FICM region with a running Host and guests 1..peers-1 (the
// ones listed in running run their receive loops).
type group struct {
	r      *Region
	h      *Host
	guests []*guest
	logs   *bytes.Buffer
	logMu  *sync.Mutex
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (g *group) logText() string {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	return g.logs.String()
}

func newGroup(t *testing.T, peers int, running ...int) *group {
	t.Helper()
	return newGroupWith(t, peers, nil, running...)
}

// newGroupWith is newGroup with setup called on the Host before Run.
func newGroupWith(t *testing.T, peers int, setup func(*Host), running ...int) *group {
	t.Helper()
	r, err := Create(ficmSpec(t, peers))
	if err != nil {
		t.Fatal(err)
	}
	g := &group{r: r, logs: new(bytes.Buffer), logMu: new(sync.Mutex)}
	log := slog.New(slog.NewTextHandler(lockedWriter{g.logMu, g.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if g.h, err = NewHost(r, log); err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(g.h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		runErr <- g.h.Run(ctx)
	}()
	g.guests = make([]*guest, peers)
	for p := 1; p < peers; p++ {
		g.guests[p] = newGuest(t, r, p)
		if err := g.h.SetAlive(p, true); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.guests[p].run(ctx, t)
		}()
	}
	t.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run or a guest did not return after cancel")
		}
		if err := <-runErr; err != nil {
			t.Errorf("Run = %v", err)
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return g
}

func TestNewHostChecks(t *testing.T) {
	r, err := Create(segmentSpec(t, 2, 4096, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := NewHost(r, nil); !errors.Is(err, ErrNotFICM) {
		t.Fatalf("NewHost(segment) = %v", err)
	}
	small := ficmSpec(t, 3)
	small.Layout.OutputSize = 4096
	r2, err := Create(small)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := NewHost(r2, nil); !errors.Is(err, ErrSpec) {
		t.Fatalf("NewHost(small sections) = %v", err)
	}
	r3, err := Create(ficmSpec(t, 3))
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(r3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Alive(0) || h.Alive(1) || h.Peers() != 3 {
		t.Fatal("host not alive after NewHost, or a guest alive")
	}
	b, err := board.ReadGroup(mustOutput(t, r3, 0)[:board.PageSize], 3)
	if err != nil || len(b.Entries) != 0 {
		t.Fatalf("initial board %+v, %v", b, err)
	}
	r3.Close()
	if _, err := NewHost(r3, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewHost(closed) = %v", err)
	}
}

func mustOutput(t *testing.T, r *Region, peer int) []byte {
	t.Helper()
	out, err := r.Output(peer)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPingBothWays(t *testing.T) {
	g := newGroup(t, 3, 1, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range []int{1, 2, 1} {
		if rtt, err := g.h.Ping(ctx, p); err != nil {
			t.Fatalf("host ping %d: %v", p, err)
		} else {
			t.Logf("host -> %d: %v", p, rtt)
		}
	}
	// Guest -> host.
	if err := g.guests[2].send(HostPeer, control.Ping(0xC0FFEE)); err != nil {
		t.Fatal(err)
	}
	if c := g.guests[2].expect(t, control.TypePong); c.Cookie != 0xC0FFEE {
		t.Fatalf("PONG cookie %#x", c.Cookie)
	}
	// Concurrent Pings from several goroutines.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := g.h.Ping(ctx, 1+i%2); err != nil {
				t.Errorf("ping %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	st := g.h.Stats()
	if st.PongsMatched != 11 || st.PingsAnswered != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Ping errors.
	if _, err := g.h.Ping(ctx, 0); !errors.Is(err, ErrRange) {
		t.Fatalf("Ping(0) = %v", err)
	}
	if _, err := g.h.Ping(ctx, 3); !errors.Is(err, ErrRange) {
		t.Fatalf("Ping(3) = %v", err)
	}
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if err := g.h.SetAlive(2, false); err != nil {
		t.Fatal(err)
	}
	if _, err := g.h.Ping(short, 2); !errors.Is(err, endpoint.ErrPeerDown) {
		t.Fatalf("Ping(dead) = %v", err)
	}
}

func TestPingTimeout(t *testing.T) {
	g := newGroup(t, 2) // guest 1 never answers
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.h.Ping(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping = %v", err)
	}
}

func TestSendText(t *testing.T) {
	g := newGroup(t, 3, 1)
	if err := g.h.SendText(1, "maintenance at 22:00 ✓"); err != nil {
		t.Fatal(err)
	}
	if c := g.guests[1].expect(t, control.TypeText); c.Text != "maintenance at 22:00 ✓" {
		t.Fatalf("text %q", c.Text)
	}
	if err := g.h.SendText(1, strings.Repeat("x", 63)); !errors.Is(err, control.ErrTooLong) {
		t.Fatalf("long text: %v", err)
	}
	if err := g.h.SendText(1, ""); !errors.Is(err, control.ErrMalformed) {
		t.Fatalf("empty text: %v", err)
	}
	if err := g.h.SendText(1, "\xff\xfe"); !errors.Is(err, control.ErrMalformed) {
		t.Fatalf("bad UTF-8: %v", err)
	}
	for _, p := range []int{0, -1, 3} {
		if err := g.h.SendText(p, "hi"); !errors.Is(err, ErrRange) {
			t.Fatalf("SendText(%d) = %v", p, err)
		}
	}
	// Guest 2 does not read: its queue fills.
	var err error
	sent := 0
	for ; sent < 1000; sent++ {
		if err = g.h.SendText(2, "fill"); err != nil {
			break
		}
	}
	if !errors.Is(err, endpoint.ErrFull) || sent != FICMSlots {
		t.Fatalf("after %d texts: %v, want ErrFull after %d", sent, err, FICMSlots)
	}
	if err := g.h.SetAlive(2, false); err != nil {
		t.Fatal(err)
	}
	if err := g.h.SendText(2, "hi"); !errors.Is(err, endpoint.ErrPeerDown) {
		t.Fatalf("dead peer: %v", err)
	}
	if err := g.h.SetAlive(5, true); !errors.Is(err, endpoint.ErrNoPeer) {
		t.Fatalf("SetAlive(5) = %v", err)
	}
}

func TestPublish(t *testing.T) {
	g := newGroup(t, 4, 1, 2)
	entries := []board.Entry{
		{Peer: 1, State: board.StateRunning, CommCores: []int{4, 5}, MAC: [6]byte{2, 0, 0, 0, 0, 1}, Name: "web"},
		{Peer: 2, State: board.StateRunning, Name: "db"},
		{Peer: 3, State: board.StateStopping, Name: "batch"},
	}
	// Guest 3 is not alive: no notification to it.
	if err := g.h.SetAlive(3, false); err != nil {
		t.Fatal(err)
	}
	seq, err := g.h.Publish(entries)
	if err != nil {
		t.Fatal(err)
	}
	if seq != g.h.BoardSeq() {
		t.Fatalf("seq %d, BoardSeq %d", seq, g.h.BoardSeq())
	}
	for _, p := range []int{1, 2} {
		if c := g.guests[p].expect(t, control.TypeBoard); c.Seq != seq {
			t.Fatalf("guest %d: BOARD seq %d, want %d", p, c.Seq, seq)
		}
		b, err := board.ReadGroup(mustOutput(t, g.r, 0)[:board.PageSize], 4)
		if err != nil {
			t.Fatal(err)
		}
		if b.Seq != seq || len(b.Entries) != 3 {
			t.Fatalf("guest %d reads %+v", p, b)
		}
		if e, ok := b.ByPeer(p); !ok || e.Name != entries[p-1].Name {
			t.Fatalf("guest %d: own entry %+v", p, e)
		}
	}
	if st := g.h.Stats(); st.BoardSkipped != 0 {
		t.Fatalf("stats %+v", st)
	}
	for name, bad := range map[string][]board.Entry{
		"peer 0":    {{Peer: 0, State: board.StateRunning, Name: "x"}},
		"peer 4":    {{Peer: 4, State: board.StateRunning, Name: "x"}},
		"bad name":  {{Peer: 1, State: board.StateRunning, Name: "x y"}},
		"no state":  {{Peer: 1, Name: "x"}},
		"9 cores":   {{Peer: 1, State: board.StateRunning, Name: "x", CommCores: make([]int, 9)}},
		"dup names": {{Peer: 1, State: board.StateRunning, Name: "x"}, {Peer: 2, State: board.StateRunning, Name: "x"}},
	} {
		if _, err := g.h.Publish(bad); !errors.Is(err, board.ErrInvalid) {
			t.Errorf("%s: Publish = %v", name, err)
		}
	}
	if g.h.BoardSeq() != seq {
		t.Fatal("rejected boards changed the seq")
	}
	// Guest 3 alive but not reading: its queue fills and notifications are
	// skipped while the board keeps being published.
	if err := g.h.SetAlive(3, true); err != nil {
		t.Fatal(err)
	}
	for range FICMSlots + 2 {
		if _, err := g.h.Publish(entries); err != nil {
			t.Fatal(err)
		}
	}
	// (Guests 1 and 2 may fall behind too: at least guest 3's two.)
	if st := g.h.Stats(); st.BoardSkipped < 2 {
		t.Fatalf("BoardSkipped %d, want >= 2", st.BoardSkipped)
	}
	if n := strings.Count(g.logText(), "region=ficm peer=3 seq="); n != 2 {
		t.Fatalf("guest 3's skipped notifications logged %d times, want 2:\n%s", n, g.logText())
	}
	// A restarted supervisor's Host continues the board.
	h2, err := NewHost(g.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h2.BoardSeq() != g.h.BoardSeq() {
		t.Fatalf("restarted host seq %d, want %d", h2.BoardSeq(), g.h.BoardSeq())
	}
}

func TestGuestMisbehaviour(t *testing.T) {
	g := newGroup(t, 3, 1)
	bad := g.guests[2]
	// Messages the Host must drop and count.
	txt, _ := control.Text("I am the supervisor")
	for _, m := range []queue.Message{
		txt,
		control.Board(99),
		control.Pong(12345),
		{Type: 0x44, Len: 8},
		{Type: control.TypePing, Len: 3},
		{Type: 0x01, Len: 4},
		{Type: 0x80, Len: 62},
	} {
		if err := bad.send(HostPeer, m); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, ctx, "drops counted", func() bool {
		st := g.h.Stats()
		return st.Unhonoured == 2 && st.PongsUnexpected == 1 && st.Malformed == 2 && st.NotControl == 2
	})
	// Garbage indices in guest 2's queue to the Host.
	el, _ := endpoint.NewLayout(3, FICMSlots)
	sec := mustOutput(t, g.r, 2)[InfoPageSize:]
	tx := sec[el.TxOffset(HostPeer) : el.TxOffset(HostPeer)+queue.TxSize(FICMSlots)]
	for i := range tx {
		tx[i] = 0xFF
	}
	if err := g.r.Ring(HostPeer, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "corrupt peer counted", func() bool { return g.h.Stats().CorruptPeers == 1 })
	// More garbage and doorbells: Run keeps serving guest 1.
	for i := range tx {
		tx[i] = byte(i * 7)
	}
	for range 10 {
		g.r.Ring(HostPeer, 0)
	}
	if _, err := g.h.Ping(ctx, 1); err != nil {
		t.Fatalf("ping after corruption: %v", err)
	}
	if err := g.guests[1].send(HostPeer, control.Ping(7)); err != nil {
		t.Fatal(err)
	}
	g.guests[1].expect(t, control.TypePong)
	if n := strings.Count(g.logText(), "corrupted its queue"); n != 1 {
		t.Fatalf("corruption logged %d times", n)
	}
	if st := g.h.Stats(); st.CorruptPeers != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBadFrameIsDropped(t *testing.T) {
	g := newGroup(t, 2, 1)
	if err := g.guests[1].send(HostPeer, control.Ping(1)); err != nil {
		t.Fatal(err)
	}
	g.guests[1].expect(t, control.TypePong)
	// By hand, as a broken guest would: slot 1 of guest 1's queue to the
	// Host gets an invalid length, then the producer index moves to 2.
	el, _ := endpoint.NewLayout(2, FICMSlots)
	sec := mustOutput(t, g.r, 1)[InfoPageSize:]
	tx := el.TxOffset(HostPeer)
	slot1 := tx + 64 + 64 // the producer line, then slots
	sec[slot1], sec[slot1+1] = control.TypePing, 200
	prod, err := ring.Uint32At(sec, tx)
	if err != nil {
		t.Fatal(err)
	}
	if prod.Load() != 1 {
		t.Fatalf("producer index %d, want 1", prod.Load())
	}
	prod.Store(2)
	if err := g.r.Ring(HostPeer, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, ctx, "bad frame counted", func() bool { return g.h.Stats().BadFrames == 1 })
	// (Guest 1's own sender no longer matches the index moved by hand, so
	// only the Host -> guest direction is checked.)
	if err := g.h.SendText(1, "still here"); err != nil {
		t.Fatal(err)
	}
	g.guests[1].expect(t, control.TypeText)
	if st := g.h.Stats(); st.CorruptPeers != 0 || st.PingsAnswered != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRunReturnsOnCancel(t *testing.T) {
	r, err := Create(ficmSpec(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h, err := NewHost(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	// An already-cancelled context returns at once.
	if err := h.Run(ctx); err != nil {
		t.Fatalf("Run(cancelled) = %v", err)
	}
}

// Messages queued to a peer that went away are dropped before its slot is
// given to someone else; a live peer cannot be forgotten.
func TestForget(t *testing.T) {
	g := newGroup(t, 4, 1)
	for range 5 {
		if err := g.h.SendText(2, "stale"); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.guests[3].send(2, queue.Message{Type: 0x80}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.h.Forget(2); err == nil {
		t.Fatal("forgot a live peer")
	}
	if err := g.h.SetAlive(2, false); err != nil {
		t.Fatal(err)
	}
	if n, err := g.h.Forget(2); err != nil || n != 6 {
		t.Fatalf("Forget = %d, %v; want 6 dropped", n, err)
	}
	// The next holder of slot 2 starts with empty queues and can be sent
	// to at once.
	if err := g.h.SetAlive(2, true); err != nil {
		t.Fatal(err)
	}
	next := newGuest(t, g.r, 2)
	if _, m, ok, err := next.ep.Recv(); ok || err != nil {
		t.Fatalf("new holder of slot 2 got %+v, %v", m, err)
	}
	if err := g.h.SendText(2, "fresh"); err != nil {
		t.Fatal(err)
	}
	if _, m, ok, err := next.ep.Recv(); !ok || err != nil || string(m.Payload()) != "fresh" {
		t.Fatalf("after forget: %+v %v %v", m, ok, err)
	}
	for _, p := range []int{0, 4, -1} {
		if _, err := g.h.Forget(p); !errors.Is(err, ErrRange) {
			t.Errorf("Forget(%d) = %v", p, err)
		}
	}
}

// The supervisor raises the state-change interrupt (vector 0) on every
// other subOS peer when it changes an entry of the state table: its own
// when it starts, a departed peer's when it clears it; and only then.
func TestStateChangeInterrupt(t *testing.T) {
	r, err := Create(ficmSpec(t, 4))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// rung takes the pending signals of every peer's vector 0.
	rung := func() [4]uint64 {
		var got [4]uint64
		for p := range got {
			var buf [8]byte
			if _, err := unix.Read(r.bellFDs[p*r.Spec().Vectors+abi.StateChangeVector], buf[:]); err == nil {
				got[p] = binary.NativeEndian.Uint64(buf[:])
			}
		}
		return got
	}
	h, err := NewHost(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		what string
		do   func() error
		want [4]uint64
	}{
		{"the supervisor marks itself alive", nil, [4]uint64{0, 1, 1, 1}},
		{"a restarted supervisor finds itself alive", func() error { _, err := NewHost(r, nil); return err }, [4]uint64{}},
		{"peer 2 alive", func() error { return h.SetAlive(2, true) }, [4]uint64{0, 1, 0, 1}},
		{"peer 2 alive again", func() error { return h.SetAlive(2, true) }, [4]uint64{}},
		{"peer 2 leaves", func() error { return h.SetAlive(2, false) }, [4]uint64{0, 1, 0, 1}},
		{"peer 3 was not alive", func() error { return h.SetAlive(3, false) }, [4]uint64{}},
	}
	for _, s := range steps {
		if s.do != nil {
			if err := s.do(); err != nil {
				t.Fatalf("%s: %v", s.what, err)
			}
		}
		if got := rung(); got != s.want {
			t.Errorf("%s: vector 0 rung %v times per peer, want %v", s.what, got, s.want)
		}
	}
}
