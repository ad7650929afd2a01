package uplink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// guestMAC is the test guest's Ethernet address.
var guestMAC = tcpip.LinkAddress("\x52\x54\x00\x12\x34\x56")

// testGuest is a gVisor netstack standing in for the subOS: one NIC on a
// channel endpoint whose frames are pumped to and from a FrameConn.
type testGuest struct {
	st     *stack.Stack
	ch     *channel.Endpoint
	conn   FrameConn
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// lease is what the test's DHCP client was given.
type lease struct {
	addr, router, dns, mask netip.Addr
	mtu                     uint16
}

// startGuest brings up the guest's stack with the leased address and a
// default route through the leased router.
func startGuest(t *testing.T, conn FrameConn, l lease) *testGuest {
	t.Helper()
	g := &testGuest{conn: conn}
	g.st = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	g.ch = channel.New(256, uint32(l.mtu), guestMAC)
	if err := g.st.CreateNIC(1, ethernet.New(g.ch)); err != nil {
		t.Fatalf("guest NIC: %s", err)
	}
	ones, _ := net.IPMask(l.mask.AsSlice()).Size()
	if err := g.st.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(l.addr.As4()), PrefixLen: ones},
	}, stack.AddressProperties{}); err != nil {
		t.Fatalf("guest address: %s", err)
	}
	subnet := netip.PrefixFrom(l.addr, ones).Masked()
	sn, err := tcpip.NewSubnet(tcpip.AddrFrom4(subnet.Addr().As4()), tcpip.MaskFromBytes(l.mask.AsSlice()))
	if err != nil {
		t.Fatal(err)
	}
	g.st.SetRouteTable([]tcpip.Route{
		{Destination: sn, NIC: 1},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(l.router.As4()), NIC: 1},
	})
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.wg.Add(2)
	go func() { // guest -> uplink
		defer g.wg.Done()
		for {
			pkt := g.ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			var b []byte
			for _, s := range pkt.AsSlices() {
				b = append(b, s...)
			}
			pkt.DecRef()
			if conn.WriteFrame(b) != nil {
				return
			}
		}
	}()
	go func() { // uplink -> guest
		defer g.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := conn.ReadFrame(buf)
			if err != nil {
				return
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(buf[:n])})
			g.ch.InjectInbound(header.IPv4ProtocolNumber, pkt)
			pkt.DecRef()
		}
	}()
	return g
}

// close stops the guest's pumps and its stack.
func (g *testGuest) close() {
	g.cancel()
	g.conn.Close()
	g.wg.Wait()
	g.st.Close()
	g.st.Wait()
}

// dialTCP connects from the guest.
func (g *testGuest) dialTCP(ctx context.Context, to netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, g.st, fullAddr(to), ipv4.ProtocolNumber)
}

// dialUDP opens a connected UDP socket in the guest.
func (g *testGuest) dialUDP(to netip.AddrPort) (*gonet.UDPConn, error) {
	a := fullAddr(to)
	return gonet.DialUDP(g.st, nil, &a, ipv4.ProtocolNumber)
}

func fullAddr(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a.Addr().As4()), Port: a.Port()}
}

// ping sends one echo request with data from the guest to dst and waits
// for the reply, returning its data.
func (g *testGuest) ping(ctx context.Context, dst netip.Addr, seq uint16, data []byte) ([]byte, error) {
	var wq waiter.Queue
	ep, terr := g.st.NewEndpoint(icmp.ProtocolNumber4, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	defer ep.Close()
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	req := make([]byte, header.ICMPv4MinimumSize+len(data))
	msg := header.ICMPv4(req)
	msg.SetType(header.ICMPv4Echo)
	msg.SetSequence(seq)
	copy(req[header.ICMPv4MinimumSize:], data)
	to := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.As4())}
	if _, terr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{To: &to}); terr != nil {
		return nil, errors.New(terr.String())
	}
	for {
		var out bytes.Buffer
		_, terr := ep.Read(&out, tcpip.ReadOptions{})
		if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if terr != nil {
			return nil, errors.New(terr.String())
		}
		r := header.ICMPv4(out.Bytes())
		if len(r) < header.ICMPv4MinimumSize || r.Type() != header.ICMPv4EchoReply || r.Sequence() != seq {
			continue
		}
		return append([]byte(nil), r.Payload()...), nil
	}
}

// dhcpClient acquires a lease over conn with raw frames, as a guest's
// DHCP client does before it has an address: DISCOVER, OFFER, REQUEST,
// ACK.
func dhcpClient(t *testing.T, conn FrameConn) lease {
	t.Helper()
	const xid = 0x1234abcd
	disc := dhcpMessage{op: 1, htype: 1, hlen: 6, xid: xid, flags: 0x8000}
	copy(disc.chaddr[:], guestMAC)
	disc.options = []dhcpOption{{optMessageType, []byte{dhcpDiscover}}, {55, []byte{1, 3, 6, 26}}}
	if err := conn.WriteFrame(dhcpFrame(disc.marshal())); err != nil {
		t.Fatal(err)
	}
	offer := readDHCP(t, conn, xid)
	if offer.messageType() != dhcpOffer {
		t.Fatalf("answer to DISCOVER: %v, want an OFFER", offer)
	}
	sid, _ := offer.addr(optServerID)
	req := dhcpMessage{op: 1, htype: 1, hlen: 6, xid: xid, flags: 0x8000}
	copy(req.chaddr[:], guestMAC)
	ya := netip.AddrFrom4(offer.yiaddr).As4()
	sa := sid.As4()
	req.options = []dhcpOption{{optMessageType, []byte{dhcpRequest}}, {optRequestedIP, ya[:]}, {optServerID, sa[:]}}
	if err := conn.WriteFrame(dhcpFrame(req.marshal())); err != nil {
		t.Fatal(err)
	}
	ack := readDHCP(t, conn, xid)
	if ack.messageType() != dhcpAck {
		t.Fatalf("answer to REQUEST: %v, want an ACK", ack)
	}
	var l lease
	l.addr = netip.AddrFrom4(ack.yiaddr)
	l.router, _ = ack.addr(optRouter)
	l.dns, _ = ack.addr(optDNS)
	l.mask, _ = ack.addr(optSubnetMask)
	if o := ack.option(optMTU); o != nil && len(*o) == 2 {
		l.mtu = binary.BigEndian.Uint16(*o)
	}
	return l
}

// dhcpFrame wraps a DHCP message from 0.0.0.0:68 to 255.255.255.255:67
// in UDP, IPv4 and a broadcast Ethernet frame from guestMAC.
func dhcpFrame(msg []byte) []byte {
	return udpFrame(header.EthernetBroadcastAddress, header.IPv4Any, header.IPv4Broadcast, dhcpClientPort, dhcpServerPort, msg)
}

// udpFrame builds an Ethernet frame from guestMAC with one UDP datagram
// (no UDP checksum).
func udpFrame(dstMAC tcpip.LinkAddress, src, dst tcpip.Address, sport, dport uint16, payload []byte) []byte {
	const off = header.EthernetMinimumSize + header.IPv4MinimumSize + header.UDPMinimumSize
	f := make([]byte, off+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: guestMAC, DstAddr: dstMAC, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(f) - header.EthernetMinimumSize), TTL: 64,
		Protocol: uint8(header.UDPProtocolNumber), SrcAddr: src, DstAddr: dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	header.UDP(f[header.EthernetMinimumSize+header.IPv4MinimumSize:]).Encode(&header.UDPFields{
		SrcPort: sport, DstPort: dport, Length: uint16(header.UDPMinimumSize + len(payload)),
	})
	copy(f[off:], payload)
	return f
}

// readDHCP reads frames until a DHCP answer with xid, skipping others.
func readDHCP(t *testing.T, conn FrameConn, xid uint32) dhcpMessage {
	t.Helper()
	buf := make([]byte, 65536)
	for {
		n, err := conn.ReadFrame(buf)
		if err != nil {
			t.Fatalf("reading the DHCP answer: %v", err)
		}
		f := buf[:n]
		if len(f) < header.EthernetMinimumSize || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
			continue
		}
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.UDPProtocolNumber {
			continue
		}
		u := header.UDP(ip.Payload())
		if len(u) < header.UDPMinimumSize || u.DestinationPort() != dhcpClientPort {
			continue
		}
		m, err := parseDHCP(u.Payload())
		if err != nil || m.xid != xid || m.op != 2 {
			continue
		}
		return m
	}
}
