package endpoint

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/endpoint/fakeirq"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/vmm/shmem/abi"
)

type mesh struct {
	layout   Layout
	sections [][]byte
	state    *StateTable
	irq      *fakeirq.Interrupts
	ep       []*Endpoint
}

func newMesh(t *testing.T, peers, slots int) *mesh {
	t.Helper()
	l, err := NewLayout(peers, slots)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{layout: l, irq: fakeirq.New(peers)}
	for range peers {
		m.sections = append(m.sections, ring.AlignedBytes(l.SectionSize()))
	}
	if m.state, err = NewStateTable(ring.AlignedBytes(StateTableSize(peers)), peers); err != nil {
		t.Fatal(err)
	}
	for p := range peers {
		m.state.SetAlive(p, true)
		e, err := New(Config{
			Self: p, Layout: l, Sections: m.sections, State: m.state,
			Doorbell: m.irq, Waiter: m.irq.Waiter(p), PollRounds: 4,
		})
		if err != nil {
			t.Fatal(err)
		}
		m.ep = append(m.ep, e)
	}
	return m
}

func msg(t testing.TB, typ uint8, s string) queue.Message {
	m, err := queue.NewMessage(typ, []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLayout(t *testing.T) {
	l, err := NewLayout(5, 16)
	if err != nil {
		t.Fatal(err)
	}
	if l.TxBase() != PageSize || l.RxOffset(3) != 3*queue.RxSize {
		t.Fatalf("TxBase %d RxOffset(3) %d", l.TxBase(), l.RxOffset(3))
	}
	if got, want := l.SectionSize(), roundUp(PageSize+5*(64+64*16), PageSize); got != want || got%PageSize != 0 {
		t.Fatalf("SectionSize %d want %d", got, want)
	}
	// Areas must not overlap, and all must be cache-line aligned.
	type span struct{ lo, hi int }
	var spans []span
	for p := range 5 {
		spans = append(spans, span{l.RxOffset(p), l.RxOffset(p) + queue.RxSize})
		spans = append(spans, span{l.TxOffset(p), l.TxOffset(p) + queue.TxSize(16)})
	}
	for i, a := range spans {
		if a.lo%64 != 0 || a.hi > l.SectionSize() {
			t.Fatalf("span %v misaligned or outside section", a)
		}
		for _, b := range spans[i+1:] {
			if a.lo < b.hi && b.lo < a.hi {
				t.Fatalf("spans %v and %v overlap", a, b)
			}
		}
	}
	for _, bad := range [][2]int{{0, 16}, {MaxPeers + 1, 16}, {2, 3}, {2, 0}} {
		if _, err := NewLayout(bad[0], bad[1]); !errors.Is(err, ring.ErrLayout) {
			t.Errorf("NewLayout%v: %v", bad, err)
		}
	}
	l2, _ := NewLayout(2, 16)
	secs := [][]byte{make([]byte, l2.SectionSize()), make([]byte, l2.SectionSize()-1)}
	if _, _, err := l2.QueueAreas(secs, 0, 1); !errors.Is(err, ring.ErrLayout) {
		t.Errorf("short section: %v", err)
	}
	if _, _, err := l2.QueueAreas(secs, 0, 2); !errors.Is(err, ErrNoPeer) {
		t.Errorf("bad peer: %v", err)
	}
	if _, err := New(Config{Self: 0, Layout: l2, Sections: secs, Doorbell: fakeirq.New(2), Waiter: make(fakeirq.Waiter)}); !errors.Is(err, ring.ErrLayout) {
		t.Errorf("New with short section: %v", err)
	}
	if _, err := New(Config{Self: 2, Layout: l2, Sections: secs, Doorbell: fakeirq.New(2), Waiter: make(fakeirq.Waiter)}); !errors.Is(err, ErrNoPeer) {
		t.Errorf("New with bad self: %v", err)
	}
}

func TestStateTable(t *testing.T) {
	buf := ring.AlignedBytes(StateTableSize(3))
	st, err := NewStateTable(buf, 3)
	if err != nil {
		t.Fatal(err)
	}
	st.SetAlive(2, true)
	if st.Alive(0) || !st.Alive(2) || st.Alive(3) || st.Alive(-1) {
		t.Fatal("wrong alive flags")
	}
	if binary.NativeEndian.Uint32(buf[abi.StateEntryOffset(2):]) != 1 {
		t.Fatal("alive flag not at its ABI offset")
	}
	if changed, err := st.SetAlive(2, true); err != nil || changed {
		t.Errorf("setting an alive peer alive: changed %v, %v", changed, err)
	}
	if changed, err := st.SetAlive(2, false); err != nil || !changed {
		t.Errorf("setting an alive peer dead: changed %v, %v", changed, err)
	}
	if _, err := st.SetAlive(3, true); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("SetAlive out of range: %v", err)
	}
	if _, err := NewStateTable(buf[:3], 3); !errors.Is(err, ring.ErrLayout) {
		t.Fatalf("short table: %v", err)
	}
}

func TestTwoEndpoints(t *testing.T) {
	m := newMesh(t, 2, 4)
	a, b := m.ep[0], m.ep[1]
	for i := range 3 {
		if err := a.Send(1, msg(t, 1, fmt.Sprint("ping", i))); err != nil {
			t.Fatal(err)
		}
		from, got, ok, err := b.Recv()
		if !ok || err != nil || from != 0 || string(got.Payload()) != fmt.Sprint("ping", i) {
			t.Fatalf("b.Recv = %d %q %v %v", from, got.Payload(), ok, err)
		}
		if err := b.Send(0, msg(t, 2, "pong")); err != nil {
			t.Fatal(err)
		}
		if from, got, ok, _ := a.Recv(); !ok || from != 1 || got.Type != 2 {
			t.Fatalf("a.Recv = %d %v %v", from, got, ok)
		}
	}
	if _, _, ok, err := a.Recv(); ok || err != nil {
		t.Fatalf("Recv on empty = %v %v", ok, err)
	}
	for _, bad := range []int{0, -1, 2} {
		if err := a.Send(bad, msg(t, 1, "x")); !errors.Is(err, ErrNoPeer) {
			t.Errorf("Send(%d): %v", bad, err)
		}
	}
	for range 4 {
		a.Send(1, msg(t, 1, "fill"))
	}
	err := a.Send(1, msg(t, 1, "overflow"))
	var pe *PeerError
	if !errors.Is(err, ErrFull) || !errors.As(err, &pe) || pe.Peer != 1 {
		t.Fatalf("Send to full queue: %v", err)
	}
	if n := m.irq.Rung(1); n != 0 {
		t.Fatalf("%d doorbells rung while nobody slept", n)
	}
}

func TestMulticastBroadcast(t *testing.T) {
	m := newMesh(t, 4, 8)
	if err := m.ep[0].Broadcast(msg(t, 10, "all")); err != nil {
		t.Fatal(err)
	}
	if err := m.ep[2].Multicast([]int{0, 3}, msg(t, 11, "some")); err != nil {
		t.Fatal(err)
	}
	type rx struct {
		from int
		typ  uint8
	}
	drain := func(p int) []rx {
		var got []rx
		m.ep[p].Poll(100, func(from int, msg queue.Message) { got = append(got, rx{from, msg.Type}) })
		return got
	}
	want := map[int][]rx{
		0: {{2, 11}},
		1: {{0, 10}},
		2: {{0, 10}},
		3: {{0, 10}, {2, 11}},
	}
	for p := range 4 {
		if got := drain(p); fmt.Sprint(got) != fmt.Sprint(want[p]) {
			t.Errorf("peer %d received %v, want %v", p, got, want[p])
		}
	}
	// A dead peer is skipped by Broadcast and refused by Send/Multicast.
	m.state.SetAlive(3, false)
	if err := m.ep[1].Broadcast(msg(t, 12, "live")); err != nil {
		t.Fatal(err)
	}
	if got := drain(3); len(got) != 0 {
		t.Errorf("dead peer 3 received %v", got)
	}
	for _, p := range []int{0, 2} {
		if got := drain(p); fmt.Sprint(got) != fmt.Sprint([]rx{{1, 12}}) {
			t.Errorf("peer %d received %v", p, got)
		}
	}
	err := m.ep[1].Multicast([]int{0, 3, 1}, msg(t, 13, "x"))
	if !errors.Is(err, ErrPeerDown) || !errors.Is(err, ErrNoPeer) {
		t.Fatalf("Multicast to dead and self: %v", err)
	}
	if got := drain(0); len(got) != 1 {
		t.Fatalf("live member of failed multicast got %v", got)
	}
}

func TestRoundRobin(t *testing.T) {
	m := newMesh(t, 4, 8)
	for round := range 3 {
		for p := 1; p < 4; p++ {
			m.ep[p].Send(0, msg(t, uint8(round), ""))
		}
	}
	var order []int
	for {
		from, _, ok, err := m.ep[0].Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		order = append(order, from)
	}
	if fmt.Sprint(order) != "[1 2 3 1 2 3 1 2 3]" {
		t.Fatalf("receive order %v", order)
	}
	// Poll with a budget smaller than what is waiting stops at the budget
	// and resumes fairly.
	for p := 1; p < 4; p++ {
		for range 5 {
			m.ep[p].Send(0, msg(t, 0, ""))
		}
	}
	n, err := m.ep[0].Poll(7, func(int, queue.Message) {})
	if n != 7 || err != nil {
		t.Fatalf("Poll(7) = %d, %v", n, err)
	}
	n, _ = m.ep[0].Poll(100, func(int, queue.Message) {})
	if n != 8 {
		t.Fatalf("second Poll = %d, want 8", n)
	}
}

func TestCorruptPeerIsIsolated(t *testing.T) {
	m := newMesh(t, 3, 8)
	m.ep[1].Send(0, msg(t, 1, "before"))
	m.ep[2].Send(0, msg(t, 2, "ok"))
	// Peer 1 scribbles over its producer index for the queue to peer 0.
	tx, _, _ := m.layout.QueueAreas(m.sections, 1, 0)
	binary.NativeEndian.PutUint32(tx, 0xDEADBEEF)
	var got []int
	var corrupt error
	for range 5 {
		from, _, ok, err := m.ep[0].Recv()
		if err != nil {
			corrupt = err
		}
		if ok {
			got = append(got, from)
		}
	}
	var pe *PeerError
	if !errors.Is(corrupt, ring.ErrCorrupt) || !errors.As(corrupt, &pe) || pe.Peer != 1 || !m.ep[0].Broken(1) {
		t.Fatalf("corruption reported as %v (broken %v)", corrupt, m.ep[0].Broken(1))
	}
	if fmt.Sprint(got) != "[2]" {
		t.Fatalf("received from %v", got)
	}
	m.ep[2].Send(0, msg(t, 2, "still"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if from, _, err := m.ep[0].RecvWait(ctx); from != 2 || err != nil {
		t.Fatalf("RecvWait after corruption = %d, %v", from, err)
	}
	// A peer scribbling over the consumer index it owns breaks sends to it.
	_, rx, _ := m.layout.QueueAreas(m.sections, 0, 2)
	binary.NativeEndian.PutUint32(rx, 12345)
	if err := m.ep[0].Send(2, msg(t, 1, "")); !errors.Is(err, ring.ErrCorrupt) {
		t.Fatalf("Send past corrupt consumer index: %v", err)
	}
}

func TestWaitCancel(t *testing.T) {
	m := newMesh(t, 2, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := m.ep[0].Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v", err)
	}
	if m.ep[0].in[1].Armed() {
		t.Fatal("still armed after Wait")
	}
	if err := m.ep[0].Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on done ctx = %v", err)
	}
	m.ep[1].Send(0, msg(t, 1, ""))
	if err := m.ep[0].Wait(context.Background()); err != nil {
		t.Fatalf("Wait with a message waiting = %v", err)
	}
}

// TestWaitWakeups has three peers stream sequenced messages to a fourth
// that sleeps whenever it is idle; every message must arrive in order per
// sender, with the doorbells doing the waking.
func TestWaitWakeups(t *testing.T) {
	perSender := 50_000
	if testing.Short() || raceEnabled {
		perSender = 5_000
	}
	m := newMesh(t, 4, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for p := 1; p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mm queue.Message
			mm.Len = 4
			for i := 0; i < perSender; {
				binary.LittleEndian.PutUint32(mm.Data[:], uint32(i))
				err := m.ep[p].Send(0, mm)
				switch {
				case errors.Is(err, ErrFull):
					time.Sleep(time.Microsecond)
				case err != nil:
					errs <- err
					return
				default:
					i++
					if i%251 == 0 {
						time.Sleep(50 * time.Microsecond)
					}
				}
			}
		}()
	}
	next := make([]uint32, 4)
	for received := 0; received < 3*perSender; received++ {
		from, mm, err := m.ep[0].RecvWait(ctx)
		if err != nil {
			t.Fatalf("after %d messages (next %v): %v", received, next, err)
		}
		if got := binary.LittleEndian.Uint32(mm.Data[:]); got != next[from] {
			t.Fatalf("from %d: got %d want %d", from, got, next[from])
		}
		next[from]++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, _, ok, _ := m.ep[0].Recv(); ok {
		t.Fatal("extra message")
	}
	t.Logf("%d doorbells for %d messages", m.irq.Rung(0), 3*perSender)
}
