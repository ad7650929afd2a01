package net

import (
	"runtime"

	"rainforest/vmm/virtio"
)

// runTx is the transmit goroutine: it serves transmitq in batches while
// the guest keeps it busy, and sleeps on notifications otherwise.
func (d *Device) runTx() {
	defer d.wg.Done()
	for {
		var done chan struct{}
		select {
		case <-d.ctx.Done():
			return
		case <-d.txKick:
		case done = <-d.txSync:
			// The notifications before the call are served now.
			select {
			case <-d.txKick:
			default:
			}
		}
		for d.transmitBatch() {
			if d.ctx.Err() != nil {
				break
			}
			runtime.Gosched()
		}
		if done != nil {
			close(done)
		}
	}
}

// transmitBatch serves at most TxBatch chains of transmitq; it reports
// whether it stopped at the bound (more may be waiting).
func (d *Device) transmitBatch() bool {
	d.txMu.Lock()
	defer d.txMu.Unlock()
	if d.tx == nil {
		return false
	}
	d.txUsed = d.txUsed[:0]
	full := false
	for {
		if len(d.txUsed) == TxBatch {
			full = true
			break
		}
		c, ok, err := d.tx.Pop()
		if err != nil {
			d.txBrokenLocked()
			return false
		}
		if !ok {
			break
		}
		if len(c.Writable) != 0 {
			// A device-writable buffer on transmitq: the driver
			// broke the rules of the queue.
			d.txBrokenLocked()
			return false
		}
		d.transmitLocked(c.Readable)
		d.txUsed = append(d.txUsed, virtio.Used{Head: c.Head})
	}
	if len(d.txUsed) == 0 {
		return false
	}
	if err := d.tx.PushMany(d.txUsed); err != nil {
		d.txBrokenLocked()
		return false
	}
	if d.tx.NeedsNotify() {
		_ = d.txIRQ.UsedBuffer(TxQueue) // nothing better to do when delivery fails
	}
	return full
}

// txBrokenLocked gives up on transmitq after the driver broke it.
func (d *Device) txBrokenLocked() {
	d.c.broken.Add(1)
	d.tx = nil
	d.txIRQ.NeedsReset()
}

// transmitLocked checks one frame from the guest and hands it to the
// backend, or drops and counts it.
func (d *Device) transmitLocked(bufs [][]byte) {
	total := uint64(0)
	for _, b := range bufs {
		total += uint64(len(b))
	}
	switch {
	case total < HeaderLen+EthHeaderLen:
		d.c.txShort.Add(1)
		return
	case total > MaxPacket:
		d.c.txOversize.Add(1)
		return
	}
	// The header and the Ethernet header are checked, and sent, from a
	// private copy: the guest may rewrite its buffers meanwhile.
	prefix := d.txPrefix[:]
	virtio.ReadBuffers(bufs, 0, prefix)
	frameLen := int(total) - HeaderLen
	if err := DecodeHeader(prefix).CheckTx(d.txFeatures, frameLen); err != nil {
		d.c.txBadHeader.Add(1)
		return
	}
	if d.filter && MAC(prefix[HeaderLen+6:HeaderLen+12]) != d.mac {
		d.c.txSpoofed.Add(1)
		return
	}
	d.txFrame = append(d.txFrame[:0], prefix)
	d.txFrame = appendTail(d.txFrame, bufs, uint64(len(prefix)))
	err := d.backend.Send(d.txFrame)
	clear(d.txFrame) // no reference to guest memory outlives the send
	if err != nil {
		d.c.txBackend.Add(1)
		return
	}
	d.c.txPackets.Add(1)
	d.c.txBytes.Add(uint64(frameLen))
}

// appendTail appends to dst the bytes of bufs from offset off on.
func appendTail(dst, bufs [][]byte, off uint64) [][]byte {
	for _, b := range bufs {
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		dst = append(dst, b[off:])
		off = 0
	}
	return dst
}
