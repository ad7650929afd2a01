package rfcom

import (
	"context"
	"testing"
)

// Datagram ping-pong between two Nodes on plain memory (both dispatchers
// busy-polling): the library's own cost per round trip.
func BenchmarkDatagramPingPong(b *testing.B) {
	g := newGroup(b, 3, nil, Options{Poll: true, LosslessDatagrams: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			d, err := g.nodes[2].RecvPoll(ctx)
			if err != nil {
				return
			}
			_ = g.nodes[2].Send(ctx, 1, 0x81, d.Payload)
		}
	}()
	payload := make([]byte, MaxDatagram)
	b.ResetTimer()
	for b.Loop() {
		if err := g.nodes[1].Send(ctx, 2, 0x80, payload); err != nil {
			b.Fatal(err)
		}
		if _, err := g.nodes[1].RecvPoll(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// Channel throughput of 4 KiB frames.
func BenchmarkChannel4K(b *testing.B) {
	g := newGroup(b, 3, nil, Options{})
	ctx := context.Background()
	l, _ := g.nodes[2].Listen(1)
	w, err := g.nodes[1].Dial(ctx, 2, 1)
	if err != nil {
		b.Fatal(err)
	}
	r, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := r.ReadContext(ctx, buf); err != nil {
				return
			}
		}
	}()
	frame := make([]byte, 4096)
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := w.WriteContext(ctx, frame); err != nil {
			b.Fatal(err)
		}
	}
}
