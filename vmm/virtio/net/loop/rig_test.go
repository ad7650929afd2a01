package loop

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"rainforest/ficm/ring"
	"rainforest/vmm/eventfd"
	vnet "rainforest/vmm/virtio/net"
)

// The test network's members: a, b and c have IPv4 addresses.
var (
	macs  = []vnet.MAC{{0x02, 0, 0, 0, 0, 0xa}, {0x02, 0, 0, 0, 0, 0xb}, {0x02, 0, 0, 0, 0, 0xc}, {0x02, 0, 0, 0, 0, 0xd}}
	ips   = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}
	names = []string{"a", "b", "c", "d"}
	bcast = vnet.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// allFeatures is what a Linux driver accepts: every offload.
const allFeatures = vnet.OffloadFeatures | vnet.FeatureMrgRxbuf

// members returns n members, the first three with their IP addresses.
func members(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{Name: names[i], MAC: macs[i]}
		if i < len(ips) {
			ms[i].IP = ips[i]
		}
	}
	return ms
}

// port is a fake device: it keeps what it is given, and refuses what the
// device would (out of bounds, a header its driver did not accept).
type port struct {
	mu       sync.Mutex
	features uint64
	frames   [][]byte
	got      chan struct{} // a token per frame taken
	ready    chan struct{} // closed while the guest has buffers
	refuse   error
}

func newPort() *port {
	p := &port{features: allFeatures, got: make(chan struct{}, 1<<16), ready: make(chan struct{})}
	close(p.ready)
	return p
}

func (p *port) Receive(frame []byte) error {
	if p.refuse != nil {
		return p.refuse
	}
	if len(frame) < minPacket || len(frame) > vnet.MaxPacket {
		return vnet.ErrBadFrame
	}
	p.mu.Lock()
	if err := vnet.DecodeHeader(frame).CheckRx(p.features, len(frame)-vnet.HeaderLen); err != nil {
		p.mu.Unlock()
		return err
	}
	p.frames = append(p.frames, append([]byte(nil), frame...))
	p.mu.Unlock()
	p.got <- struct{}{}
	return nil
}

func (p *port) WaitRx(ctx context.Context) error {
	p.mu.Lock()
	ready := p.ready
	p.mu.Unlock()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take returns the frames received so far and forgets them.
func (p *port) take() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.frames
	p.frames = nil
	return f
}

// rig is a loop network in one process: its lanes in ordinary memory,
// real eventfds as doorbells.
type rig struct {
	t     *testing.T
	cfgs  []Config
	lanes [][]byte
	bells []*eventfd.EventFD
	b     []*Backend // nil for a member the test plays itself
	ports []*port
}

// newRig makes a network of ms with rings of slots slots and a backend
// for every member but those in raw.
func newRig(t *testing.T, ms []Member, slots int, raw ...int) *rig {
	t.Helper()
	l, err := LaneLayout(len(ms), slots)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t}
	for range ms {
		r.lanes = append(r.lanes, ring.AlignedBytes(l.SectionSize()))
		ev, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ev.Close() })
		r.bells = append(r.bells, ev)
	}
	for i := range ms {
		cfg := Config{Network: "test", Self: i, Members: ms, Slots: slots}
		r.cfgs = append(r.cfgs, cfg)
		r.ports = append(r.ports, newPort())
		skip := false
		for _, x := range raw {
			skip = skip || x == i
		}
		if skip {
			r.b = append(r.b, nil)
			continue
		}
		b, err := New(cfg, r.lanes, r.bells)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Configure(allFeatures); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		r.b = append(r.b, b)
	}
	return r
}

// configure has member i's driver accept features.
func (r *rig) configure(i int, features uint64) {
	r.t.Helper()
	r.ports[i].mu.Lock()
	r.ports[i].features = features
	r.ports[i].mu.Unlock()
	if err := r.b[i].Configure(features); err != nil {
		r.t.Fatal(err)
	}
}

// poll has member i take every frame waiting for it (synchronously) and
// returns what its guest got.
func (r *rig) poll(i int) [][]byte {
	r.t.Helper()
	for {
		n, err := r.b[i].poll(context.Background(), r.ports[i])
		if err != nil {
			r.t.Fatal(err)
		}
		if n == 0 {
			return r.ports[i].take()
		}
	}
}

// run runs member i's receive side until the test ends.
func (r *rig) run(i int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.b[i].Run(ctx, r.ports[i]) }()
	r.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("member %d: Run: %v", i, err)
		}
	})
}

// raw returns a producer of the ring from member from to member to, as a
// (malicious) VMM of from would write it.
func (r *rig) raw(from, to int) *ring.Producer {
	r.t.Helper()
	l, err := LaneLayout(len(r.lanes), r.cfgs[0].slots())
	if err != nil {
		r.t.Fatal(err)
	}
	tx, rx, err := l.QueueAreas(r.lanes, from, to)
	if err != nil {
		r.t.Fatal(err)
	}
	p, err := ring.NewProducer(tx, rx, l.Slots())
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// pushRecord puts a well-formed record of pkt on p.
func pushRecord(t *testing.T, p *ring.Producer, pkt []byte) {
	t.Helper()
	need := recordSlots(len(pkt))
	if n, err := p.Reserve(need); n != need || err != nil {
		t.Fatalf("reserve %d slots: %d, %v", need, n, err)
	}
	putRecordHeader(p.Slot(0), len(pkt))
	put(p, 0, pkt)
	p.Commit(need)
}

// send has member i send pkt cut in three pieces, as the device would
// (the header and Ethernet header first).
func (r *rig) send(i int, pkt []byte) error {
	if len(pkt) <= minPacket+1 {
		return r.b[i].Send([][]byte{pkt})
	}
	mid := minPacket + (len(pkt)-minPacket)/2
	return r.b[i].Send([][]byte{pkt[:minPacket], pkt[minPacket:mid], pkt[mid:]})
}

// Frame builders.

// packet is a virtio-net header then an Ethernet frame.
func packet(h vnet.Header, dst, src vnet.MAC, etherType uint16, body []byte) []byte {
	p := make([]byte, vnet.HeaderLen, vnet.HeaderLen+vnet.EthHeaderLen+len(body))
	h.Encode(p)
	p = append(p, dst[:]...)
	p = append(p, src[:]...)
	p = binary.BigEndian.AppendUint16(p, etherType)
	return append(p, body...)
}

// ipv4 is an IPv4 packet (header checksum included) of protocol proto.
func ipv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0], h[8], h[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], ^uint16(onesSum(h)))
	return append(h, payload...)
}

// arp is an Ethernet/IPv4 ARP message.
func arp(op uint16, sha vnet.MAC, spa netip.Addr, tha vnet.MAC, tpa netip.Addr) []byte {
	b := []byte{0, 1, 0x08, 0x00, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	s, t := spa.As4(), tpa.As4()
	b = append(append(b, sha[:]...), s[:]...)
	return append(append(b, tha[:]...), t[:]...)
}

// ipv6 is an IPv6 packet with next header next.
func ipv6(src, dst [16]byte, next byte, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0], h[6], h[7] = 0x60, next, 255
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	copy(h[8:], src[:])
	copy(h[24:], dst[:])
	return append(h, payload...)
}

// neighAdv is an ICMPv6 neighbour advertisement of target (checksum not
// computed: nothing here checks it).
func neighAdv(target [16]byte) []byte {
	b := make([]byte, 24)
	b[0] = icmp6NeighAdv
	copy(b[8:], target[:])
	return b
}

func ip4of(i int) netip.Addr { return ips[i] }
