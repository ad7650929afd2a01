package net_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"rainforest/vmm/pci"
	"rainforest/vmm/virtio"
	vnet "rainforest/vmm/virtio/net"
	vt "rainforest/vmm/virtio/virtiotest"
)

// hostOffloads are the features a transmitted frame's header may use.
const hostOffloads = vnet.FeatureCsum | vnet.FeatureHostTSO4 | vnet.FeatureHostTSO6 | vnet.FeatureHostECN

// FuzzTransmit is a guest transmitting any frames, cut into descriptors
// any way, then writing garbage over transmitq's descriptor table and
// available ring. packets is a sequence of 2-byte little-endian lengths
// (at most 4096) each followed by that many bytes: a header and a frame,
// posted as one chain cut at the lengths layout gives (at most 16
// descriptors); garbage goes over the available ring and the descriptor
// table as scribble says. opts: bit 0 leaves the host offloads out of the
// features, bit 1 HOST_ECN alone, bit 2 filters the source MAC, bit 3
// pads the first packet to MaxPacket bytes and bit 4 one more. Whatever
// the guest sends:
//   - every well-formed chain completes, with used length 0, and no
//     reset is asked for;
//   - the backend gets exactly the frames within the size bounds whose
//     header CheckTx accepts for the negotiated features and (with the
//     filter) whose source is the device's MAC, byte for byte;
//   - frames sent and dropped add up to the chains posted;
//   - after the garbage, every frame the backend got still passes those
//     checks, and a reset is asked for exactly when a queue broke.
func FuzzTransmit(f *testing.F) {
	pkt := func(p []byte) []byte {
		return append(binary.LittleEndian.AppendUint16(nil, uint16(len(p))), p...)
	}
	tso := vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	f.Add(pkt(frame(vnet.Header{}, devMAC, 50)), []byte{}, []byte{}, uint8(4))
	f.Add(append(pkt(frame(tso, devMAC, 2000)), pkt(frame(tso, otherMAC, 100))...), []byte{11, 1, 200}, []byte{}, uint8(4))
	f.Add(append(pkt(frame(tso, devMAC, 200)), pkt([]byte{1, 2, 3})...), []byte{3}, []byte{}, uint8(1))
	f.Add(pkt(frame(vnet.Header{}, devMAC, 10)), []byte{}, []byte{}, uint8(8))
	f.Add(pkt(frame(vnet.Header{}, devMAC, 10)), []byte{}, []byte{}, uint8(8|16))
	// A descriptor chained to itself, published after the chain posted.
	loop := append(append([]byte{0, 0, 2, 0}, make([]byte, 32)...), 0, 0, 1, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 0, 0, 0)
	f.Add(pkt(frame(vnet.Header{}, devMAC, 10)), []byte{}, loop, uint8(0))
	f.Fuzz(func(t *testing.T, packets, layout, garbage []byte, opts uint8) {
		features := uint64(allFeatures)
		if opts&1 != 0 {
			features &^= hostOffloads
		}
		if opts&2 != 0 {
			features &^= vnet.FeatureHostECN
		}
		filter := opts&4 != 0
		r := newRig(t, vnet.Options{FilterSourceMAC: filter}, features)
		accepted := func(p []byte) bool {
			if len(p) < vnet.HeaderLen+vnet.EthHeaderLen || len(p) > vnet.MaxPacket {
				return false
			}
			if vnet.DecodeHeader(p).CheckTx(features, len(p)-vnet.HeaderLen) != nil {
				return false
			}
			return !filter || bytes.Equal(p[vnet.HeaderLen+6:vnet.HeaderLen+12], devMAC[:])
		}
		var want [][]byte
		posted := 0
		for len(packets) >= 2 && posted < 16 {
			n := min(int(binary.LittleEndian.Uint16(packets)), len(packets)-2, 4096)
			p := packets[2 : 2+n]
			packets = packets[2+n:]
			if posted == 0 && opts&8 != 0 {
				pad := vnet.MaxPacket - len(p)
				if opts&16 != 0 {
					pad++
				}
				p = append(bytes.Clone(p), make([]byte, pad)...)
			}
			var cuts []int
			for i := 0; i < 15 && len(layout) > 0; i++ {
				cuts = append(cuts, int(layout[(posted+i)%len(layout)])+1)
			}
			r.next = bufBase
			if len(p) == 0 {
				p = []byte{0} // a descriptor needs a buffer to post
			}
			r.transmit(p, cuts...)
			posted++
			if accepted(p) {
				want = append(want, p)
			}
		}
		got := r.be.frames()
		if len(got) != len(want) {
			t.Fatalf("backend got %d frames, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("frame %d differs", i)
			}
		}
		for i := range posted {
			if _, n, ok := r.tx.TakeUsed(); !ok || n != 0 {
				t.Fatalf("chain %d: used %d %v", i, n, ok)
			}
		}
		s := r.dev.Stats()
		if r.irq.NeedsResetCount() != 0 || s.Malformed != 0 {
			t.Fatalf("well-formed chains broke the queue: %+v", s)
		}
		if s.TxPackets+s.TxDropped() != uint64(posted) || s.TxPackets != uint64(len(want)) {
			t.Fatalf("stats %+v for %d chains", s, posted)
		}
		if len(garbage) == 0 {
			return
		}
		scribble(r, r.tx, garbage)
		r.dev.QueueNotify(vnet.TxQueue)
		r.dev.Sync()
		for i, p := range r.be.frames() {
			if !accepted(p) {
				t.Fatalf("frame %d (%d bytes) sent though the device should drop it", i, len(p))
			}
		}
		s = r.dev.Stats()
		if uint64(r.irq.NeedsResetCount()) != s.Malformed || s.TxPackets != uint64(len(r.be.frames())) {
			t.Fatalf("%d resets asked; stats %+v", r.irq.NeedsResetCount(), s)
		}
	})
}

// scribble writes the guest's garbage over a queue: its first 4 bytes
// over the available ring's flags and index, the next 32 over the ring's
// first 16 entries (the chains the fuzzers post use no more), the rest
// over the descriptor table.
func scribble(r *rig, d *vt.Driver, garbage []byte) {
	head := garbage[:min(len(garbage), 36)]
	_ = r.mem.WriteAt(head, d.Avail)
	if rest := garbage[len(head):]; len(rest) > 0 {
		_ = r.mem.WriteAt(rest[:min(len(rest), 16*rigQueue)], d.Desc)
	}
}

// nopRouter delivers no MSI-X messages.
type nopRouter struct{}

func (nopRouter) Route(int, pci.MSIMessage, bool) error { return nil }
func (nopRouter) Fire(int) error                        { return nil }

// FuzzNegotiation is a driver negotiating with the device through the
// virtio-pci transport in any order: ops is a sequence of (op, arg)
// pairs — read the device features, write the driver features (the next
// 4 bytes), write the status, set up a queue, read or write the device
// config at any offset and width, notify a queue, change the link.
// offloads picks the backend's offloads (one bit each). Whatever the
// driver does:
//   - the device features read are the device's offer (its offloads with
//     their dependencies) and the transport's;
//   - the config reads the MAC, the link status and one queue pair, and
//     zeros past them; writes change nothing;
//   - the backend is configured only with features that pass
//     CheckFeatures, within the offer, with VERSION_1, and then with
//     exactly what the driver wrote.
func FuzzNegotiation(f *testing.F) {
	le32 := func(v uint64) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(v)) }
	linux := uint64(allFeatures &^ virtio.FeatureIndirectDesc)
	var seq []byte
	seq = append(seq, 2, 1, 2, 3, 0, 0, 0, 1)
	seq = append(append(seq, 1, 0), le32(linux)...)
	seq = append(append(seq, 1, 1), le32(linux>>32)...)
	seq = append(seq, 2, 11, 3, 0, 3, 1, 2, 15, 6, 1, 4, 0x30, 4, 6, 7, 0, 4, 0x16)
	f.Add(seq, uint8(0xFF))
	bad := append([]byte{2, 3}, append(append([]byte{1, 0}, le32(vnet.FeatureHostTSO4|vnet.FeatureMAC)...), append([]byte{1, 1}, le32(1)...)...)...)
	f.Add(append(bad, 2, 11, 3, 0, 3, 1, 2, 15), uint8(0xFF))
	f.Add([]byte{4, 0x09, 5, 0x20, 4, 0x20, 0, 2, 4, 0x3F}, uint8(0x05))
	offloadBits := []uint64{vnet.FeatureCsum, vnet.FeatureGuestCsum, vnet.FeatureGuestTSO4, vnet.FeatureGuestTSO6,
		vnet.FeatureGuestECN, vnet.FeatureHostTSO4, vnet.FeatureHostTSO6, vnet.FeatureHostECN}
	f.Fuzz(func(t *testing.T, ops []byte, offloads uint8) {
		var carried uint64
		for i, b := range offloadBits {
			if offloads&(1<<i) != 0 {
				carried |= b
			}
		}
		be := newFakeBackend(carried)
		dev, err := vnet.New(be, vnet.Options{MAC: devMAC})
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		offer := dev.Features()
		if offer&^(vnet.FeatureMAC|vnet.FeatureMrgRxbuf|vnet.FeatureStatus|carried) != 0 || vnet.CheckFeatures(offer) != nil {
			t.Fatalf("offer %#x for offloads %#x", offer, carried)
		}
		offer |= virtio.TransportFeatures
		mem := vt.NewMemory(rigMem)
		rx, tx := vt.NewDriver(mem, rigQueue, rxRing), vt.NewDriver(mem, rigQueue, txRing)
		fn, err := virtio.NewPCIDevice(dev, mem, nopRouter{})
		if err != nil {
			t.Fatal(err)
		}
		bar := func(off uint64, width int) uint64 {
			b := make([]byte, 8)
			fn.ReadBAR(virtio.BARIndex, off, b[:width])
			return binary.LittleEndian.Uint64(b)
		}
		put := func(off uint64, width int, v uint64) {
			fn.WriteBAR(virtio.BARIndex, off, binary.LittleEndian.AppendUint64(nil, v)[:width])
		}
		driverFeatures := func() uint64 {
			sel := bar(0x08, 4)
			put(0x08, 4, 0)
			lo := bar(0x0C, 4)
			put(0x08, 4, 1)
			hi := bar(0x0C, 4)
			put(0x08, 4, sel)
			return lo | hi<<32
		}
		link := true
		for step := 0; len(ops) >= 2 && step < 64; step++ {
			op, arg := ops[0], ops[1]
			ops = ops[2:]
			before := len(be.configured)
			switch op % 8 {
			case 0:
				sel := uint64(arg % 3)
				put(0x00, 4, sel)
				want := uint64(0)
				if sel < 2 {
					want = uint64(uint32(offer >> (32 * sel)))
				}
				if got := bar(0x04, 4); got != want {
					t.Fatalf("step %d: device features word %d = %#x, want %#x", step, sel, got, want)
				}
			case 1:
				if len(ops) < 4 {
					ops = nil
					continue
				}
				put(0x08, 4, uint64(arg%2))
				put(0x0C, 4, uint64(binary.LittleEndian.Uint32(ops)))
				ops = ops[4:]
			case 2:
				put(0x14, 1, uint64(arg))
			case 3:
				d := rx
				if arg%2 == 1 {
					d = tx
				}
				put(0x16, 2, uint64(arg%2))
				put(0x18, 2, rigQueue)
				put(0x20, 8, d.Desc)
				put(0x28, 8, d.Avail)
				put(0x30, 8, d.Used)
				put(0x1C, 2, 1)
			case 4, 5:
				off, width := uint64(arg&15), 1<<(arg>>4&3)
				if op%8 == 5 {
					put(virtio.DeviceCfgOffset+off, width, 0xFFFF_FFFF_FFFF_FFFF)
				}
				var want [24]byte
				copy(want[:], devMAC[:])
				if link {
					want[6] = vnet.StatusLinkUp
				}
				want[8] = 1
				got := bar(virtio.DeviceCfgOffset+off, width)
				if w := binary.LittleEndian.Uint64(want[off:]) & (1<<(8*width) - 1); got != w {
					t.Fatalf("step %d: config[%d:+%d] = %#x, want %#x", step, off, width, got, w)
				}
			case 6:
				fn.QueueNotify(int(arg % 3))
			case 7:
				link = arg&1 == 0
				dev.SetLinkUp(link)
			}
			if len(be.configured) == before {
				continue
			}
			got := be.configured[len(be.configured)-1]
			if got&^offer != 0 || got&virtio.FeatureVersion1 == 0 || vnet.CheckFeatures(got) != nil {
				t.Fatalf("step %d: backend configured with %#x (offer %#x)", step, got, offer)
			}
			if w := driverFeatures(); got != w {
				t.Fatalf("step %d: backend configured with %#x, driver wrote %#x", step, got, w)
			}
		}
	})
}

// FuzzReceive is a guest posting receive buffers of any sizes (one or two
// descriptors each) while frames of any sizes arrive, then writing
// garbage over receiveq's descriptor table and available ring. bufs gives
// a buffer size per byte (12 to 2052 bytes, at most 64 buffers: each
// holds a header, as the driver must post them); frames is
// a sequence of 2-byte little-endian payload lengths (at most 8192).
// opts: bit 0 leaves MRG_RXBUF out, bit 1 splits each buffer in two
// descriptors. Whatever the sizes:
//   - a frame is delivered whole or not at all: its used buffers, in
//     order, hold the header with num_buffers set (1 without MRG_RXBUF)
//     and the frame, byte for byte; no used length exceeds its buffer;
//   - a frame not delivered is refused with ErrNoBuffers, uses nothing,
//     and is counted;
//   - after the garbage, a reset is asked for exactly when the queue
//     broke.
func FuzzReceive(f *testing.F) {
	lens := func(ns ...int) []byte {
		var b []byte
		for _, n := range ns {
			b = binary.LittleEndian.AppendUint16(b, uint16(n))
		}
		return b
	}
	f.Add([]byte{63, 63, 63, 63}, lens(1000, 100, 2000), []byte{}, uint8(0))
	f.Add([]byte{200, 10, 255}, lens(1400, 1400), []byte{}, uint8(1))
	f.Add([]byte{5, 5, 5, 5, 5, 5, 5}, lens(300, 0, 60), []byte{}, uint8(2))
	// A receive buffer too short for the header, published after the
	// one posted.
	short := append(append([]byte{0, 0, 2, 0}, make([]byte, 32)...), 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0)
	f.Add([]byte{100}, lens(50), short, uint8(0))
	f.Fuzz(func(t *testing.T, bufs, frames, garbage []byte, opts uint8) {
		features := uint64(allFeatures)
		mergeable := opts&1 == 0
		if !mergeable {
			features &^= vnet.FeatureMrgRxbuf
		}
		r := newRig(t, vnet.Options{}, features)
		type posted struct {
			addr uint64
			size int
		}
		chains := map[uint16]posted{}
		for _, b := range bufs[:min(len(bufs), 64)] {
			size := vnet.HeaderLen + int(b)*8
			a := r.alloc(size)
			var head uint16
			if opts&2 != 0 && size > 8 {
				head = r.rx.AddChain(vt.Buf{Addr: a, Len: 8, Write: true}, vt.Buf{Addr: a + 8, Len: uint32(size - 8), Write: true})
			} else {
				head = r.rx.AddChain(vt.Buf{Addr: a, Len: uint32(size), Write: true})
			}
			chains[head] = posted{a, size}
		}
		r.dev.QueueNotify(vnet.RxQueue)
		refused := 0
		for i := 0; len(frames) >= 2 && i < 32; i++ {
			n := min(int(binary.LittleEndian.Uint16(frames)), 8192)
			frames = frames[2:]
			p := frame(vnet.Header{NumBuffers: 0xFFFF}, otherMAC, n)
			err := r.dev.Receive(p)
			if err != nil {
				if !errors.Is(err, vnet.ErrNoBuffers) {
					t.Fatalf("frame %d: %v", i, err)
				}
				refused++
				if _, _, ok := r.rx.TakeUsed(); ok {
					t.Fatalf("frame %d refused but a buffer used", i)
				}
				continue
			}
			var got []byte
			want := 1
			for k := 0; k < want; k++ {
				id, l, ok := r.rx.TakeUsed()
				if !ok {
					t.Fatalf("frame %d: buffer %d of %d missing", i, k, want)
				}
				c, known := chains[id]
				if !known || int(l) > c.size {
					t.Fatalf("frame %d: used head %d length %d (posted %v)", i, id, l, c)
				}
				delete(chains, id)
				got = append(got, r.read(c.addr, int(l))...)
				if k == 0 {
					if len(got) < vnet.HeaderLen {
						t.Fatalf("frame %d: first buffer of %d bytes", i, l)
					}
					h := vnet.DecodeHeader(got)
					want = int(h.NumBuffers)
					if !mergeable && want != 1 || want < 1 {
						t.Fatalf("frame %d: num_buffers %d", i, want)
					}
				}
			}
			if !bytes.Equal(got[vnet.HeaderLen:], p[vnet.HeaderLen:]) {
				t.Fatalf("frame %d: %d bytes delivered, want %d", i, len(got)-vnet.HeaderLen, len(p)-vnet.HeaderLen)
			}
		}
		if _, _, ok := r.rx.TakeUsed(); ok {
			t.Fatal("a buffer used beyond the frames delivered")
		}
		if s := r.dev.Stats(); s.RxNoBuffers != uint64(refused) || r.irq.NeedsResetCount() != 0 {
			t.Fatalf("stats %+v, %d refused, %d resets", s, refused, r.irq.NeedsResetCount())
		}
		if len(garbage) == 0 {
			return
		}
		scribble(r, r.rx, garbage)
		r.dev.QueueNotify(vnet.RxQueue)
		_ = r.dev.Receive(frame(vnet.Header{}, otherMAC, 100))
		if s := r.dev.Stats(); uint64(r.irq.NeedsResetCount()) != s.Malformed {
			t.Fatalf("%d resets asked; stats %+v", r.irq.NeedsResetCount(), s)
		}
	})
}
