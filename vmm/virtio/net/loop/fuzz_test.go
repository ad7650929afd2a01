package loop

import (
	"context"
	"encoding/binary"
	"testing"

	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	vnet "rainforest/vmm/virtio/net"
)

// seedRing is the producer index and slot bytes of a ring on which pkts
// were put as records.
func seedRing(t testing.TB, pkts ...[]byte) (uint32, []byte) {
	tx, rx := ring.AlignedBytes(ring.TxSize(MinSlots)), ring.AlignedBytes(queue.RxSize)
	p, err := ring.NewProducer(tx, rx, MinSlots)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, pkt := range pkts {
		need := recordSlots(len(pkt))
		if n, _ := p.Reserve(need); n != need {
			t.Fatal("seed too large")
		}
		putRecordHeader(p.Slot(0), len(pkt))
		put(p, 0, pkt)
		p.Commit(need)
		total += need
	}
	return uint32(total), tx[ring.HeaderSize : ring.HeaderSize+total*ring.SlotSize]
}

// FuzzReceive is a malicious member (a) writing anything into its ring
// towards b: slot contents, and a producer index. Whatever it writes, b's
// receive side neither panics nor loops; it hands its guest only frames
// within the size bounds that a's source rules allow and that are for
// b's MAC or a group, byte for byte as they were in the ring; everything
// else is counted. features is what b's driver accepted (bit 0: partial
// checksums).
func FuzzReceive(f *testing.F) {
	csum := vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 34, CsumOffset: 6}
	tso := vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	for _, seed := range [][][]byte{
		{udp(0, 1, 100)},
		{udp(0, 1, 0), udp(0, 2, 5), packet(vnet.Header{}, bcast, macs[0], etherARP, arp(1, macs[0], ips[0], vnet.MAC{}, ips[1]))},
		{packet(vnet.Header{}, macs[1], macs[2], etherIPv4, ipv4(ips[2], ips[1], 17, nil)), udp(0, 1, 3000)},
		{packet(csum, macs[1], macs[0], etherIPv4, ipv4(ips[0], ips[1], 17, make([]byte, 200)))},
		{packet(tso, macs[1], macs[0], etherIPv4, ipv4(ips[0], ips[1], 6, make([]byte, 5000)))},
		{packet(vnet.Header{}, macs[1], macs[0], etherIPv6, ipv6(linkLocal(macs[0]), linkLocal(macs[1]), ip6ICMP, neighAdv(linkLocal(macs[0]))))},
	} {
		prod, data := seedRing(f, seed...)
		f.Add(prod, data, uint8(1))
		f.Add(prod, data, uint8(0))
		f.Add(prod+7, data, uint8(1))
	}
	f.Add(uint32(3), []byte("RFLP"), uint8(1))
	f.Add(uint32(1<<31), []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, prod uint32, data []byte, features uint8) {
		r := newRig(t, members(3), MinSlots, 0)
		if features&1 == 0 {
			r.configure(1, vnet.FeatureMrgRxbuf)
		}
		l, _ := LaneLayout(3, MinSlots)
		tx := r.lanes[0][l.TxOffset(1) : l.TxOffset(1)+ring.TxSize(MinSlots)]
		copy(tx[ring.HeaderSize:], data)
		binary.NativeEndian.PutUint32(tx, prod)
		in := make([]byte, len(tx))
		copy(in, tx)
		for rounds := 0; ; rounds++ {
			n, err := r.b[1].poll(context.Background(), r.ports[1])
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if rounds > MinSlots {
				t.Fatal("the receiver keeps finding frames")
			}
		}
		got := r.ports[1].take()
		s := r.b[1].Stats()
		if s.RxFrames != uint64(len(got)) {
			t.Fatalf("%d frames delivered, %d counted", len(got), s.RxFrames)
		}
		for _, pkt := range got {
			eth := pkt[vnet.HeaderLen:]
			switch {
			case len(pkt) < minPacket || len(pkt) > vnet.MaxPacket:
				t.Fatalf("a %d-byte packet delivered", len(pkt))
			case r.b[1].rules.check(0, eth[:min(len(eth), inspectLen)]) != allowed:
				t.Fatal("a frame against a's rules delivered")
			case vnet.MAC(eth) != macs[1] && eth[0]&1 == 0:
				t.Fatal("a frame for someone else delivered")
			}
			h := vnet.DecodeHeader(pkt)
			if features&1 == 0 && h.Flags&vnet.HdrNeedsCsum != 0 && h.GSOType == vnet.GSONone {
				t.Fatal("a partial checksum delivered to a guest that does not take them")
			}
			if len(pkt) <= 4096 && h.Flags == 0 && features&1 != 0 && !containsRecord(in, pkt) {
				t.Fatal("a frame delivered that is not in the ring")
			}
		}
		// b still takes frames from c.
		if err := r.send(2, udp(2, 1, 10)); err != nil {
			t.Fatal(err)
		}
		if n, err := r.b[1].poll(context.Background(), r.ports[1]); n == 0 || err != nil {
			t.Fatalf("c's frame after a's garbage: %d, %v", n, err)
		}
	})
}

// containsRecord reports whether pkt lies in the ring memory tx as a
// record's packet (possibly wrapping around the slots).
func containsRecord(tx, pkt []byte) bool {
	slots := tx[ring.HeaderSize:]
	double := append(append([]byte(nil), slots...), slots...)
	for off := 0; off+ring.SlotSize <= len(slots); off += ring.SlotSize {
		if recordLength((*[ring.SlotSize]byte)(double[off:])) == len(pkt) &&
			string(double[off+ring.SlotSize:off+ring.SlotSize+len(pkt)]) == string(pkt) {
			return true
		}
	}
	return false
}

// FuzzSend is a guest sending anything, cut anywhere: a frame is put on
// a ring exactly when it is within the size bounds, its source rules
// allow it, and some member has its destination (every other member for
// a group address), and it arrives there byte for byte; nothing else
// reaches anyone, and every refusal is counted.
func FuzzSend(f *testing.F) {
	f.Add(udp(0, 1, 100), uint8(0), uint16(30))
	f.Add(packet(vnet.Header{}, bcast, macs[0], etherARP, arp(1, macs[0], ips[0], vnet.MAC{}, ips[1])), uint8(0), uint16(0))
	f.Add(packet(vnet.Header{}, bcast, macs[3], etherARP, arp(1, macs[3], ips[1], vnet.MAC{}, ips[1])), uint8(3), uint16(5))
	f.Add(packet(vnet.Header{}, macs[1], macs[0], etherIPv6, ipv6(linkLocal(macs[0]), linkLocal(macs[1]), ip6HopByHop,
		append([]byte{ip6ICMP, 0, 1, 4, 0, 0, 0, 0}, neighAdv(linkLocal(macs[2]))...))), uint8(0), uint16(70))
	f.Add(packet(vnet.Header{}, macs[2], macs[3], 0x88cc, make([]byte, 60)), uint8(3), uint16(1))
	f.Fuzz(func(t *testing.T, pkt []byte, from uint8, cut uint16) {
		r := newRig(t, members(4), MinSlots)
		i := int(from % 4)
		var frame [][]byte
		if c := int(cut); c < len(pkt) {
			frame = [][]byte{pkt[:c], pkt[c:]}
		} else {
			frame = [][]byte{pkt}
		}
		before := r.b[i].Stats()
		err := r.b[i].Send(frame)
		after := r.b[i].Stats()
		ok := len(pkt) >= minPacket && len(pkt) <= vnet.MaxPacket
		var dests []int
		if ok {
			ok = r.b[i].rules.check(i, pkt[vnet.HeaderLen:min(len(pkt), vnet.HeaderLen+inspectLen)]) == allowed
			dst := vnet.MAC(pkt[vnet.HeaderLen:])
			for j := range 4 {
				if j != i && (dst[0]&1 != 0 || dst == macs[j]) {
					dests = append(dests, j)
				}
			}
			ok = ok && len(dests) > 0
		}
		if (err == nil) != ok {
			t.Fatalf("Send: %v; allowed %v, destinations %v", err, ok, dests)
		}
		if err != nil && after.TxDropped() != before.TxDropped()+1 {
			t.Fatalf("a refusal not counted: %+v", after)
		}
		for j := range 4 {
			got := r.poll(j)
			want := 0
			for _, d := range dests {
				// The device takes it if its header suits the driver.
				if d == j && ok && vnet.DecodeHeader(pkt).CheckRx(allFeatures, len(pkt)-vnet.HeaderLen) == nil {
					want = 1
				}
			}
			if len(got) != want || want == 1 && string(got[0]) != string(pkt) {
				t.Fatalf("member %d got %d frames, want %d", j, len(got), want)
			}
		}
	})
}
