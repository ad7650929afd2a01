package loop

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	vnet "rainforest/vmm/virtio/net"
)

// udp is an IPv4 UDP datagram from member i to member j.
func udp(i, j int, n int) []byte {
	payload := make([]byte, 8+n)
	binary.BigEndian.PutUint16(payload[0:], 5000)
	binary.BigEndian.PutUint16(payload[2:], 5001)
	binary.BigEndian.PutUint16(payload[4:], uint16(len(payload)))
	for k := range payload[8:] {
		payload[8+k] = byte(k * (i + 1))
	}
	return packet(vnet.Header{}, macs[j], macs[i], etherIPv4, ipv4(ip4of(i), ip4of(j), 17, payload))
}

// TestUnicast: a frame goes to its destination only, byte for byte, from
// scatter lists of any shape, in order, with the counters.
func TestUnicast(t *testing.T) {
	r := newRig(t, members(3), MinSlots)
	var want [][]byte
	for _, n := range []int{0, 1, 63, 64, 65, 1472, 9000, vnet.MaxFrame - 14 - 20 - 8} {
		p := udp(0, 1, n)
		if err := r.send(0, p); err != nil {
			t.Fatalf("send %d bytes: %v", len(p), err)
		}
		want = append(want, p)
		if got := r.poll(1); len(got) != 1 || !bytes.Equal(got[0], p) {
			t.Fatalf("%d-byte frame: member b got %d frames", len(p), len(got))
		}
	}
	if got := r.poll(2); len(got) != 0 {
		t.Fatalf("member c got %d frames of a's unicast to b", len(got))
	}
	if got := r.poll(0); len(got) != 0 {
		t.Fatalf("a got %d frames of its own", len(got))
	}
	s := r.b[0].Stats()
	if s.TxFrames != uint64(len(want)) || s.TxDropped() != 0 {
		t.Errorf("sender stats %+v", s)
	}
	if s := r.b[1].Stats(); s.RxFrames != uint64(len(want)) || s.RxDropped() != 0 {
		t.Errorf("receiver stats %+v", s)
	}
	// Several frames queued, then taken in order.
	for k := range 5 {
		if err := r.send(2, udp(2, 1, k)); err != nil {
			t.Fatal(err)
		}
	}
	got := r.poll(1)
	for k := range 5 {
		if len(got) != 5 || !bytes.Equal(got[k], udp(2, 1, k)) {
			t.Fatalf("queued frames: got %d, #%d differs", len(got), k)
		}
	}
}

// TestBroadcastARP: ARP's broadcast request reaches every other member,
// its unicast reply the asker; a multicast frame reaches every other
// member too.
func TestBroadcastARP(t *testing.T) {
	r := newRig(t, members(3), MinSlots)
	req := packet(vnet.Header{}, bcast, macs[0], etherARP, arp(1, macs[0], ips[0], vnet.MAC{}, ips[1]))
	if err := r.send(0, req); err != nil {
		t.Fatal(err)
	}
	for _, m := range []int{1, 2} {
		if got := r.poll(m); len(got) != 1 || !bytes.Equal(got[0], req) {
			t.Fatalf("member %d got %d frames of the ARP request", m, len(got))
		}
	}
	rep := packet(vnet.Header{}, macs[0], macs[1], etherARP, arp(2, macs[1], ips[1], macs[0], ips[0]))
	if err := r.send(1, rep); err != nil {
		t.Fatal(err)
	}
	if got := r.poll(0); len(got) != 1 || !bytes.Equal(got[0], rep) {
		t.Fatalf("a got %d frames of the ARP reply", len(got))
	}
	if got := r.poll(2); len(got) != 0 {
		t.Fatalf("c got %d frames of the reply to a", len(got))
	}
	mcast := vnet.MAC{0x01, 0x00, 0x5e, 0, 0, 0xfb}
	m := packet(vnet.Header{}, mcast, macs[2], etherIPv4, ipv4(ips[2], netip.MustParseAddr("224.0.0.251"), 17, make([]byte, 40)))
	if err := r.send(2, m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{0, 1} {
		if got := r.poll(k); len(got) != 1 || !bytes.Equal(got[0], m) {
			t.Fatalf("member %d got %d frames of the multicast", k, len(got))
		}
	}
	if s := r.b[2].Stats(); s.TxFrames != 2 {
		t.Errorf("a multicast to two members counts %d frames", s.TxFrames)
	}
}

// TestDropped: unknown unicast, frames out of bounds and every kind of
// spoofing are refused at the sender, counted by reason, and reach no
// one.
func TestDropped(t *testing.T) {
	ms := members(4) // d has no IP address
	r := newRig(t, ms, MinSlots)
	ll := func(i int) [16]byte { return linkLocal(macs[i]) }
	global := [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}
	for _, c := range []struct {
		name string
		from int
		pkt  []byte
		err  error
		stat func(Stats) uint64
	}{
		{"unknown unicast", 0, packet(vnet.Header{}, vnet.MAC{0x02, 9, 9, 9, 9, 9}, macs[0], etherIPv4, ipv4(ips[0], ips[1], 17, nil)),
			ErrUnknownDest, func(s Stats) uint64 { return s.TxUnknownDest }},
		{"unicast to itself", 0, udp(0, 0, 10), ErrUnknownDest, func(s Stats) uint64 { return s.TxUnknownDest }},
		{"short", 0, packet(vnet.Header{}, macs[1], macs[0], etherIPv4, nil)[:minPacket-1], ErrFrameSize, func(s Stats) uint64 { return s.TxBadSize }},
		{"oversized", 0, append(udp(0, 1, 0), make([]byte, vnet.MaxPacket)...), ErrFrameSize, func(s Stats) uint64 { return s.TxBadSize }},
		{"spoofed MAC", 0, packet(vnet.Header{}, macs[1], macs[2], etherIPv4, ipv4(ips[0], ips[1], 17, nil)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedMAC }},
		{"spoofed IPv4", 0, packet(vnet.Header{}, macs[1], macs[0], etherIPv4, ipv4(ips[2], ips[1], 17, nil)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"IPv4 source 0.0.0.0 from a member with an address", 0, packet(vnet.Header{}, bcast, macs[0], etherIPv4, ipv4(netip.IPv4Unspecified(), ips[1], 17, nil)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"spoofed ARP sender IP", 0, packet(vnet.Header{}, bcast, macs[0], etherARP, arp(2, macs[0], ips[2], macs[1], ips[1])),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"spoofed ARP sender MAC", 0, packet(vnet.Header{}, bcast, macs[0], etherARP, arp(2, macs[2], ips[0], macs[1], ips[1])),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedMAC }},
		{"ARP of another protocol", 0, packet(vnet.Header{}, bcast, macs[0], etherARP, append([]byte{0, 1, 0x86, 0xdd}, make([]byte, 24)...)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxBlocked }},
		{"truncated IPv4 header", 0, packet(vnet.Header{}, macs[1], macs[0], etherIPv4, make([]byte, 19)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxBlocked }},
		{"VLAN", 3, packet(vnet.Header{}, macs[1], macs[3], etherVLAN, make([]byte, 46)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxBlocked }},
		{"other EtherType from a member with an address", 0, packet(vnet.Header{}, macs[1], macs[0], 0x88cc, make([]byte, 46)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxBlocked }},
		{"IPv6 from another link-local", 0, packet(vnet.Header{}, macs[1], macs[0], etherIPv6, ipv6(ll(1), ll(0), 17, make([]byte, 8))),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"IPv6 global from a member with an IPv4 address", 0, packet(vnet.Header{}, macs[1], macs[0], etherIPv6, ipv6(global, ll(1), 17, make([]byte, 8))),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"neighbour advertisement of another's address", 0, packet(vnet.Header{}, bcast, macs[0], etherIPv6, ipv6(ll(0), ll(1), ip6ICMP, neighAdv(ll(1)))),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"the same behind a hop-by-hop header", 0, packet(vnet.Header{}, bcast, macs[0], etherIPv6, ipv6(ll(0), ll(1), ip6HopByHop, append([]byte{ip6ICMP, 0, 1, 4, 0, 0, 0, 0}, neighAdv(ll(1))...))),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"no address: another's IPv4", 3, packet(vnet.Header{}, macs[1], macs[3], etherIPv4, ipv4(ips[1], ips[0], 17, nil)),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"no address: another's ARP sender IP", 3, packet(vnet.Header{}, bcast, macs[3], etherARP, arp(2, macs[3], ips[0], macs[1], ips[1])),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
		{"no address: another's link-local", 3, packet(vnet.Header{}, macs[1], macs[3], etherIPv6, ipv6(ll(2), ll(1), 17, make([]byte, 8))),
			ErrSpoofed, func(s Stats) uint64 { return s.TxSpoofedIP }},
	} {
		b := r.b[c.from]
		before := c.stat(b.Stats())
		if err := r.send(c.from, c.pkt); !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
		}
		if got := c.stat(b.Stats()); got != before+1 {
			t.Errorf("%s: counter went from %d to %d", c.name, before, got)
		}
	}
	for i := range ms {
		if got := r.poll(i); len(got) != 0 {
			t.Errorf("member %d got %d dropped frames", i, len(got))
		}
		if s := r.b[i].Stats(); s.TxFrames != 0 {
			t.Errorf("member %d sent %d frames", i, s.TxFrames)
		}
	}
	// What is allowed: ARP probes, the member's own link-local and DAD,
	// anything from the member without an address that is no one's.
	for _, c := range []struct {
		name string
		from int
		pkt  []byte
	}{
		{"ARP probe", 0, packet(vnet.Header{}, bcast, macs[0], etherARP, arp(1, macs[0], netip.IPv4Unspecified(), vnet.MAC{}, ips[0]))},
		{"own link-local", 0, packet(vnet.Header{}, macs[1], macs[0], etherIPv6, ipv6(ll(0), ll(1), 17, make([]byte, 8)))},
		{"own advertisement", 0, packet(vnet.Header{}, bcast, macs[0], etherIPv6, ipv6(ll(0), ll(1), ip6ICMP, neighAdv(ll(0))))},
		{"DAD", 0, packet(vnet.Header{}, bcast, macs[0], etherIPv6, ipv6([16]byte{}, ll(1), ip6ICMP, []byte{135, 0, 0, 0}))},
		{"no address: a free IPv4", 3, packet(vnet.Header{}, macs[1], macs[3], etherIPv4, ipv4(netip.MustParseAddr("10.0.0.9"), ips[1], 17, nil))},
		{"no address: a global IPv6", 3, packet(vnet.Header{}, macs[1], macs[3], etherIPv6, ipv6(global, ll(1), 17, make([]byte, 8)))},
		{"no address: another EtherType", 3, packet(vnet.Header{}, macs[1], macs[3], 0x88cc, make([]byte, 46))},
	} {
		if err := r.send(c.from, c.pkt); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// TestRingFull: a receiver that does not drain makes its senders drop
// (and count) what no longer fits, without waiting; what fitted arrives
// once it drains, and the senders' other rings are not affected.
func TestRingFull(t *testing.T) {
	r := newRig(t, members(3), MinSlots)
	p := udp(0, 1, 1472) // 1526 bytes: a record of 25 slots, 81 of which fit in 2048
	sent, full := 0, 0
	for range 100 {
		switch err := r.send(0, p); {
		case err == nil:
			sent++
		case errors.Is(err, ErrRingFull):
			full++
		default:
			t.Fatal(err)
		}
	}
	if sent != MinSlots/recordSlots(len(p)) || full != 100-sent {
		t.Fatalf("sent %d, full %d", sent, full)
	}
	if s := r.b[0].Stats(); s.TxRingFull != uint64(full) || s.TxFrames != uint64(sent) {
		t.Errorf("stats %+v", s)
	}
	// A broadcast still reaches c, whose ring has room, and counts b's
	// ring as full.
	bc := packet(vnet.Header{}, bcast, macs[0], etherIPv4, ipv4(ips[0], netip.MustParseAddr("10.0.0.255"), 17, make([]byte, 1480)))
	if err := r.send(0, bc); err != nil {
		t.Fatal(err)
	}
	if got := r.poll(2); len(got) != 1 {
		t.Fatalf("c got %d frames", len(got))
	}
	if s := r.b[0].Stats(); s.TxRingFull != uint64(full)+1 {
		t.Errorf("the broadcast did not count b's ring as full: %+v", s)
	}
	if got := r.poll(1); len(got) != sent {
		t.Fatalf("b got %d frames once it drained, want %d", len(got), sent)
	}
	if err := r.send(0, p); err != nil {
		t.Fatalf("after the drain: %v", err)
	}
}

// TestNoBuffers: while the guest has no receive buffers, frames stay in
// the rings (the receiver waits in WaitRx, taking nothing), and the
// receive side stops when its context ends meanwhile.
func TestNoBuffers(t *testing.T) {
	r := newRig(t, members(2), MinSlots)
	r.ports[1].ready = make(chan struct{}) // no buffers
	if err := r.send(0, udp(0, 1, 10)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.b[1].poll(ctx, r.ports[1]); !errors.Is(err, context.Canceled) {
		t.Fatalf("poll without buffers: %v", err)
	}
	if n, _ := r.b[1].peers[0].in.Pending(); n != recordSlots(len(udp(0, 1, 10))) {
		t.Fatalf("%d slots pending, the frame's record should wait", n)
	}
	close(r.ports[1].ready)
	if got := r.poll(1); len(got) != 1 {
		t.Fatalf("got %d frames once buffers came", len(got))
	}
}

// TestMaliciousPeer: a member's VMM that writes garbage into its ring
// (bad magic, lengths out of bounds or beyond what it published, frames
// against its source rules or for someone else, an impossible producer
// index) gets its frames dropped and counted; the receiver goes on, and
// its other rings keep working.
func TestMaliciousPeer(t *testing.T) {
	r := newRig(t, members(3), MinSlots, 0) // a (member 0) is played by the test
	evil := r.raw(0, 1)
	good := udp(0, 1, 100)
	slot := func(magic, n uint32, commit int) {
		if k, _ := evil.Reserve(commit); k != commit {
			t.Fatalf("reserve %d: %d", commit, k)
		}
		s := evil.Slot(0)
		binary.NativeEndian.PutUint32(s[0:], magic)
		binary.NativeEndian.PutUint32(s[4:], n)
		evil.Commit(commit)
	}
	steps := []struct {
		name  string
		write func()
		stat  func(Stats) uint64
	}{
		{"bad magic", func() { slot(0xdeadbeef, 100, 3) }, func(s Stats) uint64 { return s.RxBadRecord }},
		{"length over MaxPacket", func() { slot(RecordMagic, vnet.MaxPacket+1, 1) }, func(s Stats) uint64 { return s.RxBadRecord }},
		{"length under a header", func() { slot(RecordMagic, minPacket-1, 1) }, func(s Stats) uint64 { return s.RxBadRecord }},
		{"length beyond the published slots", func() { slot(RecordMagic, 2000, 5) }, func(s Stats) uint64 { return s.RxBadRecord }},
		{"huge length", func() { slot(RecordMagic, 1<<31, 1) }, func(s Stats) uint64 { return s.RxBadRecord }},
		{"spoofed MAC", func() {
			pushRecord(t, evil, packet(vnet.Header{}, macs[1], macs[2], etherIPv4, ipv4(ips[2], ips[1], 17, nil)))
		},
			func(s Stats) uint64 { return s.RxSpoofed }},
		{"spoofed IP", func() {
			pushRecord(t, evil, packet(vnet.Header{}, macs[1], macs[0], etherIPv4, ipv4(ips[2], ips[1], 17, nil)))
		},
			func(s Stats) uint64 { return s.RxSpoofed }},
		{"for c", func() { pushRecord(t, evil, udp(0, 2, 10)) }, func(s Stats) uint64 { return s.RxMisdirected }},
	}
	for _, st := range steps {
		before := st.stat(r.b[1].Stats())
		st.write()
		pushRecord(t, evil, good) // after the garbage: arrives when the garbage was handled
		got := r.poll(1)
		if st.stat(r.b[1].Stats()) != before+1 {
			t.Errorf("%s: not counted: %+v", st.name, r.b[1].Stats())
		}
		// A bad record makes b skip all a published, the good frame
		// after it too; otherwise the good frame arrives alone.
		want := 1
		if st.name != "spoofed MAC" && st.name != "spoofed IP" && st.name != "for c" {
			want = 0
		}
		if len(got) != want || want == 1 && !bytes.Equal(got[0], good) {
			t.Errorf("%s: b got %d frames, want %d", st.name, len(got), want)
		}
	}
	// An impossible producer index: the ring is abandoned, c's still
	// works.
	l, _ := LaneLayout(3, MinSlots)
	prod, _ := ring.Uint32At(r.lanes[0], l.TxOffset(1))
	prod.Store(prod.Load() + MinSlots + 5)
	if err := r.send(2, udp(2, 1, 10)); err != nil {
		t.Fatal(err)
	}
	if got := r.poll(1); len(got) != 1 || !bytes.Equal(got[0], udp(2, 1, 10)) {
		t.Fatalf("c's frame: got %d", len(got))
	}
	if !r.b[1].arm() {
		t.Fatal("b finds something to do after the abandoned ring")
	}
	r.b[1].disarm()
	if s := r.b[1].Stats(); s.RingsBroken != 1 {
		t.Errorf("rings broken: %d", s.RingsBroken)
	}
	if err := r.send(2, udp(2, 1, 11)); err != nil {
		t.Fatal(err)
	}
	if got := r.poll(1); len(got) != 1 {
		t.Fatalf("c's frame after the abandoned ring: got %d", len(got))
	}
	// a's consumer index towards b goes impossible too: b's frames to a
	// are dropped and counted, its others go on.
	r2 := newRig(t, members(3), MinSlots, 0)
	cons, _ := ring.Uint32At(r2.lanes[0], l.RxOffset(1))
	cons.Store(12345)
	if err := r2.send(1, udp(1, 0, 10)); !errors.Is(err, ErrRingFull) {
		t.Fatalf("send to a corrupt ring: %v", err)
	}
	if s := r2.b[1].Stats(); s.TxRingCorrupt != 1 {
		t.Errorf("stats %+v", s)
	}
	if err := r2.send(1, udp(1, 2, 10)); err != nil {
		t.Fatal(err)
	}
}

// TestChecksum: a guest that did not accept partial checksums gets
// complete ones; one that did gets them as they were sent.
func TestChecksum(t *testing.T) {
	r := newRig(t, members(3), MinSlots)
	r.configure(1, vnet.FeatureMrgRxbuf)
	payload := make([]byte, 8+333) // odd length
	for i := range payload[8:] {
		payload[8+i] = byte(i*7 + 1)
	}
	binary.BigEndian.PutUint16(payload[0:], 5000)
	binary.BigEndian.PutUint16(payload[2:], 5001)
	binary.BigEndian.PutUint16(payload[4:], uint16(len(payload)))
	// The partial checksum: the pseudo-header's sum, as Linux leaves it.
	s, d := ips[0].As4(), ips[1].As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, 17, byte(len(payload)>>8), byte(len(payload)))
	binary.BigEndian.PutUint16(payload[6:], uint16(onesSum(pseudo)))
	h := vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 34, CsumOffset: 6}
	for _, to := range []int{1, 2} {
		p := packet(h, macs[to], macs[0], etherIPv4, ipv4(ips[0], ips[to], 17, payload))
		if to == 2 {
			d := ips[2].As4()
			pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, 17, byte(len(payload)>>8), byte(len(payload)))
			binary.BigEndian.PutUint16(p[vnet.HeaderLen+34+6:], uint16(onesSum(pseudo)))
		}
		if err := r.send(0, p); err != nil {
			t.Fatal(err)
		}
		got := r.poll(to)
		if len(got) != 1 {
			t.Fatalf("member %d got %d frames", to, len(got))
		}
		if to == 2 {
			if !bytes.Equal(got[0], p) {
				t.Error("a guest taking partial checksums got the frame changed")
			}
			continue
		}
		gh := vnet.DecodeHeader(got[0])
		udpSeg := got[0][vnet.HeaderLen+34:]
		if gh.Flags != 0 || onesSum(append(append([]byte{}, pseudo...), udpSeg...)) != 0xffff {
			t.Errorf("checksum not completed: flags %#x, sum %#x", gh.Flags, onesSum(append(pseudo, udpSeg...)))
		}
		if !bytes.Equal(got[0][vnet.HeaderLen:vnet.HeaderLen+34+6], p[vnet.HeaderLen:vnet.HeaderLen+34+6]) {
			t.Error("the frame changed before the checksum")
		}
	}
	if s := r.b[1].Stats(); s.RxChecksummed != 1 {
		t.Errorf("stats %+v", s)
	}
	// A checksum field outside the frame is left for the device to
	// refuse.
	bad := packet(vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 2000, CsumOffset: 6}, macs[1], macs[0], etherIPv4, ipv4(ips[0], ips[1], 17, payload))
	if completeChecksum(bad) {
		t.Error("a checksum outside the frame completed")
	}
}

// TestRun: the receive side sleeps on its doorbell with its rings armed
// and wakes for a frame; a busy receiver gets no doorbells.
func TestRun(t *testing.T) {
	r := newRig(t, members(3), MinSlots)
	for i := range 3 {
		r.run(i)
	}
	// Wait until b sleeps, its ring from a armed.
	l, _ := LaneLayout(3, MinSlots)
	armed, _ := ring.Uint32At(r.lanes[1][l.RxOffset(0):], queue.ArmedOffset)
	for armed.Load() == 0 {
		waitABit()
	}
	if err := r.send(0, udp(0, 1, 10)); err != nil {
		t.Fatal(err)
	}
	<-r.ports[1].got
	if s := r.b[0].Stats(); s.Doorbells != 1 {
		t.Errorf("doorbells: %d", s.Doorbells)
	}
	// Everyone to everyone, some broadcasts.
	const rounds = 200
	for k := range rounds {
		for i := range 3 {
			for j := range 3 {
				if i == j {
					continue
				}
				for {
					err := r.send(i, udp(i, j, k%300))
					if err == nil {
						break
					}
					if !errors.Is(err, ErrRingFull) {
						t.Fatal(err)
					}
					waitABit()
				}
			}
		}
	}
	for i := range 3 {
		for range 2 * rounds {
			<-r.ports[i].got
		}
	}
	for i := range 3 {
		if s := r.b[i].Stats(); s.RxDropped() != 0 {
			t.Errorf("member %d: %+v", i, s)
		}
	}
	if n := len(r.ports[1].take()); n != 2*rounds+1 {
		t.Errorf("b got %d frames", n)
	}
}
