package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"slices"
	"time"

	"rainforest/ficm/queue"
	"rainforest/rfcom"
	"rainforest/rfcom/ivshmem"
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
	ivs := fs.Bool("ivshmem", false, "run over QEMU's ivshmem device instead of the FICM device (--peer is the ivshmem peer id)")
	peers := fs.Int("peers", defaultIvshmemPeers, "with --ivshmem: the number of peers of the group")
	sock := registerSocket(fs)
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
	if *ivs {
		if err := checkIvshmemArgs(t, *serve, *peers); err != nil {
			return err
		}
	} else if flagSet(fs, "peers") {
		return usagef("--peers needs --ivshmem")
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
	if !*ivs {
		if err := refuseBesideDaemon(oc, e.socketPath(*sock), "bench"); err != nil {
			return err
		}
	}
	o := e.options()
	o.Poll = *mode == "poll"
	o.LosslessDatagrams = true
	var n *rfcom.Node
	if *ivs {
		var closeDev func() error
		if n, closeDev, err = e.openIvshmem(oc, *peers, o); err != nil {
			return err
		}
		defer closeDev()
	} else if n, err = rfcom.Open(oc, o); err != nil {
		return err
	}
	defer n.Close()
	b := benchSession{n: n, poll: o.Poll}
	if *serve {
		return withStats(n, b.serve(ctx, e))
	}
	peer, err := t.resolve(n)
	if err != nil {
		return err
	}
	if peer == n.Self() {
		return fmt.Errorf("peer %d is this peer", peer)
	}
	return withStats(n, b.client(ctx, e, peer, *count, *mode))
}

// withStats adds the node's counters to a benchmark's error, so that a
// failed run says what the node saw.
func withStats(n *rfcom.Node, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w (node %+v)", err, n.Stats())
}

// defaultIvshmemPeers is the default group size over ivshmem (the
// ivshmem server gives two guests ids 0 and 1).
const defaultIvshmemPeers = 2

// checkIvshmemArgs checks the arguments of bench --ivshmem.
func checkIvshmemArgs(t target, serve bool, peers int) error {
	switch {
	case t.to != "":
		return usagef("--to makes no sense with --ivshmem (there is no board): use --peer N, the ivshmem peer id")
	case peers < 2 || peers > ivshmem.MaxPeer+1:
		return usagef("--peers %d outside 2..%d", peers, ivshmem.MaxPeer+1)
	case !serve && t.peer >= peers:
		return usagef("--peer %d outside the %d peers of the group", t.peer, peers)
	}
	return nil
}

// flagSet reports whether the flag name was given.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// openIvshmem opens the first ivshmem-doorbell device and starts a Node on it: a
// FICM group of peers peers over its shared memory, its reserved zero page
// as the board page and no state table. The returned function closes the
// device (after the Node).
func (e *env) openIvshmem(ctx context.Context, peers int, o rfcom.Options) (*rfcom.Node, func() error, error) {
	sys, dev := o.Roots()
	infos, err := ivshmem.Find(sys)
	if err != nil {
		return nil, nil, err
	}
	if len(infos) == 0 {
		return nil, nil, fmt.Errorf("no ivshmem device (PCI %04x:%04x) under %s", ivshmem.VendorID, ivshmem.DeviceID, sys)
	}
	// ivshmem-plain (no BAR1) has no doorbells and gives every guest id 0.
	i := slices.IndexFunc(infos, func(i ivshmem.Info) bool { return i.Doorbell })
	if i < 0 {
		return nil, nil, fmt.Errorf("ivshmem device %s is ivshmem-plain (no peer ids, no doorbells): use ivshmem-doorbell with an ivshmem server", infos[0].Address)
	}
	var opts []ivshmem.OpenOption
	if o.Poll {
		opts = append(opts, ivshmem.WithoutInterrupts())
	}
	d, err := ivshmem.Open(ctx, sys, dev, infos[i], opts...)
	if err != nil {
		return nil, nil, err
	}
	if !o.Poll && !d.Interrupts() {
		_ = d.Close()
		return nil, nil, fmt.Errorf("ivshmem device %s has no INTx interrupt for uio_pci_generic (QEMU's ivshmem-doorbell interrupts through MSI-X only): use --mode poll", infos[i].Address)
	}
	ep, err := d.NewEndpoint(peers, rfcom.Slots)
	if err != nil {
		_ = d.Close()
		return nil, nil, err
	}
	n, err := rfcom.NewNode(ep, d.BoardPage(), nil, o)
	if err != nil {
		_ = d.Close()
		return nil, nil, err
	}
	return n, d.Close, nil
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
