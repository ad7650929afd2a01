// Package uplink is RainForest's rootless user-mode network for a subOS:
// a NAT built on gVisor's netstack (gvisor.dev/gvisor/pkg/tcpip), so that
// a guest on a workstation gets outbound network with no bridge, no TAP
// and no root configuration, as Podman machine's gvisor-tap-vsock,
// passt/pasta and slirp4netns give one.
//
// The guest's NIC is one netstack NIC whose frames come and go through a
// FrameConn (a SOCK_SEQPACKET socket from the VMM, one Ethernet frame a
// message). On its private subnet (10.0.2.0/24 by default, as slirp's)
// the uplink is the router, a DHCP server for the one guest address, and
// a DNS forwarder to the host's resolvers. The guest's TCP connections
// and UDP flows are terminated in the netstack and re-made from the
// host's own sockets; its ICMP echo requests go out through the host's
// unprivileged ping sockets where net.ipv4.ping_group_range allows them.
// Published host ports are listeners whose connections are made into the
// netstack to the guest's address.
//
// gvisor.dev/gvisor is the module the design names: its netstack is the
// user-space TCP/IP stack gVisor and gvisor-tap-vsock run in production,
// with forwarders for exactly this kind of NAT. It is used at a
// pseudo-version of gVisor's "go" branch, the branch published as a Go
// module.
//
// Everything from the guest is bounded: connections, flows, DNS queries
// and the rate of new ones (Limits); what is over a limit is dropped and
// counted (Stats). Close (or the end of Run) closes every listener,
// connection and flow and waits for every goroutine the uplink started.
//
// The package knows nothing of KVM or the VMM: a VMM hands it frames.
package uplink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"rainforest/internal/tokenbucket"
)

// ErrClosed is returned by Run on an uplink already closed or running.
var ErrClosed = errors.New("uplink: closed")

// nicID is the netstack's one NIC, the guest's link.
const nicID tcpip.NICID = 1

// The netstack's TCP buffer sizes, each way, of each connection.
const (
	tcpBufferDefault = 128 << 10
	tcpBufferMax     = 256 << 10
)

// Uplink is one guest's user-mode network. New binds its published ports,
// Run serves the guest's frames, Close releases everything.
type Uplink struct {
	cfg  Config // with its defaults
	stat counters
	st   *stack.Stack
	link *link

	// The addresses, in the netstack's form.
	mac                 tcpip.LinkAddress
	gateway, dns, guest tcpip.Address
	subnet              netip.Prefix
	subnetBcast         tcpip.Address

	// The limits.
	flowRate, frameRate          *tokenbucket.Bucket
	now                          func() time.Time // the buckets' clock
	tcpConns, udpFlows, dnsSlots semaphore

	// The services and flows.
	published             []*publishedPort
	dhcpConn, dnsConn     *gonet.UDPConn
	pings                 *pingTable
	openPing              func() (pingConn, error)
	pingUnavailableReason string // why pings are dropped; "" when forwarded
	pingDeniedLogged      atomic.Bool

	// The lifetime: ctx ends when Close begins; every goroutine of the
	// uplink's is counted in wg, every socket it holds is in closers.
	started   atomic.Bool
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	mu        sync.Mutex
	closed    bool
	closers   map[io.Closer]struct{}
	wg        sync.WaitGroup
}

// New builds the uplink's netstack, its DHCP server and DNS forwarder,
// and binds its published ports: a host port already in use is an error
// naming it (wrapping ErrPortInUse). Nothing runs until Run; Close
// releases an uplink that never runs.
func New(cfg Config) (*Uplink, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &Uplink{
		cfg:         cfg,
		mac:         tcpip.LinkAddress(cfg.MAC),
		gateway:     tcpip.AddrFrom4(cfg.Gateway.As4()),
		dns:         tcpip.AddrFrom4(cfg.DNS.As4()),
		guest:       tcpip.AddrFrom4(cfg.Guest.As4()),
		subnet:      cfg.Subnet,
		subnetBcast: tcpip.AddrFrom4(broadcast(cfg.Subnet).As4()),
		flowRate:    tokenbucket.New(cfg.Limits.NewFlows, time.Now()),
		frameRate:   tokenbucket.New(cfg.Limits.Frames, time.Now()),
		tcpConns:    newSemaphore(cfg.Limits.TCPConns),
		udpFlows:    newSemaphore(cfg.Limits.UDPFlows),
		dnsSlots:    newSemaphore(cfg.Limits.DNSQueries),
		ctx:         ctx,
		cancel:      cancel,
		closers:     map[io.Closer]struct{}{},
		openPing:    openHostPing,
		now:         time.Now,
	}
	u.pings = newPingTable()
	u.link = newLink(uint32(cfg.MTU), u.mac, cfg.Limits.TxQueue, &u.stat)
	if err := u.buildStack(); err != nil {
		cancel()
		return nil, err
	}
	if err := u.startServices(); err != nil {
		u.Close()
		return nil, err
	}
	for _, p := range cfg.Publish {
		pp, err := u.listen(p)
		if err != nil {
			u.Close()
			return nil, err
		}
		u.published = append(u.published, pp)
	}
	if c, err := u.openPing(); err != nil {
		u.pingUnavailableReason = pingDeniedReason(err)
	} else {
		c.Close()
	}
	return u, nil
}

// buildStack makes the netstack: IPv4 and ARP, TCP, UDP and ICMP, one
// NIC with the gateway's and the DNS forwarder's addresses, promiscuous
// (it takes packets for any destination, which the forwarders turn into
// host sockets) and spoofing (it answers from those destinations).
func (u *Uplink) buildStack() error {
	u.st = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	// Each forwarded connection's netstack buffers are bounded (gVisor's
	// defaults are a megabyte each way, growing), so that what a guest's
	// connections can hold is about Limits.TCPConns times 2*tcpBufferMax.
	sack := tcpip.TCPSACKEnabled(true)
	u.st.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: tcpBufferDefault, Max: tcpBufferMax}
	u.st.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: tcpBufferDefault, Max: tcpBufferMax}
	u.st.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	if err := u.st.CreateNIC(nicID, ethernet.New(u.link)); err != nil {
		return fmt.Errorf("uplink: netstack NIC: %s", err)
	}
	for _, a := range []tcpip.Address{u.gateway, u.dns} {
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: a, PrefixLen: u.subnet.Bits()},
		}
		if err := u.st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("uplink: netstack address %v: %s", a, err)
		}
	}
	u.st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	if err := u.st.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("uplink: netstack promiscuous mode: %s", err)
	}
	if err := u.st.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("uplink: netstack spoofing: %s", err)
	}
	tcpFwd := tcp.NewForwarder(u.st, tcpBufferDefault, u.cfg.Limits.TCPHandshakes, u.forwardTCP)
	u.st.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(u.st, u.forwardUDP)
	u.st.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	return nil
}

// startServices binds the DHCP server (port 67 of any address, taking
// broadcasts) and the DNS forwarder (port 53 of the DNS address) in the
// netstack; Run serves them.
func (u *Uplink) startServices() error {
	var err error
	if u.dhcpConn, err = u.bindUDP(tcpip.FullAddress{NIC: nicID, Port: dhcpServerPort}, true); err != nil {
		return fmt.Errorf("uplink: DHCP server: %w", err)
	}
	u.track(u.dhcpConn)
	if u.dnsConn, err = u.bindUDP(tcpip.FullAddress{NIC: nicID, Addr: u.dns, Port: 53}, false); err != nil {
		return fmt.Errorf("uplink: DNS forwarder: %w", err)
	}
	u.track(u.dnsConn)
	return nil
}

// Config returns the uplink's configuration with its defaults filled in
// (the nameservers it asks, its addresses).
func (u *Uplink) Config() Config { return u.cfg }

// Stats returns the uplink's counters.
func (u *Uplink) Stats() Stats { return u.stat.snapshot() }

// PingUnavailable returns why the guest's pings are dropped (the host
// forbids unprivileged ping sockets to this process), or "" when they are
// forwarded.
func (u *Uplink) PingUnavailable() string { return u.pingUnavailableReason }

// Run serves the guest on conn until ctx ends, conn's peer closes it or
// Close is called, then closes the uplink (conn included) and returns:
// nil for those ends, the error for a connection that failed. Run is
// called once.
func (u *Uplink) Run(ctx context.Context, conn FrameConn) error {
	if !u.started.CompareAndSwap(false, true) {
		conn.Close()
		return ErrClosed
	}
	if !u.track(conn) || !u.enter() {
		return ErrClosed
	}
	stop := context.AfterFunc(ctx, func() { u.Close() })
	defer stop()
	u.spawn(func() { u.writeLoop(conn) })
	u.spawn(func() { u.serveDHCP(u.dhcpConn) })
	u.spawn(func() { u.serveDNS(u.dnsConn) })
	for _, p := range u.published {
		u.spawn(p.serve)
	}
	u.cfg.Logger.Info("uplink running", "subnet", u.subnet, "gateway", u.cfg.Gateway, "guest", u.cfg.Guest,
		"dns", u.cfg.DNS, "nameservers", u.cfg.Nameservers, "published", len(u.published))
	if u.pingUnavailableReason != "" {
		u.cfg.Logger.Warn("uplink: the guest's pings will be dropped", "reason", u.pingUnavailableReason)
	}
	err := u.readLoop(conn)
	u.exit()
	u.Close()
	return err
}

// readLoop hands the guest's frames to the netstack until conn fails.
func (u *Uplink) readLoop(conn FrameConn) error {
	buf := make([]byte, u.cfg.MTU+header.EthernetMinimumSize+4) // room for a VLAN tag, which is then dropped
	for {
		n, err := conn.ReadFrame(buf)
		switch {
		case errors.Is(err, ErrFrameTooLong):
			u.stat.framesIn.Add(1)
			u.stat.dropOversize.Add(1)
			continue
		case err != nil:
			if u.ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, ErrPipeClosed) {
				return nil
			}
			return fmt.Errorf("uplink: reading frames: %w", err)
		}
		u.inbound(buf[:n])
	}
}

// writeLoop writes the frames queued for the guest until the uplink
// closes.
func (u *Uplink) writeLoop(conn FrameConn) {
	for {
		select {
		case <-u.ctx.Done():
			return
		case f := <-u.link.out:
			if err := conn.WriteFrame(f); err != nil {
				u.stat.dropTxError.Add(1)
				if u.ctx.Err() != nil {
					return
				}
				continue
			}
			u.stat.framesOut.Add(1)
			u.stat.bytesOut.Add(uint64(len(f)))
		}
	}
}

// inbound checks one frame from the guest and hands it on: ARP and IPv4
// for the stack, echo requests for the ping forwarder; anything else is
// dropped and counted.
func (u *Uplink) inbound(frame []byte) {
	u.stat.framesIn.Add(1)
	u.stat.bytesIn.Add(uint64(len(frame)))
	if u.frameRate.Take(u.now(), 1) > 0 {
		u.stat.dropRate.Add(1)
		return
	}
	if len(frame) < header.EthernetMinimumSize {
		u.stat.dropMalformed.Add(1)
		return
	}
	if len(frame) > u.cfg.MTU+header.EthernetMinimumSize {
		u.stat.dropOversize.Add(1)
		return
	}
	eth := header.Ethernet(frame)
	if dst := eth.DestinationAddress(); dst != u.mac && dst != header.EthernetBroadcastAddress {
		u.stat.dropNotForUs.Add(1)
		return
	}
	switch eth.Type() {
	case header.ARPProtocolNumber:
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(frame[header.EthernetMinimumSize:])
		if !ip.IsValid(len(ip)) {
			u.stat.dropMalformed.Add(1)
			return
		}
		if !u.sourceAllowed(ip) {
			u.stat.dropSpoofed.Add(1)
			return
		}
		if ip.TransportProtocol() == header.ICMPv4ProtocolNumber && !u.isLocal(ip.DestinationAddress()) {
			u.divertICMP(eth.SourceAddress(), ip)
			return
		}
	default:
		u.stat.dropProtocol.Add(1)
		return
	}
	u.link.deliver(frame)
}

// sourceAllowed reports whether ip comes from the guest's address, or
// from 0.0.0.0 to the DHCP server (a client with no address yet).
func (u *Uplink) sourceAllowed(ip header.IPv4) bool {
	src := ip.SourceAddress()
	if src == u.guest {
		return true
	}
	if src != header.IPv4Any || ip.TransportProtocol() != header.UDPProtocolNumber || ip.FragmentOffset() != 0 || ip.More() {
		return false
	}
	p := ip.Payload()
	return len(p) >= header.UDPMinimumSize && header.UDP(p).DestinationPort() == dhcpServerPort
}

// isLocal reports whether a is the netstack's own: the gateway, the DNS
// forwarder, or a broadcast address.
func (u *Uplink) isLocal(a tcpip.Address) bool {
	return a == u.gateway || a == u.dns || a == header.IPv4Broadcast || a == u.subnetBcast
}

// hostTarget maps a destination the guest asked for to the host address
// the uplink connects to, or says it is not forwarded: the uplink's own
// subnet (except the gateway, which is the host's loopback when
// HostLoopback is set, and the DNS forwarder's TCP port, which is the
// first nameserver), loopback, unspecified, multicast and broadcast
// addresses.
func (u *Uplink) hostTarget(dst tcpip.Address, port uint16, tcp bool) (netip.AddrPort, bool) {
	a, ok := netip.AddrFromSlice(dst.AsSlice())
	if !ok || !a.Is4() {
		return netip.AddrPort{}, false
	}
	switch {
	case a == u.cfg.DNS:
		if tcp && port == 53 && len(u.cfg.Nameservers) > 0 {
			return u.cfg.Nameservers[0], true
		}
		return netip.AddrPort{}, false
	case a == u.cfg.Gateway:
		if u.cfg.HostLoopback {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), true
		}
		return netip.AddrPort{}, false
	case u.subnet.Contains(a), a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}), port == 0:
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, port), true
}

// newFlowAllowed takes a token for a new connection or flow, counting a
// refusal.
func (u *Uplink) newFlowAllowed() bool {
	if u.flowRate.Take(u.now(), 1) > 0 {
		u.stat.dropFlowRate.Add(1)
		return false
	}
	return true
}

// enter registers a goroutine of the uplink's; false once it is closing.
func (u *Uplink) enter() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return false
	}
	u.wg.Add(1)
	return true
}

// exit ends what enter began.
func (u *Uplink) exit() { u.wg.Done() }

// spawn runs f on a goroutine Close waits for; false (f not run) once the
// uplink is closing.
func (u *Uplink) spawn(f func()) bool {
	if !u.enter() {
		return false
	}
	go func() {
		defer u.exit()
		f()
	}()
	return true
}

// track registers c to be closed by Close; once the uplink is closing it
// closes c at once and returns false.
func (u *Uplink) track(c io.Closer) bool {
	u.mu.Lock()
	if !u.closed {
		u.closers[c] = struct{}{}
		u.mu.Unlock()
		return true
	}
	u.mu.Unlock()
	c.Close()
	return false
}

// untrack closes c and forgets it.
func (u *Uplink) untrack(c io.Closer) {
	u.mu.Lock()
	delete(u.closers, c)
	u.mu.Unlock()
	c.Close()
}

// Close closes the uplink: its published ports' listeners, the frame
// connection, every forwarded connection and flow and the netstack. It
// returns once every goroutine the uplink started has, and may be called
// more than once and while Run runs.
func (u *Uplink) Close() error {
	u.closeOnce.Do(func() {
		u.mu.Lock()
		u.closed = true
		closers := u.closers
		u.closers = nil
		u.mu.Unlock()
		u.cancel()
		for c := range closers {
			c.Close()
		}
		for _, p := range u.published {
			p.close()
		}
		if u.st != nil {
			// Aborting the endpoints ends handshakes and reads in
			// progress; endpoints made meanwhile are aborted below.
			u.st.Close()
		}
		u.wg.Wait()
		if u.st != nil {
			for _, ep := range u.st.RegisteredEndpoints() {
				ep.Abort()
			}
			u.st.Wait()
		}
		u.cfg.Logger.Info("uplink closed", "stats", u.stat.snapshot())
	})
	return nil
}

// semaphore bounds how many of something exist at once.
type semaphore chan struct{}

func newSemaphore(n int) semaphore { return make(semaphore, n) }

// tryAcquire takes a slot if one is free.
func (s semaphore) tryAcquire() bool {
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

// release frees a slot taken by tryAcquire.
func (s semaphore) release() { <-s }
