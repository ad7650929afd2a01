package loop

import (
	"fmt"

	vnet "rainforest/vmm/virtio/net"
)

// Send implements net.Backend: it checks the frame against this member's
// source rules on a private copy of its headers, and puts it on the ring
// of its destination (of every other member for a broadcast or
// multicast), the checked copy as it is. It never waits: a ring without
// room drops the frame (for that destination), and a frame that reaches
// no destination is refused.
func (b *Backend) Send(frame [][]byte) error {
	b.txMu.Lock()
	defer b.txMu.Unlock()
	total := 0
	for _, s := range frame {
		total += len(s)
	}
	if total < minPacket || total > vnet.MaxPacket {
		b.c.txBadSize.Add(1)
		return fmt.Errorf("%w: %d bytes", ErrFrameSize, total)
	}
	// The headers are checked, and sent, from a private copy: the rest of
	// the frame may be guest memory the guest rewrites meanwhile.
	win := b.txWin[:min(total, len(b.txWin))]
	gather(frame, win)
	switch b.rules.check(b.self, win[vnet.HeaderLen:]) {
	case spoofedMAC:
		b.c.txSpoofedMAC.Add(1)
		return fmt.Errorf("%w: source MAC", ErrSpoofed)
	case spoofedIP:
		b.c.txSpoofedIP.Add(1)
		return fmt.Errorf("%w: source IP address", ErrSpoofed)
	case blocked:
		b.c.txBlocked.Add(1)
		return fmt.Errorf("%w: kind of frame", ErrSpoofed)
	}
	dest := b.txDest[:0]
	dst := vnet.MAC(win[vnet.HeaderLen:])
	if dst[0]&1 != 0 {
		dest = append(dest, b.peers...)
	} else if p := b.byMAC[dst]; p != nil {
		dest = append(dest, p)
	} else {
		b.c.txUnknownDest.Add(1)
		return fmt.Errorf("%w: %s", ErrUnknownDest, dst)
	}
	b.txDest = dest
	need := recordSlots(total)
	held := b.txHeld[:0]
	for _, p := range dest {
		n, err := p.out.Reserve(need)
		switch {
		case err != nil:
			b.c.txRingCorrupt.Add(1)
			if !p.txWarned {
				p.txWarned = true
				b.log.Warn("loop: a member corrupted its consumer index; frames to it are dropped", "loop", b.network, "member", p.name, "err", err)
			}
		case n < need:
			b.c.txRingFull.Add(1)
		default:
			held = append(held, p)
		}
	}
	b.txHeld = held
	if len(held) == 0 {
		return ErrRingFull
	}
	first := held[0].out
	putRecordHeader(first.Slot(0), total)
	put(first, 0, win)
	putFrom(first, frame, len(win))
	for _, p := range held[1:] {
		putRecordHeader(p.out.Slot(0), total)
		copyRecord(p.out, first, total)
	}
	for _, p := range held {
		p.out.Commit(need)
		b.c.txFrames.Add(1)
		b.c.txBytes.Add(uint64(total - vnet.HeaderLen))
		if p.sink.Load()&1 != 0 {
			b.c.doorbells.Add(1)
			_ = p.bell.Signal() // a signal lost to a closed descriptor only delays the peer, which re-checks when it next wakes
		}
	}
	return nil
}
