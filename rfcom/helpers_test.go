package rfcom

import (
	"context"
	"testing"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/endpoint/fakeirq"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
)

// group is a FICM group on plain memory: peer 0 (the supervisor) and the
// peers in raw are bare endpoints driven by the test, the others Nodes.
type group struct {
	layout endpoint.Layout
	outs   [][]byte // whole output sections: info page + endpoint section
	state  *endpoint.StateTable
	irq    *fakeirq.Interrupts
	eps    []*endpoint.Endpoint
	nodes  []*Node // nil for raw peers
	board  *board.Writer
}

func newGroup(t testing.TB, peers int, raw []int, opts Options) *group {
	t.Helper()
	l, err := endpoint.NewLayout(peers, Slots)
	if err != nil {
		t.Fatal(err)
	}
	g := &group{layout: l, irq: fakeirq.New(peers)}
	sections := make([][]byte, peers)
	for p := range peers {
		out := ring.AlignedBytes(InfoPageSize + l.SectionSize())
		g.outs = append(g.outs, out)
		sections[p] = out[SectionOffset:]
	}
	if g.state, err = endpoint.NewStateTable(ring.AlignedBytes(endpoint.StateTableSize(peers)), peers); err != nil {
		t.Fatal(err)
	}
	if g.board, err = board.NewWriter(g.outs[0][:InfoPageSize]); err != nil {
		t.Fatal(err)
	}
	for p := range peers {
		g.state.SetAlive(p, true)
		e, err := endpoint.New(endpoint.Config{
			Self: p, Layout: l, Sections: sections, State: g.state,
			Doorbell: g.irq, Waiter: g.irq.Waiter(p), PollRounds: 4,
		})
		if err != nil {
			t.Fatal(err)
		}
		g.eps = append(g.eps, e)
	}
	g.nodes = make([]*Node, peers)
	for p := 1; p < peers; p++ {
		if contains(raw, p) {
			continue
		}
		n, err := NewNode(g.eps[p], g.outs[0][:InfoPageSize], g.state, opts)
		if err != nil {
			t.Fatal(err)
		}
		g.nodes[p] = n
		t.Cleanup(func() { n.Close() })
	}
	return g
}

// kill marks peer dead in the state table and raises the state-change
// interrupt on the others, as the peer's VMM or the supervisor does.
func (g *group) kill(peer int) {
	g.state.SetAlive(peer, false)
	g.irq.StateChanged(peer)
}

// connect opens a channel from node `from` to node `to` on port and
// returns its two ends.
func (g *group) connect(t *testing.T, ctx context.Context, from, to int, port uint16) (dialer, acceptor *Channel) {
	t.Helper()
	l, err := g.nodes[to].Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if dialer, err = g.nodes[from].Dial(ctx, to, port); err != nil {
		t.Fatal(err)
	}
	if acceptor, err = l.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	return dialer, acceptor
}

// readLater starts a ReadFrame on c and returns where its error will be.
func readLater(ctx context.Context, c *Channel) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.ReadFrame(ctx)
		errc <- err
	}()
	return errc
}

// send sends m from raw peer `from`, retrying while the ring is full.
func (g *group) send(t testing.TB, from, to int, m queue.Message) {
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

// recv receives the next message at raw peer `at`.
func (g *group) recv(t testing.TB, at int) (int, queue.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	from, m, err := g.eps[at].RecvWait(ctx)
	if err != nil {
		t.Fatalf("raw recv at %d: %v", at, err)
	}
	return from, m
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitStats polls until cond holds on n's stats.
func waitStats(t *testing.T, n *Node, what string, cond func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(n.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, n.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}

func (n *Node) channelCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.channels)
}
