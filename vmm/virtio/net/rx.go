package net

import (
	"context"
	"fmt"

	"rainforest/vmm/virtio"
)

// Receive implements Port.
func (d *Device) Receive(frame []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.active || d.rx == nil {
		d.c.rxNotReady.Add(1)
		return ErrNotReady
	}
	if len(frame) < HeaderLen+EthHeaderLen || len(frame) > MaxPacket {
		d.c.rxBadFrame.Add(1)
		return fmt.Errorf("%w: %d bytes", ErrBadFrame, len(frame))
	}
	h := DecodeHeader(frame)
	if err := h.CheckRx(d.features, len(frame)-HeaderLen); err != nil {
		d.c.rxBadHeader.Add(1)
		return err
	}
	need := uint64(len(frame))
	if !d.fillLocked(need) {
		d.c.rxNoBuffers.Add(1)
		return ErrNoBuffers
	}
	var hb [HeaderLen]byte
	data := frame[HeaderLen:]
	used := d.rxUsed[:0]
	if d.features&FeatureMrgRxbuf != 0 {
		// The first chains that hold the frame together, in order.
		n := 0
		for room := uint64(0); room < need; n++ {
			room += d.heldChain(n).room
		}
		h.NumBuffers = uint16(n)
		h.Encode(hb[:])
		for i := range n {
			c := d.heldChain(i)
			off := 0
			if i == 0 {
				virtio.WriteBuffers(c.bufs, 0, hb[:])
				off = HeaderLen
			}
			k := min(int(c.room)-off, len(data))
			virtio.WriteBuffers(c.bufs, uint64(off), data[:k])
			data = data[k:]
			used = append(used, virtio.Used{Head: c.head, Len: uint32(off + k)})
		}
		d.takeHeldLocked(n)
	} else {
		// The first chain that holds the frame alone.
		i := d.fitLocked(need)
		c := d.heldChain(i)
		h.NumBuffers = 1
		h.Encode(hb[:])
		virtio.WriteBuffers(c.bufs, 0, hb[:])
		virtio.WriteBuffers(c.bufs, HeaderLen, data)
		used = append(used, virtio.Used{Head: c.head, Len: uint32(len(frame))})
		d.removeHeldLocked(i)
	}
	d.rxUsed = used
	if err := d.rx.PushMany(used); err != nil {
		d.rxBrokenLocked()
		return err
	}
	d.c.rxPackets.Add(1)
	d.c.rxBytes.Add(uint64(len(frame) - HeaderLen))
	if d.rx.NeedsNotify() {
		_ = d.irq.UsedBuffer(RxQueue) // nothing better to do when delivery fails
	}
	return nil
}

// WaitRx implements Port.
func (d *Device) WaitRx(ctx context.Context) error {
	for {
		d.mu.Lock()
		if d.rxReadyLocked() {
			d.mu.Unlock()
			return nil
		}
		changed := d.rxChanged
		d.rxWaiters++
		d.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-changed:
		}
		d.mu.Lock()
		d.rxWaiters--
		d.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// rxReadyLocked reports whether the held receive chains can take any
// frame (with MRG_RXBUF: MaxPacket bytes, or as many chains as the queue
// has, which is all the guest can post; without: one chain).
func (d *Device) rxReadyLocked() bool {
	if !d.active || d.rx == nil {
		return false
	}
	if d.features&FeatureMrgRxbuf == 0 {
		return d.fillLocked(0)
	}
	return d.fillLocked(MaxPacket) || (d.rx != nil && d.heldN >= int(d.rx.Size()))
}

// rxChangedLocked wakes the backend waiting in WaitRx, if any.
func (d *Device) rxChangedLocked() {
	close(d.rxChanged)
	d.rxChanged = make(chan struct{})
}

// rxBrokenLocked gives up on receiveq after the driver broke it.
func (d *Device) rxBrokenLocked() {
	d.c.broken.Add(1)
	d.rx = nil
	d.dropHeldLocked()
	d.irq.NeedsReset()
	d.rxChangedLocked()
}

// fillLocked takes posted receive chains until the held ones can take
// need bytes (with MRG_RXBUF together, without one of them alone), the
// guest has no more posted, or the device holds as many as the queue
// has; it reports whether they can.
func (d *Device) fillLocked(need uint64) bool {
	mergeable := d.features&FeatureMrgRxbuf != 0
	if mergeable && d.heldRoom >= need || !mergeable && d.fitLocked(need) >= 0 {
		return true
	}
	for d.heldN < int(d.rx.Size()) {
		c, ok, err := d.rx.Pop()
		if err != nil {
			d.rxBrokenLocked()
			return false
		}
		if !ok {
			return false
		}
		room := c.WritableLen()
		if len(c.Readable) != 0 || room < HeaderLen {
			// A device-readable buffer on receiveq, or one too short
			// for the header: the driver broke the rules.
			d.rxBrokenLocked()
			return false
		}
		room = min(room, MaxPacket)
		*d.heldChain(d.heldN) = heldChain{head: c.Head, bufs: c.Writable, room: room}
		d.heldN++
		d.heldRoom += room
		if mergeable && d.heldRoom >= need || !mergeable && room >= need {
			return true
		}
	}
	return false
}

// heldChain returns the i-th held chain (in the order taken).
func (d *Device) heldChain(i int) *heldChain {
	return &d.held[(d.heldAt+i)%len(d.held)]
}

// fitLocked returns the index of the first held chain with room for
// need bytes, or -1.
func (d *Device) fitLocked(need uint64) int {
	for i := range d.heldN {
		if d.heldChain(i).room >= need {
			return i
		}
	}
	return -1
}

// takeHeldLocked forgets the first n held chains.
func (d *Device) takeHeldLocked(n int) {
	for i := range n {
		c := d.heldChain(i)
		d.heldRoom -= c.room
		*c = heldChain{}
	}
	d.heldAt = (d.heldAt + n) % len(d.held)
	d.heldN -= n
}

// removeHeldLocked forgets the i-th held chain, keeping the others in
// order.
func (d *Device) removeHeldLocked(i int) {
	d.heldRoom -= d.heldChain(i).room
	for j := i; j < d.heldN-1; j++ {
		*d.heldChain(j) = *d.heldChain(j + 1)
	}
	*d.heldChain(d.heldN - 1) = heldChain{}
	d.heldN--
}

// dropHeldLocked forgets every held chain (the rings they came from are
// gone or broken).
func (d *Device) dropHeldLocked() {
	clear(d.held[:])
	d.heldAt, d.heldN, d.heldRoom = 0, 0, 0
}
