package vsock_test

import (
	"context"
	"net"
	"testing"
	"time"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
	"rainforest/vmm/virtio/vsock"
)

const (
	guestCID = 7
	rxSize   = 64
	txSize   = 64
	rxBase   = 0x200000
	rxStride = 0x2000
	rxBufLen = 4096 + vsock.HeaderLen
	txBuf    = 0x100000
)

// rig is a device with a fake guest driving its rx and tx queues.
type rig struct {
	t      *testing.T
	dev    *vsock.Device
	mem    *guestmem.Memory
	rx, tx *vt.Driver
	irq    *vt.IRQ
	posted int // rx buffers posted so far
}

func newRig(t *testing.T, opts vsock.Options) *rig {
	t.Helper()
	return newRigWith(t, opts, true)
}

// newRigWith is newRig, posting receive buffers or not.
func newRigWith(t *testing.T, opts vsock.Options, post bool) *rig {
	t.Helper()
	if opts.CID == 0 {
		opts.CID = guestCID
	}
	dev, err := vsock.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	mem := vt.NewMemory(4 << 20)
	r := &rig{t: t, dev: dev, mem: mem, irq: &vt.IRQ{}}
	r.rx = vt.NewDriver(mem, rxSize, 0x1000)
	r.tx = vt.NewDriver(mem, txSize, 0x4000)
	ev := vt.NewDriver(mem, 8, 0x8000)
	var qs []*virtio.Queue
	for _, d := range []*vt.Driver{r.rx, r.tx, ev} {
		q, err := virtio.NewQueue(mem, d.Config(), 0)
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	if err := dev.Activate(virtio.Activation{Mem: mem, Queues: qs, IRQ: r.irq}); err != nil {
		t.Fatal(err)
	}
	for range rxSize * btoi(post) {
		r.postRx()
	}
	dev.QueueNotify(vsock.RxQueue)
	dev.Sync()
	return r
}

// postRx posts one receive buffer (the slot of its descriptor).
func (r *rig) postRx() {
	slot := r.posted % rxSize
	r.posted++
	r.dev.Guest(func() {
		r.rx.AddChain(vt.Buf{Addr: rxBase + uint64(slot)*rxStride, Len: rxBufLen, Write: true})
	})
}

// send posts one packet on the tx queue and waits until the device has
// handled it.
func (r *rig) send(h vsock.Header, payload []byte) {
	r.t.Helper()
	h.Len = uint32(len(payload))
	r.sendRaw(h, payload)
}

// sendRaw posts h (its Len as given) followed by payload.
func (r *rig) sendRaw(h vsock.Header, payload []byte) {
	r.t.Helper()
	b := make([]byte, vsock.HeaderLen+len(payload))
	h.Encode(b)
	copy(b[vsock.HeaderLen:], payload)
	r.sendBytes(b)
}

// sendBytes posts b as one readable buffer.
func (r *rig) sendBytes(b []byte) {
	r.t.Helper()
	if !r.post(b) {
		r.t.Fatal("tx chain not completed")
	}
}

// post posts b on the tx queue, notifies and reports whether the
// device completed the chain.
func (r *rig) post(b []byte) (ok bool) {
	r.t.Helper()
	var err error
	r.dev.Guest(func() {
		if err = r.mem.WriteAt(b, txBuf); err == nil {
			r.tx.AddChain(vt.Buf{Addr: txBuf, Len: uint32(len(b))})
		}
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.dev.QueueNotify(vsock.TxQueue)
	r.dev.Sync()
	r.dev.Guest(func() { _, _, ok = r.tx.TakeUsed() })
	return ok
}

// hdr is a guest packet header from guest port gp to host port hp.
func hdr(op uint16, gp, hp uint32) vsock.Header {
	return vsock.Header{SrcCID: guestCID, DstCID: vsock.HostCID, SrcPort: gp, DstPort: hp,
		Type: vsock.TypeStream, Op: op, BufAlloc: 1 << 20}
}

// tryRecv returns the next packet the device delivered, reposting its
// buffer.
func (r *rig) tryRecv() (vsock.Header, []byte, bool) {
	r.t.Helper()
	r.dev.Sync()
	var b []byte
	var ok bool
	var err error
	r.dev.Guest(func() {
		var head uint16
		var n uint32
		if head, n, ok = r.rx.TakeUsed(); ok {
			b = make([]byte, n)
			err = r.mem.ReadAt(b, rxBase+uint64(head)*rxStride)
		}
	})
	if !ok {
		return vsock.Header{}, nil, false
	}
	if err != nil {
		r.t.Fatal(err)
	}
	n := len(b)
	r.postRx()
	r.dev.QueueNotify(vsock.RxQueue)
	h, err := vsock.DecodeHeader(b)
	if err != nil {
		r.t.Fatalf("device delivered %d bytes: %v", n, err)
	}
	if h.SrcCID != vsock.HostCID || h.DstCID != guestCID || h.Type != vsock.TypeStream || int(h.Len) != len(b)-vsock.HeaderLen {
		r.t.Fatalf("device delivered a bad header %+v (%d bytes)", h, n)
	}
	return h, b[vsock.HeaderLen:], true
}

// recv waits for the next packet (work on the host side runs on the
// device's goroutines; there is no deadline but the test's).
func (r *rig) recv() (vsock.Header, []byte) {
	r.t.Helper()
	for {
		if h, p, ok := r.tryRecv(); ok {
			return h, p
		}
		time.Sleep(time.Millisecond)
	}
}

// recvOp waits for the next packet and checks its operation.
func (r *rig) recvOp(op uint16) (vsock.Header, []byte) {
	r.t.Helper()
	h, p := r.recv()
	if h.Op != op {
		r.t.Fatalf("got %+v, want op %d", h, op)
	}
	return h, p
}

// expectNone checks that nothing is delivered now.
func (r *rig) expectNone() {
	r.t.Helper()
	if h, _, ok := r.tryRecv(); ok {
		r.t.Fatalf("unexpected packet %+v", h)
	}
}

// pipeDial dials net.Pipe connections, handing the host ends to peers.
type pipeDial struct{ peers chan net.Conn }

func newPipeDial() *pipeDial { return &pipeDial{peers: make(chan net.Conn, 2*vsock.MaxConns)} }

func (p *pipeDial) dial(_ context.Context, _ uint32) (net.Conn, error) {
	a, b := net.Pipe()
	p.peers <- b
	return a, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
