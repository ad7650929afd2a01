package fs

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/virtio"
)

// Once the back end has failed while the device is active, the VMM
// answers the guest's FUSE requests itself, each with EIO, so that a
// process using the share gets an error instead of waiting for ever
// (Linux's virtio-fs driver does not act on DEVICE_NEEDS_RESET). It
// takes the queues over where the back end left them: the chains between
// each used ring's index and its available index, which are the ones the
// back end had not answered when it completes requests in order (the
// supervisor runs virtiofsd without a thread pool, so it does), then
// every new one. FORGET requests, which take no answer, are just
// returned. This lasts until the driver resets the device or it is
// closed.

// FUSE header layouts and the opcodes that take no reply.
const (
	fuseInHeaderSize  = 40 // len, opcode, unique, nodeid, uid, gid, pid, padding
	fuseOutHeaderSize = 16 // len, error, unique
	fuseForget        = 2
	fuseBatchForget   = 42
)

// failer answers an activation's requests with EIO.
type failer struct {
	act  virtio.Activation
	log  *slog.Logger
	stop *eventfd.EventFD
	// poke is signalled for notifications that reach the VMM rather than
	// a kick eventfd (QueueNotify).
	poke *eventfd.EventFD
	wg   sync.WaitGroup
}

// startFailing takes the queues of act over (see above).
func startFailing(act virtio.Activation, log *slog.Logger) (*failer, error) {
	f := &failer{act: act, log: log}
	var err error
	if f.stop, err = eventfd.New(); err != nil {
		return nil, err
	}
	if f.poke, err = eventfd.New(); err != nil {
		f.stop.Close()
		return nil, err
	}
	waits := []*eventfd.EventFD{f.poke}
	for q, queue := range act.Queues {
		if queue == nil {
			continue
		}
		if err := queue.Resume(); err != nil {
			log.Error("virtio-fs: cannot take the queue over from the failed back end", "queue", q, "err", err)
			continue
		}
		if act.Doorbells != nil {
			if k := act.Doorbells.Kick(q); k != nil {
				waits = append(waits, k)
			}
		}
	}
	f.wg.Add(1)
	go f.run(waits) // owner: the device; ended by end (Reset, Close)
	return f, nil
}

// run answers requests until stopped.
func (f *failer) run(waits []*eventfd.EventFD) {
	defer f.wg.Done()
	for {
		f.drain()
		if _, err := eventfd.Wait(f.stop, waits); err != nil {
			if !errors.Is(err, eventfd.ErrStopped) {
				f.log.Error("virtio-fs: waiting for requests after the back end failed", "err", err)
			}
			return
		}
	}
}

// drain answers every chain waiting on the queues.
func (f *failer) drain() {
	for q, queue := range f.act.Queues {
		if queue == nil {
			continue
		}
		answered := false
		for {
			c, ok, err := queue.Pop()
			if err != nil {
				if !errors.Is(err, virtio.ErrBroken) {
					f.log.Error("virtio-fs: malformed queue after the back end failed", "queue", q, "err", err)
					f.act.IRQ.NeedsReset()
				}
				break
			}
			if !ok {
				break
			}
			if err := queue.Push(c.Head, failReply(c)); err != nil {
				break
			}
			answered = true
		}
		if answered && queue.NeedsNotify() {
			f.notify(q)
		}
	}
}

// notify interrupts the driver for queue q as the back end would: on the
// queue's call eventfd where it has one, else through the transport.
func (f *failer) notify(q int) {
	if f.act.Doorbells != nil {
		if call := f.act.Doorbells.Call(q); call != nil {
			if err := call.Signal(); err != nil {
				f.log.Warn("virtio-fs: interrupt", "queue", q, "err", err)
			}
			return
		}
	}
	if err := f.act.IRQ.UsedBuffer(q); err != nil {
		f.log.Warn("virtio-fs: interrupt", "queue", q, "err", err)
	}
}

// failReply writes c's answer, an EIO out header, and returns its length
// (0: none, for a FORGET or a chain without room for one).
func failReply(c virtio.Chain) uint32 {
	var in [fuseInHeaderSize]byte
	if gather(in[:], c.Readable) < 16 {
		return 0
	}
	le := binary.LittleEndian
	switch le.Uint32(in[4:]) {
	case fuseForget, fuseBatchForget:
		return 0
	}
	if c.WritableLen() < fuseOutHeaderSize {
		return 0
	}
	var out [fuseOutHeaderSize]byte
	le.PutUint32(out[0:], fuseOutHeaderSize)
	errno := -int32(unix.EIO)
	le.PutUint32(out[4:], uint32(errno))
	copy(out[8:], in[8:16]) // unique
	scatter(c.Writable, out[:])
	return fuseOutHeaderSize
}

// gather copies the start of bufs into dst and returns how much it
// copied.
func gather(dst []byte, bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], b)
	}
	return n
}

// scatter copies src over the start of bufs.
func scatter(bufs [][]byte, src []byte) {
	for _, b := range bufs {
		if len(src) == 0 {
			return
		}
		src = src[copy(b, src):]
	}
}

// end stops answering and frees the eventfds.
func (f *failer) end() {
	_ = f.stop.Signal()
	f.wg.Wait()
	f.stop.Close()
	f.poke.Close()
}
