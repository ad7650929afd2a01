// Package loop is RFloop, the virtio-net backend (net.Backend) of a loop
// network: an Ethernet segment between the subOSes of one host whose
// frames go from one VMM to another through shared memory, with no host
// kernel network stack and no supervisor on the path. To its guest it is
// an ordinary NIC (checksum and segmentation offloads included).
//
// # Topology
//
// A loop network has 2 to MaxMembers members, numbered in the order of
// the member table every member's VMM is given (the same table in each).
// There is one ficm/ring ring per ordered pair of members: single
// producer, single consumer, as ficm/ring requires (it has no safe
// multi-producer mode, and a ring of its own per sender also tells the
// receiver who wrote each frame, which lets it check the sender's
// addresses again, below). Member i owns one lane: a memory area laid out
// as a FICM output section (ficm/endpoint's Layout, with Slots-slot
// rings), holding the producer side (index and slots) of its rings to
// every other member and the consumer side (index and armed word, see
// ficm/queue) of every ring towards it. Member i's VMM maps its own lane
// read-write and the other lanes read-only (the supervisor hands it the
// others as read-only descriptors, so the kernel enforces it): a VMM
// writes only its own memory, as in a FICM group.
//
// Each lane is a region of its own (rfm/region: a sealed memfd, hugetlb
// when the pool has pages, and one eventfd), its lane being the region's
// output section (LaneRegion); the region's eventfd is the member's
// doorbell. Every member's VMM gets every member's doorbell: it waits on
// its own and signals the others'. See rfm/loopnet for the supervisor's
// side.
//
// # Records (ABI)
//
// A frame is one record of consecutive slots in a ring: a header slot,
//
//	[0, 4)  u32 RecordMagic, host byte order (little-endian on x86-64)
//	[4, 8)  u32 n: the packet's length, net.HeaderLen+net.EthHeaderLen..net.MaxPacket
//	[8, 64) zero
//
// then ceil(n/64) slots holding the packet: its 12-byte virtio_net_hdr
// and the Ethernet frame, as the device hands frames to a backend, so
// the offloads pass through. A producer publishes a record whole (one
// index update); Slots is at least MinSlots, so the largest record fits.
//
// # Doorbells
//
// The receiver polls its rings while frames come (and a few rounds more,
// yielding, once they stop), and sleeps only after arming every ring
// towards it (the armed word and protocol of ficm/queue: store armed,
// re-check the producer index, sleep on the doorbell, disarm); a sender
// signals the receiver's doorbell after publishing a record only when
// that ring is armed. A busy receiver costs its senders no system call,
// and an idle one makes no wake-ups of its own.
//
// # Switching and anti-spoofing
//
// A frame goes to the member whose MAC is its destination, or, broadcast
// or multicast, to every other member; a unicast frame for no member is
// dropped. A member sends only from its own MAC; when it has an IP
// address (IPv4) it is "IP-locked": its IPv4 frames carry that source,
// its ARP frames that sender address (or 0.0.0.0, a probe) and its own MAC
// as sender hardware address, its IPv6 frames the unspecified address or
// its link-local address (fe80::/64, modified EUI-64 of its MAC) as source
// and as the target of a neighbour advertisement, and it sends no other
// EtherType. A member without an address may send any EtherType, but no
// IPv4 source, ARP sender or IPv6 source or advertised target that is
// another member's (its IPv4 address, its link-local address). VLAN-tagged
// frames are dropped for everyone: they would carry an unchecked inner
// frame. Global IPv6 addresses are not checked against any list: an
// IP-locked member cannot use them, a member without an address can use
// any that no other member owns.
//
// # Trust
//
// Guests are untrusted, and so is every other member's VMM: the sender's
// checks run on a private copy of the headers, which is what goes on the
// ring (the guest cannot change them after the check), and the receiver
// copies every record out of its peer's lane before looking at it and
// checks it all again: magic and length bounds (a record that lies makes
// the receiver skip everything that peer has published), the sender's
// address rules for that ring's member, the destination, and the virtio
// header (the device's CheckRx). A producer index out of its bounds
// abandons that ring for good (counted, logged once); the other rings go
// on. Sending never waits: a frame whose ring is full is dropped and
// counted, so a receiver that does not drain cannot stall a sender's
// vCPU or transmit goroutine. The receiver takes at most RxBatch frames a
// round, at most peerQuota from each ring in turn, so a flooding member
// cannot starve the others, and it takes a frame only once the guest has
// buffers for one (net.Port.WaitRx): while it has none, frames wait in
// the rings and the senders drop what no longer fits. Every drop is
// counted by reason (Stats).
//
// Offloads: the backend carries them all. A frame with a partial
// checksum for a guest that did not accept GUEST_CSUM has its checksum
// completed here; one of a segmentation type the guest did not accept is
// refused by the device and counted.
package loop

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/internal/fdwait"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/shmem/abi"
	vnet "rainforest/vmm/virtio/net"
)

// Limits and defaults.
const (
	// MaxMembers bounds a loop network's members: every member holds a
	// ring to each other, and a VMM two descriptors per member.
	MaxMembers = 16
	// MinSlots is the smallest ring: it holds the record of the largest
	// packet (1 + ceil(net.MaxPacket/64) = 1026 slots).
	MinSlots = 2048
	// MaxSlots bounds a ring (4 MiB).
	MaxSlots = 1 << 16
	// DefaultSlots is a ring's slot count when the configuration gives
	// none: 512 KiB, some 7 segmentation-offload packets of 64 KiB or
	// 330 of 1514 bytes.
	DefaultSlots = 8192
	// RxBatch bounds the frames the receiver hands the guest in one round
	// before it yields.
	RxBatch = 64
	// RecordMagic starts every record's header slot ("RFLP").
	RecordMagic = 0x504c4652

	// peerQuota bounds the frames taken from one ring in a round.
	peerQuota = 16
	// pollRounds is how many empty rounds (each after a yield) the
	// receiver makes before it arms the rings and sleeps.
	pollRounds = 8
	// minPacket is the shortest packet: a header and an Ethernet header.
	minPacket = vnet.HeaderLen + vnet.EthHeaderLen
	// inspectLen is how much of an Ethernet frame the address rules read:
	// every header they look at lies within it.
	inspectLen = 256
)

// Errors.
var (
	// ErrConfig: a loop network or member configuration is invalid.
	ErrConfig = errors.New("loop: invalid configuration")
	// ErrTooFewMembers: a loop network of fewer than two members.
	ErrTooFewMembers = errors.New("loop: a loop network needs at least two members")
	// ErrFrameSize: a frame shorter than a header and an Ethernet header
	// or longer than net.MaxPacket.
	ErrFrameSize = errors.New("loop: frame size out of bounds")
	// ErrSpoofed: a frame with a source (MAC, IP address) that is not
	// the member's, or of a kind it may not send.
	ErrSpoofed = errors.New("loop: frame refused by the source rules")
	// ErrUnknownDest: a unicast frame to no member.
	ErrUnknownDest = errors.New("loop: no member has the destination MAC")
	// ErrRingFull: the destination's ring (every destination's, for a
	// broadcast) had no room for the frame, or its consumer index was
	// impossible (Stats tell which).
	ErrRingFull = errors.New("loop: ring full")
)

// Member is one member of a loop network.
type Member struct {
	// Name is the member's subOS name (in logs).
	Name string
	// MAC is its address: unicast, not zero, unique in the network.
	MAC vnet.MAC
	// IP is its IPv4 address, or the zero Addr for none (see the package
	// documentation for what an address changes).
	IP netip.Addr
}

// Config is one member's view of its loop network.
type Config struct {
	// Network names the loop network (in logs).
	Network string
	// Self is this member's index in Members.
	Self int
	// Members are all the members, this one included, in the network's
	// order (the same in every member's configuration).
	Members []Member
	// Slots is every ring's slot count (0: DefaultSlots), a power of two
	// from MinSlots to MaxSlots, the same in every member's configuration.
	Slots int
	// Logger hears of rings abandoned after a peer corrupted them.
	Logger *slog.Logger
}

// slots returns the slot count, the default filled in.
func (c Config) slots() int {
	if c.Slots == 0 {
		return DefaultSlots
	}
	return c.Slots
}

// Validate checks c. Errors wrap ErrConfig or ErrTooFewMembers.
func (c Config) Validate() error {
	switch n := len(c.Members); {
	case n < 2:
		return fmt.Errorf("%w: loop network %q has %d member(s)", ErrTooFewMembers, c.Network, n)
	case n > MaxMembers:
		return fmt.Errorf("%w: loop network %q has %d members, at most %d", ErrConfig, c.Network, n, MaxMembers)
	case c.Self < 0 || c.Self >= n:
		return fmt.Errorf("%w: self %d of %d members", ErrConfig, c.Self, n)
	}
	if err := CheckSlots(c.slots()); err != nil {
		return err
	}
	macs := map[vnet.MAC]int{}
	ips := map[netip.Addr]int{}
	for i, m := range c.Members {
		if m.MAC == (vnet.MAC{}) || m.MAC[0]&1 != 0 {
			return fmt.Errorf("%w: member %d (%s): MAC %s is zero or multicast", ErrConfig, i, m.Name, m.MAC)
		}
		if j, dup := macs[m.MAC]; dup {
			return fmt.Errorf("%w: members %d and %d have the same MAC %s", ErrConfig, j, i, m.MAC)
		}
		macs[m.MAC] = i
		if !m.IP.IsValid() {
			continue
		}
		if err := CheckIP(m.IP); err != nil {
			return fmt.Errorf("member %d (%s): %w", i, m.Name, err)
		}
		if j, dup := ips[m.IP]; dup {
			return fmt.Errorf("%w: members %d and %d have the same IP %s", ErrConfig, j, i, m.IP)
		}
		ips[m.IP] = i
	}
	return nil
}

// CheckSlots reports whether slots is a valid ring size: a power of two
// from MinSlots to MaxSlots. Errors wrap ErrConfig.
func CheckSlots(slots int) error {
	if slots < MinSlots || slots > MaxSlots || slots&(slots-1) != 0 {
		return fmt.Errorf("%w: %d slots per ring, want a power of two from %d to %d", ErrConfig, slots, MinSlots, MaxSlots)
	}
	return nil
}

// CheckIP reports whether a is an address a member may have: a unicast
// IPv4 address (not 0.0.0.0, multicast or the limited broadcast). Errors
// wrap ErrConfig.
func CheckIP(a netip.Addr) error {
	if !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("%w: IP %s is not a unicast IPv4 address", ErrConfig, a)
	}
	return nil
}

// LaneLayout is the layout of every member's lane in a network of members
// members with rings of slots slots.
func LaneLayout(members, slots int) (endpoint.Layout, error) {
	if err := CheckSlots(slots); err != nil {
		return endpoint.Layout{}, err
	}
	if members < 2 || members > MaxMembers {
		return endpoint.Layout{}, fmt.Errorf("%w: %d members, want 2 to %d", ErrConfig, members, MaxMembers)
	}
	return endpoint.NewLayout(members, slots)
}

// LaneRegion is the layout of the shared-memory region (rfm/region) that
// holds one lane: one peer, whose output section is the lane, at
// LaneRegion(...).OutputOffset(0) in the region's memory.
func LaneRegion(members, slots int) (abi.Layout, error) {
	l, err := LaneLayout(members, slots)
	if err != nil {
		return abi.Layout{}, err
	}
	return abi.Layout{Peers: 1, OutputSize: uint64(l.SectionSize())}, nil
}

// peer is another member as this one sees it.
type peer struct {
	idx  int
	name string
	mac  vnet.MAC
	out  *ring.Producer   // this member -> peer
	in   *ring.Consumer   // peer -> this member
	arm  *atomic.Uint32   // the armed word of in (this member's memory)
	sink *atomic.Uint32   // the armed word of out (the peer's memory, untrusted)
	bell *eventfd.EventFD // the peer's doorbell
	// broken: in was abandoned (Run's goroutine only).
	broken bool
	// txWarned: a corrupt consumer index of out was logged (Send only).
	txWarned bool
}

// counters are the backend's Stats.
type counters struct {
	txFrames, txBytes, rxFrames, rxBytes                     atomic.Uint64
	txBadSize, txSpoofedMAC, txSpoofedIP, txBlocked          atomic.Uint64
	txUnknownDest, txRingFull, txRingCorrupt, doorbells      atomic.Uint64
	rxSpoofed, rxMisdirected, rxBadRecord, rxRefused, rxCsum atomic.Uint64
	ringsBroken                                              atomic.Uint64
}

// Stats are a member's counters since New.
type Stats struct {
	// TxFrames and TxBytes count frames put on a peer's ring (a broadcast
	// once per peer) and their bytes after the header; RxFrames and
	// RxBytes frames the guest took.
	TxFrames, TxBytes, RxFrames, RxBytes uint64

	TxBadSize     uint64 // shorter than a header and an Ethernet header, or longer than net.MaxPacket
	TxSpoofedMAC  uint64 // an Ethernet source (or ARP sender hardware address) not this member's
	TxSpoofedIP   uint64 // an IPv4 source, ARP sender, IPv6 source or advertised target not this member's
	TxBlocked     uint64 // a kind of frame the member may not send (VLAN, malformed IP or ARP header, other EtherTypes when IP-locked)
	TxUnknownDest uint64 // unicast to no member
	TxRingFull    uint64 // a destination's ring had no room (per destination)
	TxRingCorrupt uint64 // a destination's consumer index was impossible (per destination)
	Doorbells     uint64 // doorbells rung

	RxSpoofed     uint64 // frames a peer sent against its source rules (its VMM broke them)
	RxMisdirected uint64 // unicast frames for another MAC
	RxBadRecord   uint64 // records with a bad magic or length (that ring's published records skipped)
	RxRefused     uint64 // frames the device refused (its counters say why)
	RxChecksummed uint64 // partial checksums completed for a guest without GUEST_CSUM
	RingsBroken   uint64 // rings towards this member abandoned after their producer index went impossible
}

// TxDropped is the count of frames the backend dropped on the way out
// (per destination for ring full and ring corrupt).
func (s Stats) TxDropped() uint64 {
	return s.TxBadSize + s.TxSpoofedMAC + s.TxSpoofedIP + s.TxBlocked + s.TxUnknownDest + s.TxRingFull + s.TxRingCorrupt
}

// RxDropped is the count of frames from peers that did not reach the
// guest (a skipped run of bad records counts once).
func (s Stats) RxDropped() uint64 {
	return s.RxSpoofed + s.RxMisdirected + s.RxBadRecord + s.RxRefused
}

// Backend is one member's end of a loop network.
type Backend struct {
	network  string
	self     int
	mac      vnet.MAC
	rules    *rules
	peers    []*peer // in member order, this member left out
	byMAC    map[vnet.MAC]*peer
	bell     *eventfd.EventFD // this member's doorbell
	waiter   *fdwait.Waiter
	log      *slog.Logger
	features atomic.Uint64
	c        counters
	release  func() error // what Open mapped and was given
	closed   sync.Once
	closeErr error

	// txMu guards the transmit side (the device calls Send from its
	// transmit goroutine only; the lock makes other callers safe).
	txMu   sync.Mutex
	txWin  [vnet.HeaderLen + inspectLen]byte
	txDest []*peer
	txHeld []*peer

	// The receive side belongs to Run's goroutine.
	next  int
	rxBuf []byte
}

var _ vnet.Backend = (*Backend)(nil)

// New returns member cfg.Self's backend on memory the caller maps and
// keeps mapped until Close: lanes[i] is member i's lane (this member's
// writable, at least LaneLayout's SectionSize bytes, 64-byte aligned) and
// bells[i] member i's doorbell, a non-blocking eventfd the caller keeps
// owning. Open maps the lanes from descriptors.
func New(cfg Config, lanes [][]byte, bells []*eventfd.EventFD) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := len(cfg.Members)
	if len(lanes) != n || len(bells) != n {
		return nil, fmt.Errorf("%w: %d lanes and %d doorbells for %d members", ErrConfig, len(lanes), len(bells), n)
	}
	l, err := LaneLayout(n, cfg.slots())
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	waiter, err := fdwait.New()
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	b := &Backend{
		network: cfg.Network, self: cfg.Self, mac: cfg.Members[cfg.Self].MAC, rules: newRules(cfg.Members),
		byMAC: map[vnet.MAC]*peer{}, bell: bells[cfg.Self], waiter: waiter, log: log,
		rxBuf: make([]byte, vnet.MaxPacket),
	}
	for i, m := range cfg.Members {
		if i == cfg.Self {
			continue
		}
		p := &peer{idx: i, name: m.Name, mac: m.MAC, bell: bells[i]}
		if err := b.rings(l, lanes, p); err != nil {
			waiter.Close()
			return nil, fmt.Errorf("loop %s: member %d (%s): %w", cfg.Network, i, m.Name, err)
		}
		p.arm.Store(0)
		b.peers = append(b.peers, p)
		b.byMAC[m.MAC] = p
	}
	return b, nil
}

// rings sets up p's two rings in the lanes.
func (b *Backend) rings(l endpoint.Layout, lanes [][]byte, p *peer) error {
	tx, rx, err := l.QueueAreas(lanes, b.self, p.idx)
	if err != nil {
		return err
	}
	if p.out, err = ring.NewProducer(tx, rx, l.Slots()); err != nil {
		return err
	}
	if p.sink, err = ring.Uint32At(rx, queue.ArmedOffset); err != nil {
		return err
	}
	if tx, rx, err = l.QueueAreas(lanes, p.idx, b.self); err != nil {
		return err
	}
	if p.in, err = ring.NewConsumer(tx, rx, l.Slots()); err != nil {
		return err
	}
	p.arm, err = ring.Uint32At(rx, queue.ArmedOffset)
	return err
}

// Stats returns the counters.
func (b *Backend) Stats() Stats {
	c := &b.c
	return Stats{
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(), RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxBadSize: c.txBadSize.Load(), TxSpoofedMAC: c.txSpoofedMAC.Load(), TxSpoofedIP: c.txSpoofedIP.Load(),
		TxBlocked: c.txBlocked.Load(), TxUnknownDest: c.txUnknownDest.Load(), TxRingFull: c.txRingFull.Load(),
		TxRingCorrupt: c.txRingCorrupt.Load(), Doorbells: c.doorbells.Load(),
		RxSpoofed: c.rxSpoofed.Load(), RxMisdirected: c.rxMisdirected.Load(), RxBadRecord: c.rxBadRecord.Load(),
		RxRefused: c.rxRefused.Load(), RxChecksummed: c.rxCsum.Load(), RingsBroken: c.ringsBroken.Load(),
	}
}

// Offloads implements net.Backend: frames keep their headers end to end,
// so every offload passes (see the package documentation).
func (b *Backend) Offloads() uint64 { return vnet.OffloadFeatures }

// Configure implements net.Backend: it records what the driver accepted,
// for the frames it receives.
func (b *Backend) Configure(features uint64) error {
	b.features.Store(features)
	return nil
}

// Close implements net.Backend: it releases the waiter, and what Open
// mapped and was given.
func (b *Backend) Close() error {
	b.closed.Do(func() {
		err := b.waiter.Close()
		if b.release != nil {
			err = errors.Join(err, b.release())
		}
		b.closeErr = err
	})
	return b.closeErr
}

// Counters are s as named counters (snake_case, for reports, prefixed
// loop_ beside the device's own): only the ones that are not zero, and
// the totals loop_tx_dropped and loop_rx_dropped.
func (s Stats) Counters() map[string]uint64 {
	m := map[string]uint64{
		"tx_frames": s.TxFrames, "tx_bytes": s.TxBytes, "rx_frames": s.RxFrames, "rx_bytes": s.RxBytes,
		"tx_bad_size": s.TxBadSize, "tx_spoofed_mac": s.TxSpoofedMAC, "tx_spoofed_ip": s.TxSpoofedIP,
		"tx_blocked": s.TxBlocked, "tx_unknown_dest": s.TxUnknownDest, "tx_ring_full": s.TxRingFull,
		"tx_ring_corrupt": s.TxRingCorrupt, "doorbells": s.Doorbells,
		"rx_spoofed": s.RxSpoofed, "rx_misdirected": s.RxMisdirected, "rx_bad_record": s.RxBadRecord,
		"rx_refused": s.RxRefused, "rx_checksummed": s.RxChecksummed, "rings_broken": s.RingsBroken,
		"tx_dropped": s.TxDropped(), "rx_dropped": s.RxDropped(),
	}
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out["loop_"+k] = v
		}
	}
	return out
}
