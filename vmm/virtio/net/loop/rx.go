package loop

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"rainforest/internal/fdwait"
	vnet "rainforest/vmm/virtio/net"
)

// Run implements net.Backend: it hands the guest the frames its peers
// put on the rings towards it, round after round (at most RxBatch frames
// a round, peerQuota from each ring in turn), each once the guest has
// buffers for one; when the rings have stayed empty for pollRounds
// rounds it sleeps on its doorbell, the rings armed. It returns when ctx
// ends.
func (b *Backend) Run(ctx context.Context, port vnet.Port) error {
	var ev [8]byte
	idle := 0
	for {
		n, err := b.poll(ctx, port)
		if err != nil {
			return nil // ctx ended
		}
		switch {
		case n == RxBatch:
			runtime.Gosched()
		case n == 0 && idle < pollRounds:
			// A stream's next frame is usually on its way: a few
			// rounds more before asking for doorbells.
			idle++
			runtime.Gosched()
			continue
		}
		if n > 0 {
			idle = 0
			continue
		}
		idle = 0
		if !b.arm() {
			continue
		}
		_, err = b.waiter.Read(ctx, b.bell.Fd(), ev[:])
		b.disarm()
		switch {
		case err == nil:
		case ctx.Err() != nil || errors.Is(err, fdwait.ErrClosed):
			return nil
		default:
			return fmt.Errorf("loop %s: doorbell: %w", b.network, err)
		}
	}
}

// poll makes one round over the rings; it returns the frames taken, or
// ctx's error.
func (b *Backend) poll(ctx context.Context, port vnet.Port) (int, error) {
	total := 0
	for i := range b.peers {
		p := b.peers[(b.next+i)%len(b.peers)]
		for k := 0; k < peerQuota && total < RxBatch; k++ {
			got, err := b.receive(ctx, port, p)
			if err != nil {
				return total, err
			}
			if !got {
				break
			}
			total++
		}
	}
	b.next = (b.next + 1) % len(b.peers)
	return total, nil
}

// receive takes one record from p's ring once the guest can take a
// frame, and hands its frame on; it reports whether there was one.
func (b *Backend) receive(ctx context.Context, port vnet.Port, p *peer) (bool, error) {
	if p.broken {
		return false, nil
	}
	n, err := p.in.Peek(1)
	if err != nil {
		b.abandon(p, err)
		return false, nil
	}
	if n == 0 {
		return false, nil
	}
	if err := port.WaitRx(ctx); err != nil {
		return false, err
	}
	length := recordLength(p.in.Slot(0))
	need := 0
	if length >= 0 {
		need = recordSlots(length)
		if n, err = p.in.Peek(need); err != nil {
			b.abandon(p, err)
			return false, nil
		}
	}
	if length < 0 || n < need {
		// A producer publishes records whole: this one lies. Skip all
		// it has published.
		b.c.rxBadRecord.Add(1)
		n, err := p.in.Peek(p.in.Slots())
		if err != nil {
			b.abandon(p, err)
			return false, nil
		}
		p.in.Release(n)
		return true, nil
	}
	pkt := b.rxBuf[:length]
	take(p.in, pkt)
	p.in.Release(need)
	b.deliver(port, p, pkt)
	return true, nil
}

// deliver checks a packet from p (a private copy) and hands it to the
// guest.
func (b *Backend) deliver(port vnet.Port, p *peer, pkt []byte) {
	eth := pkt[vnet.HeaderLen:]
	if b.rules.check(p.idx, eth[:min(len(eth), inspectLen)]) != allowed {
		b.c.rxSpoofed.Add(1)
		return
	}
	if dst := vnet.MAC(eth); dst != b.mac && dst[0]&1 == 0 {
		b.c.rxMisdirected.Add(1)
		return
	}
	h := vnet.DecodeHeader(pkt)
	if h.Flags&vnet.HdrNeedsCsum != 0 && h.GSOType == vnet.GSONone && b.features.Load()&vnet.FeatureGuestCsum == 0 {
		if completeChecksum(pkt) {
			b.c.rxCsum.Add(1)
		}
	}
	if err := port.Receive(pkt); err != nil {
		b.c.rxRefused.Add(1)
		return
	}
	b.c.rxFrames.Add(1)
	b.c.rxBytes.Add(uint64(len(eth)))
}

// abandon gives up on p's ring towards this member: its producer index
// is impossible.
func (b *Backend) abandon(p *peer, err error) {
	p.broken = true
	p.arm.Store(0)
	b.c.ringsBroken.Add(1)
	b.log.Warn("loop: a member corrupted its ring; frames from it are dropped", "loop", b.network, "member", p.name, "err", err)
}

// arm asks every ring's sender for a doorbell and re-checks the rings: it
// reports whether they are all still empty (else it disarms).
func (b *Backend) arm() bool {
	for _, p := range b.peers {
		if !p.broken {
			p.arm.Store(1)
		}
	}
	for _, p := range b.peers {
		if p.broken {
			continue
		}
		n, err := p.in.Pending()
		if err != nil {
			b.abandon(p, err)
			continue
		}
		if n > 0 {
			b.disarm()
			return false
		}
	}
	return true
}

// disarm withdraws the requests for doorbells.
func (b *Backend) disarm() {
	for _, p := range b.peers {
		p.arm.Store(0)
	}
}
