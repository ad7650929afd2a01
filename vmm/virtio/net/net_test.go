package net_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"

	"rainforest/vmm/virtio"
	vnet "rainforest/vmm/virtio/net"
	vt "rainforest/vmm/virtio/virtiotest"
)

func TestTransmitFrameWithHeader(t *testing.T) {
	r := newRig(t, vnet.Options{FilterSourceMAC: true}, allFeatures)
	// A TSO packet with a partial checksum: the header goes to the
	// backend untouched, whatever way the chain is cut.
	h := vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	p := frame(h, devMAC, 3000)
	head := r.transmit(p, 5, 20, 1, 1000)
	got := r.be.frames()
	if len(got) != 1 || !bytes.Equal(got[0], p) {
		t.Fatalf("backend got %d frames; first equal: %v", len(got), len(got) == 1 && bytes.Equal(got[0], p))
	}
	if id, n, ok := r.tx.TakeUsed(); !ok || id != head || n != 0 {
		t.Fatalf("used = %d %d %v", id, n, ok)
	}
	if u := r.irq.TakeUsed(); len(u) != 1 || u[0] != vnet.TxQueue {
		t.Fatalf("interrupts %v", u)
	}
	s := r.dev.Stats()
	if s.TxPackets != 1 || s.TxBytes != uint64(len(p)-vnet.HeaderLen) || s.TxDropped() != 0 {
		t.Fatalf("stats %+v", s)
	}
	// Through an indirect table too.
	a := r.alloc(len(p))
	_ = r.mem.WriteAt(p, a)
	r.tx.AddIndirect(r.alloc(64), vt.Buf{Addr: a, Len: 12}, vt.Buf{Addr: a + 12, Len: uint32(len(p) - 12)})
	r.dev.QueueNotify(vnet.TxQueue)
	r.dev.Sync()
	if got := r.be.frames(); len(got) != 2 || !bytes.Equal(got[1], p) {
		t.Fatalf("indirect: backend got %d frames", len(got))
	}
}

func TestTransmitChecksHeaderOnPrivateCopy(t *testing.T) {
	r := newRig(t, vnet.Options{FilterSourceMAC: true}, allFeatures)
	p := frame(vnet.Header{}, devMAC, 100)
	a := r.alloc(len(p))
	_ = r.mem.WriteAt(p, a)
	// The guest rewrites its source address after the device checked it
	// (while the backend sends): what the backend sends is the checked
	// copy.
	r.be.onSend = func() { _ = r.mem.WriteAt(otherMAC[:], a+vnet.HeaderLen+6) }
	r.tx.AddChain(vt.Buf{Addr: a, Len: uint32(len(p))})
	r.dev.QueueNotify(vnet.TxQueue)
	r.dev.Sync()
	got := r.be.frames()
	if len(got) != 1 || !bytes.Equal(got[0][vnet.HeaderLen+6:vnet.HeaderLen+12], devMAC[:]) {
		t.Fatalf("backend sent %x", got)
	}
}

func TestTransmitSpoofedSourceMAC(t *testing.T) {
	for _, filter := range []bool{true, false} {
		r := newRig(t, vnet.Options{FilterSourceMAC: filter}, allFeatures)
		r.transmit(frame(vnet.Header{}, otherMAC, 64))
		r.transmit(frame(vnet.Header{}, devMAC, 64))
		// A multicast source is not the device's either.
		r.transmit(frame(vnet.Header{}, vnet.MAC{0x01, 0, 0x5e, 0, 0, 1}, 64))
		s := r.dev.Stats()
		wantSpoofed, wantSent := uint64(2), uint64(1)
		if !filter {
			wantSpoofed, wantSent = 0, 3
		}
		if s.TxSpoofed != wantSpoofed || s.TxPackets != wantSent || uint64(len(r.be.frames())) != wantSent {
			t.Errorf("filter %v: stats %+v, %d frames sent", filter, s, len(r.be.frames()))
		}
		for i := range 3 {
			if _, _, ok := r.tx.TakeUsed(); !ok {
				t.Errorf("filter %v: chain %d not completed", filter, i)
			}
		}
	}
}

func TestTransmitSizeBounds(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	big := frame(vnet.Header{}, devMAC, vnet.MaxFrame-vnet.EthHeaderLen+1)
	if len(big) != vnet.MaxPacket+1 {
		t.Fatalf("test frame of %d bytes", len(big))
	}
	r.transmit(big, 4096, 60000)
	r.transmit(make([]byte, vnet.HeaderLen+vnet.EthHeaderLen-1))
	r.transmit(make([]byte, 3))
	r.next = bufBase
	r.transmit(frame(vnet.Header{}, devMAC, vnet.MaxFrame-vnet.EthHeaderLen)) // the largest is fine
	s := r.dev.Stats()
	if s.TxOversize != 1 || s.TxShort != 2 || s.TxPackets != 1 || s.TxBytes != vnet.MaxFrame {
		t.Fatalf("stats %+v", s)
	}
	for i := range 4 {
		if _, n, ok := r.tx.TakeUsed(); !ok || n != 0 {
			t.Fatalf("chain %d: used %d %v", i, n, ok)
		}
	}
	if r.irq.NeedsResetCount() != 0 {
		t.Fatal("a dropped frame reset the device")
	}
}

func TestTransmitBadHeaders(t *testing.T) {
	csum := vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 34, CsumOffset: 6}
	tso := vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv6, GSOSize: 1400, CsumStart: 54, CsumOffset: 16}
	for _, c := range []struct {
		name     string
		features uint64
		h        vnet.Header
	}{
		{"checksum not negotiated", allFeatures &^ (vnet.FeatureCsum | vnet.FeatureHostTSO4 | vnet.FeatureHostTSO6 | vnet.FeatureHostECN), csum},
		{"TSO6 not negotiated", allFeatures &^ (vnet.FeatureHostTSO6 | vnet.FeatureHostECN), tso},
		{"checksum outside the frame", allFeatures, vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 100, CsumOffset: 13}},
		{"DATA_VALID from the guest", allFeatures, vnet.Header{Flags: vnet.HdrDataValid}},
		{"UDP fragmentation", allFeatures, vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOUDP, GSOSize: 1000, CsumStart: 34, CsumOffset: 6}},
		{"gso_size 0", allFeatures, vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv4, CsumStart: 34, CsumOffset: 16}},
	} {
		r := newRig(t, vnet.Options{}, c.features)
		r.transmit(frame(c.h, devMAC, 100))
		if s := r.dev.Stats(); s.TxBadHeader != 1 || s.TxPackets != 0 {
			t.Errorf("%s: stats %+v", c.name, s)
		}
	}
}

func TestTransmitBackendError(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	r.be.sendErr = errors.New("full")
	r.transmit(frame(vnet.Header{}, devMAC, 10))
	if s := r.dev.Stats(); s.TxBackendErr != 1 || s.TxPackets != 0 {
		t.Fatalf("stats %+v", s)
	}
	if _, _, ok := r.tx.TakeUsed(); !ok {
		t.Fatal("chain not completed")
	}
}

func TestTransmitBatches(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	const n = 3*vnet.TxBatch + 5
	p := frame(vnet.Header{}, devMAC, 20)
	a := r.alloc(len(p))
	_ = r.mem.WriteAt(p, a)
	for range n {
		r.tx.AddChain(vt.Buf{Addr: a, Len: uint32(len(p))})
	}
	r.dev.QueueNotify(vnet.TxQueue)
	r.dev.Sync()
	if got := len(r.be.frames()); got != n {
		t.Fatalf("%d frames sent of %d", got, n)
	}
	for i := range n {
		if _, _, ok := r.tx.TakeUsed(); !ok {
			t.Fatalf("chain %d not completed", i)
		}
	}
}

func TestReceiveMergeableAcrossThreeBuffers(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	addrs := r.postRx(1000, 1000, 1000, 1000)
	h := vnet.Header{Flags: vnet.HdrDataValid, NumBuffers: 77} // num_buffers is the device's
	p := frame(h, otherMAC, 2500)
	if err := r.dev.Receive(p); err != nil {
		t.Fatal(err)
	}
	var got []byte
	wantLens := []uint32{1000, 1000, uint32(len(p) - 2000)}
	for i, want := range wantLens {
		id, n, ok := r.rx.TakeUsed()
		if !ok || id != uint16(i) || n != want {
			t.Fatalf("used %d = %d %d %v, want %d", i, id, n, ok, want)
		}
		got = append(got, r.read(addrs[i], int(n))...)
	}
	if _, _, ok := r.rx.TakeUsed(); ok {
		t.Fatal("a fourth buffer used")
	}
	gh := vnet.DecodeHeader(got)
	if gh.NumBuffers != 3 || gh.Flags != vnet.HdrDataValid {
		t.Fatalf("header %+v", gh)
	}
	if !bytes.Equal(got[vnet.HeaderLen:], p[vnet.HeaderLen:]) {
		t.Fatal("frame bytes differ")
	}
	if u := r.irq.TakeUsed(); len(u) != 1 || u[0] != vnet.RxQueue {
		t.Fatalf("interrupts %v", u)
	}
	s := r.dev.Stats()
	if s.RxPackets != 1 || s.RxBytes != uint64(len(p)-vnet.HeaderLen) {
		t.Fatalf("stats %+v", s)
	}
	// The fourth buffer, held by the device, takes the next frame.
	small := frame(vnet.Header{}, otherMAC, 10)
	if err := r.dev.Receive(small); err != nil {
		t.Fatal(err)
	}
	if id, n, ok := r.rx.TakeUsed(); !ok || id != 3 || n != uint32(len(small)) {
		t.Fatalf("used = %d %d %v", id, n, ok)
	}
	if gh := vnet.DecodeHeader(r.read(addrs[3], vnet.HeaderLen)); gh.NumBuffers != 1 {
		t.Fatalf("num_buffers %d", gh.NumBuffers)
	}
}

func TestReceiveWithoutMergeableBuffers(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures&^vnet.FeatureMrgRxbuf)
	addrs := r.postRx(100, 2000)
	p := frame(vnet.Header{}, otherMAC, 500)
	// The first buffer is too small: the second takes the frame whole.
	if err := r.dev.Receive(p); err != nil {
		t.Fatal(err)
	}
	if id, n, ok := r.rx.TakeUsed(); !ok || id != 1 || n != uint32(len(p)) {
		t.Fatalf("used = %d %d %v", id, n, ok)
	}
	got := r.read(addrs[1], len(p))
	if vnet.DecodeHeader(got).NumBuffers != 1 || !bytes.Equal(got[vnet.HeaderLen:], p[vnet.HeaderLen:]) {
		t.Fatal("frame differs")
	}
	// Nothing left that fits: dropped.
	if err := r.dev.Receive(p); !errors.Is(err, vnet.ErrNoBuffers) {
		t.Fatalf("Receive = %v", err)
	}
	if s := r.dev.Stats(); s.RxNoBuffers != 1 || s.RxPackets != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReceiveWithoutBuffers(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	p := frame(vnet.Header{}, otherMAC, 150)
	if err := r.dev.Receive(p); !errors.Is(err, vnet.ErrNoBuffers) {
		t.Fatalf("Receive = %v", err)
	}
	// Too few for the frame: dropped, the buffers kept for the next.
	r.postRx(64, 64)
	if err := r.dev.Receive(p); !errors.Is(err, vnet.ErrNoBuffers) {
		t.Fatalf("Receive = %v", err)
	}
	if s := r.dev.Stats(); s.RxNoBuffers != 2 || s.RxPackets != 0 {
		t.Fatalf("stats %+v", s)
	}
	if _, _, ok := r.rx.TakeUsed(); ok {
		t.Fatal("a buffer used for a dropped frame")
	}
	r.postRx(64)
	if err := r.dev.Receive(p); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, _, ok := r.rx.TakeUsed(); !ok {
			t.Fatalf("buffer %d not used", i)
		}
	}
	if r.irq.NeedsResetCount() != 0 {
		t.Fatal("reset")
	}
}

func TestWaitRx(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.dev.WaitRx(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitRx with no buffers = %v", err)
	}
	// Half of what the largest frame needs, in 1526-byte buffers as
	// Linux posts them.
	n := (vnet.MaxPacket + 1525) / 1526
	for range n / 2 {
		r.postRx(1526)
	}
	done := make(chan error, 1)
	go func() { done <- r.dev.WaitRx(context.Background()) }()
	// Once it waits (it took the buffers posted so far), the rest.
	for vnet.RxWaiters(r.dev) == 0 {
		runtime.Gosched()
	}
	for range n - n/2 {
		r.rx.AddChain(vt.Buf{Addr: r.alloc(1526), Len: 1526, Write: true})
	}
	r.dev.QueueNotify(vnet.RxQueue)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := r.dev.Receive(frame(vnet.Header{}, otherMAC, vnet.MaxFrame-vnet.EthHeaderLen)); err != nil {
		t.Fatal(err)
	}
	// After a reset nothing is ready, and frames are refused.
	r.dev.Reset()
	if err := r.dev.Receive(frame(vnet.Header{}, otherMAC, 1)); !errors.Is(err, vnet.ErrNotReady) {
		t.Fatalf("Receive after reset = %v", err)
	}
	if err := r.dev.WaitRx(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitRx after reset = %v", err)
	}
	if s := r.dev.Stats(); s.RxNotReady != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReceiveChecksHeaderAndSize(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures&^(vnet.FeatureGuestTSO4|vnet.FeatureGuestTSO6|vnet.FeatureGuestECN))
	r.postRx(4096, 4096)
	tso := vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv4, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	if err := r.dev.Receive(frame(tso, otherMAC, 3000)); !errors.Is(err, vnet.ErrBadHeader) {
		t.Fatalf("TSO frame without GUEST_TSO4: %v", err)
	}
	if err := r.dev.Receive(make([]byte, vnet.HeaderLen+vnet.EthHeaderLen-1)); !errors.Is(err, vnet.ErrBadFrame) {
		t.Fatalf("short frame: %v", err)
	}
	if err := r.dev.Receive(make([]byte, vnet.MaxPacket+1)); !errors.Is(err, vnet.ErrBadFrame) {
		t.Fatalf("long frame: %v", err)
	}
	if s := r.dev.Stats(); s.RxBadHeader != 1 || s.RxBadFrame != 2 || s.RxPackets != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestBadChainsNeedReset(t *testing.T) {
	for _, c := range []struct {
		name string
		do   func(r *rig)
	}{
		{"writable buffer on transmitq", func(r *rig) {
			r.tx.AddChain(vt.Buf{Addr: r.alloc(64), Len: 64}, vt.Buf{Addr: r.alloc(64), Len: 64, Write: true})
			r.dev.QueueNotify(vnet.TxQueue)
			r.dev.Sync()
		}},
		{"descriptor loop on transmitq", func(r *rig) {
			r.tx.SetDesc(r.tx.Desc, 0, r.alloc(64), 64, virtio.DescFlagNext, 0)
			r.tx.Publish(0)
			r.dev.QueueNotify(vnet.TxQueue)
			r.dev.Sync()
		}},
		{"buffer outside memory on transmitq", func(r *rig) {
			r.tx.AddChain(vt.Buf{Addr: rigMem - 8, Len: 64})
			r.dev.QueueNotify(vnet.TxQueue)
			r.dev.Sync()
		}},
		{"available index far ahead on transmitq", func(r *rig) {
			r.tx.SetAvailIdx(rigQueue + 1)
			r.dev.QueueNotify(vnet.TxQueue)
			r.dev.Sync()
		}},
		{"readable buffer on receiveq", func(r *rig) {
			r.rx.AddChain(vt.Buf{Addr: r.alloc(64), Len: 64})
			_ = r.dev.Receive(frame(vnet.Header{}, otherMAC, 10))
		}},
		{"receive buffer shorter than the header", func(r *rig) {
			r.rx.AddChain(vt.Buf{Addr: r.alloc(64), Len: vnet.HeaderLen - 1, Write: true})
			_ = r.dev.Receive(frame(vnet.Header{}, otherMAC, 10))
		}},
		{"indirect table out of bounds on receiveq", func(r *rig) {
			r.rx.SetDesc(r.rx.Desc, 0, rigMem-16, 32, virtio.DescFlagIndirect, 0)
			r.rx.Publish(0)
			_ = r.dev.Receive(frame(vnet.Header{}, otherMAC, 10))
		}},
	} {
		r := newRig(t, vnet.Options{}, allFeatures)
		c.do(r)
		if r.irq.NeedsResetCount() != 1 || r.dev.Stats().Malformed != 1 {
			t.Errorf("%s: %d resets asked, stats %+v", c.name, r.irq.NeedsResetCount(), r.dev.Stats())
			continue
		}
		// The broken queue is left alone until the driver resets.
		r.transmit(frame(vnet.Header{}, devMAC, 10))
		_ = r.dev.Receive(frame(vnet.Header{}, otherMAC, 10))
		if r.irq.NeedsResetCount() != 1 {
			t.Errorf("%s: the device used the broken queue", c.name)
		}
		// A reset and a new activation bring it back.
		r.dev.Reset()
		r.next = bufBase
		r.activate(allFeatures)
		r.postRx(2048)
		r.transmit(frame(vnet.Header{}, devMAC, 10))
		if err := r.dev.Receive(frame(vnet.Header{}, otherMAC, 10)); err != nil {
			t.Errorf("%s: after reset: %v", c.name, err)
		}
		if s := r.dev.Stats(); s.RxPackets != 1 || s.TxPackets == 0 {
			t.Errorf("%s: after reset: stats %+v", c.name, s)
		}
	}
}

func TestEventIndexSuppression(t *testing.T) {
	r := newRig(t, vnet.Options{}, allFeatures)
	// Transmit: the driver wants an interrupt once the third chain is
	// used (used_event 2), not before.
	r.tx.SetUsedEvent(2)
	r.transmit(frame(vnet.Header{}, devMAC, 10))
	r.transmit(frame(vnet.Header{}, devMAC, 10))
	if u := r.irq.TakeUsed(); len(u) != 0 {
		t.Fatalf("interrupts %v before used_event", u)
	}
	r.transmit(frame(vnet.Header{}, devMAC, 10))
	if u := r.irq.TakeUsed(); len(u) != 1 || u[0] != vnet.TxQueue {
		t.Fatalf("interrupts %v at used_event", u)
	}
	// The device, having drained transmitq, asks to hear of the next
	// chain: avail_event is the next index.
	if ev := r.tx.AvailEvent(); ev != 3 {
		t.Fatalf("transmitq avail_event %d, want 3", ev)
	}
	// Receive: used_event far ahead, no interrupt for a frame.
	r.rx.SetUsedEvent(100)
	r.postRx(2048, 2048)
	if err := r.dev.Receive(frame(vnet.Header{}, otherMAC, 10)); err != nil {
		t.Fatal(err)
	}
	if u := r.irq.TakeUsed(); len(u) != 0 {
		t.Fatalf("interrupts %v with used_event ahead", u)
	}
	r.rx.SetUsedEvent(1)
	if err := r.dev.Receive(frame(vnet.Header{}, otherMAC, 10)); err != nil {
		t.Fatal(err)
	}
	if u := r.irq.TakeUsed(); len(u) != 1 || u[0] != vnet.RxQueue {
		t.Fatalf("interrupts %v at used_event", u)
	}
	// Out of receive buffers, the device asks to hear of new ones.
	if err := r.dev.Receive(frame(vnet.Header{}, otherMAC, 10)); !errors.Is(err, vnet.ErrNoBuffers) {
		t.Fatal(err)
	}
	if ev := r.rx.AvailEvent(); ev != 2 {
		t.Fatalf("receiveq avail_event %d, want 2", ev)
	}
}

func TestFeaturesAndConfig(t *testing.T) {
	be := newFakeBackend(0)
	dev, err := vnet.New(be, vnet.Options{MAC: devMAC})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if f := dev.Features(); f != vnet.FeatureMAC|vnet.FeatureMrgRxbuf|vnet.FeatureStatus {
		t.Fatalf("features without offloads %#x", f)
	}
	// A backend with segmentation but no checksum offload gets neither.
	dev2, err := vnet.New(newFakeBackend(vnet.FeatureHostTSO4|vnet.FeatureHostECN|vnet.FeatureGuestCsum|vnet.FeatureGuestTSO6), vnet.Options{MAC: devMAC})
	if err != nil {
		t.Fatal(err)
	}
	defer dev2.Close()
	if f := dev2.Features() & vnet.OffloadFeatures; f != vnet.FeatureGuestCsum|vnet.FeatureGuestTSO6 {
		t.Fatalf("offloads %#x", f)
	}
	cfg := make([]byte, 12)
	dev.ReadConfig(0, cfg)
	if !bytes.Equal(cfg[:6], devMAC[:]) || binary.LittleEndian.Uint16(cfg[6:]) != vnet.StatusLinkUp ||
		binary.LittleEndian.Uint16(cfg[8:]) != 1 || cfg[10] != 0 {
		t.Fatalf("config %x", cfg)
	}
	b := make([]byte, 2)
	dev.ReadConfig(4, b)
	if b[0] != devMAC[4] || b[1] != devMAC[5] {
		t.Fatalf("config[4:6] %x", b)
	}
	dev.WriteConfig(0, []byte{1, 2, 3})
	dev.ReadConfig(0, b)
	if b[0] != devMAC[0] {
		t.Fatal("config written")
	}

	r := newRig(t, vnet.Options{}, allFeatures)
	if got := r.be.configured; len(got) != 1 || got[0] != allFeatures {
		t.Fatalf("backend configured with %#x", got)
	}
	r.dev.SetLinkUp(false)
	r.dev.SetLinkUp(false)
	r.dev.ReadConfig(6, b)
	if b[0] != 0 || r.irq.ConfigCount() != 1 {
		t.Fatalf("link down: status %x, %d config interrupts", b, r.irq.ConfigCount())
	}
	// Inconsistent features are refused at activation.
	q, _ := virtio.NewQueue(r.mem, r.rx.Config(), 0)
	for _, f := range []uint64{vnet.FeatureHostTSO4, vnet.FeatureGuestTSO6, vnet.FeatureCsum | vnet.FeatureHostECN} {
		err := r.dev.Activate(virtio.Activation{Mem: r.mem, Features: f, Queues: []*virtio.Queue{q, nil}, IRQ: r.irq})
		if !errors.Is(err, vnet.ErrFeatures) {
			t.Errorf("Activate(%#x) = %v", f, err)
		}
	}
}

func TestNewAndClose(t *testing.T) {
	for _, m := range []vnet.MAC{{}, {0x01, 0, 0x5e, 0, 0, 1}} {
		be := newFakeBackend(0)
		if _, err := vnet.New(be, vnet.Options{MAC: m}); !errors.Is(err, vnet.ErrBadMAC) || be.closed != 1 {
			t.Errorf("New(%s) = %v, backend closed %d times", m, err, be.closed)
		}
	}
	be := newFakeBackend(0)
	dev, err := vnet.New(be, vnet.Options{MAC: devMAC})
	if err != nil {
		t.Fatal(err)
	}
	<-be.ran
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	_ = dev.Close()
	if be.closed != 1 {
		t.Fatalf("backend closed %d times", be.closed)
	}
	if s := devMAC.String(); s != "52:54:00:12:34:56" {
		t.Fatalf("MAC %s", s)
	}
}
