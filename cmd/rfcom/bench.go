package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"rainforest/ficm/queue"
	"rainforest/rfcom"
)

// Benchmark datagram types.
const (
	benchPing   uint8 = 0x80
	benchPong   uint8 = 0x81
	benchStream uint8 = 0x82
	benchEnd    uint8 = 0x83 // end of a stream: report, please
	benchReport uint8 = 0x84 // u64 messages, u64 ns from first to last
	benchQuit   uint8 = 0x85
)

// benchSession is one side of a benchmark.
type benchSession struct {
	n    *rfcom.Node
	poll bool
}

func (b benchSession) recv(ctx context.Context) (rfcom.Datagram, error) {
	if b.poll {
		return b.n.RecvPoll(ctx)
	}
	return b.n.Recv(ctx)
}

func (e *env) bench(args []string) error {
	fs := newFlags("bench")
	var t target
	t.register(fs)
	serve := fs.Bool("serve", false, "answer a benchmark client")
	count := fs.Int("n", 10000, "round trips, and messages streamed")
	mode := fs.String("mode", "irq", "poll (spin) or irq (doorbell wait)")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long (0: never)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if *mode != "poll" && *mode != "irq" {
		return usagef("--mode %q is not poll or irq", *mode)
	}
	if *serve {
		if t.to != "" || t.peer >= 0 {
			return usagef("--serve takes no --to or --peer")
		}
	} else {
		if err := t.check(); err != nil {
			return err
		}
		if *count < 1 {
			return usagef("--n %d must be positive", *count)
		}
	}
	ctx, cancel := withTimeout(*timeout)
	defer cancel()
	oc, ocancel := context.WithTimeout(ctx, openTimeout)
	defer ocancel()
	o := e.options()
	o.Poll = *mode == "poll"
	o.LosslessDatagrams = true
	n, err := rfcom.Open(oc, o)
	if err != nil {
		return err
	}
	defer n.Close()
	b := benchSession{n: n, poll: o.Poll}
	if *serve {
		return b.serve(ctx, e)
	}
	peer, err := t.resolve(n)
	if err != nil {
		return err
	}
	return b.client(ctx, e, peer, *count, *mode)
}

func (b benchSession) serve(ctx context.Context, e *env) error {
	var (
		msgs        uint64
		first, last time.Time
	)
	for {
		d, err := b.recv(ctx)
		if err != nil {
			return err
		}
		switch d.Type {
		case benchPing:
			if err := b.n.Send(ctx, d.From, benchPong, d.Payload); err != nil {
				return err
			}
		case benchStream:
			last = time.Now()
			if msgs == 0 {
				first = last
			}
			msgs++
		case benchEnd:
			var p [16]byte
			binary.LittleEndian.PutUint64(p[0:], msgs)
			binary.LittleEndian.PutUint64(p[8:], uint64(last.Sub(first)))
			if err := b.n.Send(ctx, d.From, benchReport, p[:]); err != nil {
				return err
			}
			msgs = 0
		case benchQuit:
			fmt.Fprintf(e.stdout, "bench: served peer %d\n", d.From)
			return nil
		}
	}
}

// await returns the next datagram of type typ from peer, skipping others.
func (b benchSession) await(ctx context.Context, peer int, typ uint8) (rfcom.Datagram, error) {
	for {
		d, err := b.recv(ctx)
		if err != nil {
			return d, err
		}
		if d.From == peer && d.Type == typ {
			return d, nil
		}
	}
}

func (b benchSession) client(ctx context.Context, e *env, peer, count int, mode string) error {
	payload := make([]byte, queue.MaxPayload) // 64-byte messages
	// Find the server: a first ping, repeated until answered.
	for {
		if err := b.n.Send(ctx, peer, benchPing, payload); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := b.await(wctx, peer, benchPong)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no answer from peer %d (is rfcom bench --serve running there?): %w", peer, ctx.Err())
		}
	}
	rtts := make([]time.Duration, count)
	for i := range count {
		binary.LittleEndian.PutUint64(payload, uint64(i+1))
		start := time.Now()
		if err := b.n.Send(ctx, peer, benchPing, payload); err != nil {
			return err
		}
		for {
			d, err := b.await(ctx, peer, benchPong)
			if err != nil {
				return err
			}
			if len(d.Payload) >= 8 && binary.LittleEndian.Uint64(d.Payload) == uint64(i+1) {
				break
			}
		}
		rtts[i] = time.Since(start)
	}
	slices.Sort(rtts)
	med := rtts[len(rtts)/2]
	p99 := rtts[max(0, (len(rtts)*99+99)/100-1)]
	fmt.Fprintf(e.stdout, "bench: peer %d mode %s 64-byte round trip median %v p99 %v, one-way ~%v (%d round trips)\n",
		peer, mode, med, p99, med/2, count)

	start := time.Now()
	for i := range count {
		binary.LittleEndian.PutUint64(payload, uint64(i))
		if err := b.n.Send(ctx, peer, benchStream, payload); err != nil {
			return err
		}
	}
	sent := time.Since(start)
	if err := b.n.Send(ctx, peer, benchEnd, nil); err != nil {
		return err
	}
	d, err := b.await(ctx, peer, benchReport)
	if err != nil {
		return err
	}
	if len(d.Payload) != 16 {
		return fmt.Errorf("bad report from peer %d (%d bytes)", peer, len(d.Payload))
	}
	got := binary.LittleEndian.Uint64(d.Payload)
	span := time.Duration(binary.LittleEndian.Uint64(d.Payload[8:]))
	rate := 0.0
	if span > 0 {
		rate = float64(got-1) / span.Seconds()
	}
	fmt.Fprintf(e.stdout, "bench: peer %d mode %s throughput %d of %d messages received in %v: %.0f msgs/s at the receiver (sent in %v)\n",
		peer, mode, got, count, span, rate, sent)
	if err := b.n.Send(ctx, peer, benchQuit, nil); err != nil {
		return err
	}
	if got != uint64(count) {
		return fmt.Errorf("peer %d received %d of %d messages", peer, got, count)
	}
	return nil
}
