package net_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/virtio"
	vnet "rainforest/vmm/virtio/net"
	vt "rainforest/vmm/virtio/virtiotest"
)

// Guest memory layout of the rig.
const (
	rigMem   = 0x40000
	rxRing   = 0x1000
	txRing   = 0x5000
	bufBase  = 0x10000 // buffers from here on
	rigQueue = 256
)

var (
	devMAC   = vnet.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	otherMAC = vnet.MAC{0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF}
)

// fakeBackend records what the device sends it; Run parks until the
// device closes.
type fakeBackend struct {
	offloads uint64

	mu         sync.Mutex
	sent       [][]byte // each frame, joined
	prefixes   [][]byte // each frame's first slice, as the backend saw it
	configured []uint64
	sendErr    error
	onSend     func() // called before a frame is read (a racing guest)
	closed     int
	ran        chan struct{}
}

func newFakeBackend(offloads uint64) *fakeBackend {
	return &fakeBackend{offloads: offloads, ran: make(chan struct{})}
}

func (b *fakeBackend) Offloads() uint64 { return b.offloads }

func (b *fakeBackend) Configure(f uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.configured = append(b.configured, f)
	return nil
}

func (b *fakeBackend) Send(frame [][]byte) error {
	b.mu.Lock()
	hook, err := b.onSend, b.sendErr
	b.mu.Unlock()
	if hook != nil {
		hook()
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent = append(b.sent, bytes.Join(frame, nil))
	b.prefixes = append(b.prefixes, bytes.Clone(frame[0]))
	return nil
}

func (b *fakeBackend) Run(ctx context.Context, _ vnet.Port) error {
	close(b.ran)
	<-ctx.Done()
	return nil
}

func (b *fakeBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed++
	return nil
}

func (b *fakeBackend) frames() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]byte(nil), b.sent...)
}

// rig is a device on fake guest memory with both queues activated.
type rig struct {
	t      testing.TB
	mem    *guestmem.Memory
	dev    *vnet.Device
	be     *fakeBackend
	irq    *vt.IRQ
	rx, tx *vt.Driver
	next   uint64 // next free buffer address
}

// allFeatures is what a Linux driver accepts from a device on a backend
// with every offload.
const allFeatures = virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc |
	vnet.FeatureMAC | vnet.FeatureStatus | vnet.FeatureMrgRxbuf | vnet.OffloadFeatures

func newRig(t testing.TB, opts vnet.Options, features uint64) *rig {
	t.Helper()
	if opts.MAC == (vnet.MAC{}) {
		opts.MAC = devMAC
	}
	be := newFakeBackend(vnet.OffloadFeatures)
	dev, err := vnet.New(be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	r := &rig{t: t, mem: vt.NewMemory(rigMem), dev: dev, be: be, irq: &vt.IRQ{}, next: bufBase}
	r.activate(features)
	return r
}

// activate lays out fresh rings and starts the device with features.
func (r *rig) activate(features uint64) {
	r.t.Helper()
	_ = r.mem.WriteAt(make([]byte, bufBase-rxRing), rxRing)
	r.rx = vt.NewDriver(r.mem, rigQueue, rxRing)
	r.tx = vt.NewDriver(r.mem, rigQueue, txRing)
	var qs []*virtio.Queue
	for _, d := range []*vt.Driver{r.rx, r.tx} {
		q, err := virtio.NewQueue(r.mem, d.Config(), features)
		if err != nil {
			r.t.Fatal(err)
		}
		qs = append(qs, q)
	}
	if err := r.dev.Activate(virtio.Activation{Mem: r.mem, Features: features, Queues: qs, IRQ: r.irq}); err != nil {
		r.t.Fatal(err)
	}
	// The device looks at transmitq on activation: let it finish before
	// the test's driver writes (the race detector sees guest memory).
	r.dev.Sync()
}

// alloc returns guest memory for an n-byte buffer.
func (r *rig) alloc(n int) uint64 {
	a := r.next
	r.next += uint64(n+15) &^ 15
	if r.next > rigMem {
		r.t.Fatalf("rig out of memory")
	}
	return a
}

// transmit posts p on transmitq split into descriptors at cuts (byte
// counts) and waits for the device to serve it.
func (r *rig) transmit(p []byte, cuts ...int) uint16 {
	r.t.Helper()
	var bufs []vt.Buf
	for len(p) > 0 {
		n := len(p)
		if len(cuts) > 0 {
			n, cuts = min(cuts[0], len(p)), cuts[1:]
		}
		a := r.alloc(n)
		if err := r.mem.WriteAt(p[:n], a); err != nil {
			r.t.Fatal(err)
		}
		bufs = append(bufs, vt.Buf{Addr: a, Len: uint32(n)})
		p = p[n:]
	}
	head := r.tx.AddChain(bufs...)
	r.dev.QueueNotify(vnet.TxQueue)
	r.dev.Sync()
	return head
}

// postRx posts one receive chain per size and tells the device.
func (r *rig) postRx(sizes ...int) []uint64 {
	var addrs []uint64
	for _, n := range sizes {
		a := r.alloc(n)
		r.rx.AddChain(vt.Buf{Addr: a, Len: uint32(n), Write: true})
		addrs = append(addrs, a)
	}
	r.dev.QueueNotify(vnet.RxQueue)
	return addrs
}

// read returns n bytes of guest memory at a.
func (r *rig) read(a uint64, n int) []byte {
	b := make([]byte, n)
	if err := r.mem.ReadAt(b, a); err != nil {
		r.t.Fatal(err)
	}
	return b
}

// frame builds a header and an Ethernet frame from src with payload n
// bytes long (a pattern).
func frame(h vnet.Header, src vnet.MAC, n int) []byte {
	b := make([]byte, vnet.HeaderLen+vnet.EthHeaderLen+n)
	h.Encode(b)
	e := b[vnet.HeaderLen:]
	copy(e[0:6], devMAC[:]) // to the guest's address (any will do)
	copy(e[6:12], src[:])
	binary.BigEndian.PutUint16(e[12:], 0x88B5) // local experimental
	for i := range n {
		e[vnet.EthHeaderLen+i] = byte(i*7 + 3)
	}
	return b
}
