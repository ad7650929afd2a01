package uplink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// The DHCP server (RFC 2131) leases the one guest address to whichever
// client asks: DISCOVER is answered with an OFFER, a REQUEST for the
// guest address (and this server, when it names one) with an ACK, a
// REQUEST for anything else with a NAK, an INFORM with an ACK carrying
// the options only. Every answer is broadcast to port 68, which a client
// with no address yet receives. The options are the netmask, router, DNS
// server, broadcast address, MTU and lease times.

// DHCP ports.
const (
	dhcpServerPort = 67
	dhcpClientPort = 68
)

// DHCP message types (option 53).
const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpDecline  = 4
	dhcpAck      = 5
	dhcpNak      = 6
	dhcpRelease  = 7
	dhcpInform   = 8
)

// DHCP options.
const (
	optPad         = 0
	optSubnetMask  = 1
	optRouter      = 3
	optDNS         = 6
	optMTU         = 26
	optBroadcast   = 28
	optRequestedIP = 50
	optLeaseTime   = 51
	optMessageType = 53
	optServerID    = 54
	optMessage     = 56
	optRenewal     = 58
	optRebinding   = 59
	optEnd         = 255
)

// dhcpFixedLen is a message's fixed part (op to file); the magic cookie
// follows it, then the options.
const dhcpFixedLen = 236

// dhcpMinLen is the shortest message sent: BOOTP's 300 bytes, which some
// clients still require.
const dhcpMinLen = 300

// dhcpCookie is the magic cookie (99.130.83.99) before the options.
const dhcpCookie = "\x63\x82\x53\x63"

// Errors of parseDHCP.
var (
	errDHCPShort  = errors.New("dhcp: message too short")
	errDHCPCookie = errors.New("dhcp: no magic cookie")
	errDHCPOption = errors.New("dhcp: option runs past the message")
	errDHCPHLen   = errors.New("dhcp: hardware address longer than 16 bytes")
)

// dhcpMessage is a DHCP message. The sname and file fields are not kept
// (option overload is not supported).
type dhcpMessage struct {
	op, htype, hlen, hops          byte
	xid                            uint32
	secs, flags                    uint16
	ciaddr, yiaddr, siaddr, giaddr [4]byte
	chaddr                         [16]byte
	// options in the order first seen; an option given more than once is
	// their concatenation (RFC 3396).
	options []dhcpOption
}

// dhcpOption is one option's code and data.
type dhcpOption struct {
	code byte
	data []byte
}

// parseDHCP reads a DHCP message. It copies what it keeps.
func parseDHCP(b []byte) (dhcpMessage, error) {
	var m dhcpMessage
	if len(b) < dhcpFixedLen+len(dhcpCookie) {
		return m, errDHCPShort
	}
	m.op, m.htype, m.hlen, m.hops = b[0], b[1], b[2], b[3]
	if m.hlen > 16 {
		return m, errDHCPHLen
	}
	m.xid = binary.BigEndian.Uint32(b[4:])
	m.secs = binary.BigEndian.Uint16(b[8:])
	m.flags = binary.BigEndian.Uint16(b[10:])
	copy(m.ciaddr[:], b[12:16])
	copy(m.yiaddr[:], b[16:20])
	copy(m.siaddr[:], b[20:24])
	copy(m.giaddr[:], b[24:28])
	copy(m.chaddr[:], b[28:44])
	if string(b[dhcpFixedLen:dhcpFixedLen+4]) != dhcpCookie {
		return m, errDHCPCookie
	}
	opts := b[dhcpFixedLen+4:]
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == optEnd {
			break
		}
		if code == optPad {
			i++
			continue
		}
		if i+2 > len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return m, errDHCPOption
		}
		data := opts[i+2 : i+2+int(opts[i+1])]
		i += 2 + len(data)
		if o := m.option(code); o != nil {
			*o = append(*o, data...)
			continue
		}
		m.options = append(m.options, dhcpOption{code: code, data: append([]byte{}, data...)})
	}
	return m, nil
}

// option returns a pointer to the data of option code, nil when absent.
func (m *dhcpMessage) option(code byte) *[]byte {
	for i := range m.options {
		if m.options[i].code == code {
			return &m.options[i].data
		}
	}
	return nil
}

// messageType returns option 53, 0 when absent or malformed.
func (m *dhcpMessage) messageType() byte {
	if o := m.option(optMessageType); o != nil && len(*o) == 1 {
		return (*o)[0]
	}
	return 0
}

// addr returns an option holding one IPv4 address.
func (m *dhcpMessage) addr(code byte) (netip.Addr, bool) {
	if o := m.option(code); o != nil && len(*o) == 4 {
		return netip.AddrFrom4([4]byte(*o)), true
	}
	return netip.Addr{}, false
}

// marshal encodes m, splitting options longer than 255 bytes (RFC 3396)
// and padding to dhcpMinLen.
func (m dhcpMessage) marshal() []byte {
	b := make([]byte, dhcpFixedLen, dhcpMinLen)
	b[0], b[1], b[2], b[3] = m.op, m.htype, m.hlen, m.hops
	binary.BigEndian.PutUint32(b[4:], m.xid)
	binary.BigEndian.PutUint16(b[8:], m.secs)
	binary.BigEndian.PutUint16(b[10:], m.flags)
	copy(b[12:], m.ciaddr[:])
	copy(b[16:], m.yiaddr[:])
	copy(b[20:], m.siaddr[:])
	copy(b[24:], m.giaddr[:])
	copy(b[28:], m.chaddr[:])
	b = append(b, dhcpCookie...)
	for _, o := range m.options {
		data := o.data
		for {
			n := min(len(data), 255)
			b = append(b, o.code, byte(n))
			b = append(b, data[:n]...)
			data = data[n:]
			if len(data) == 0 {
				break
			}
		}
	}
	b = append(b, optEnd)
	for len(b) < dhcpMinLen {
		b = append(b, optPad)
	}
	return b
}

// dhcpServer answers DHCP for the one guest address.
type dhcpServer struct {
	server, dns, guest, mask, bcast netip.Addr
	lease                           time.Duration
	mtu                             int
}

func (u *Uplink) dhcpServer() dhcpServer {
	return dhcpServer{
		server: u.cfg.Gateway, dns: u.cfg.DNS, guest: u.cfg.Guest,
		mask: netmask(u.cfg.Subnet), bcast: broadcast(u.cfg.Subnet),
		lease: u.cfg.Lease, mtu: u.cfg.MTU,
	}
}

// reply returns the answer to m, nil for none.
func (s dhcpServer) reply(m dhcpMessage) *dhcpMessage {
	if m.op != 1 {
		return nil
	}
	var typ byte
	yiaddr := s.guest
	switch m.messageType() {
	case dhcpDiscover:
		typ = dhcpOffer
	case dhcpRequest:
		if id, ok := m.addr(optServerID); ok && id != s.server {
			return nil // the client chose another server
		}
		want, ok := m.addr(optRequestedIP)
		if !ok {
			want = netip.AddrFrom4(m.ciaddr) // renewing or rebinding
		}
		typ = dhcpAck
		if want != s.guest {
			typ = dhcpNak
		}
	case dhcpInform:
		typ = dhcpAck
		yiaddr = netip.AddrFrom4([4]byte{})
	default:
		return nil
	}
	r := &dhcpMessage{
		op: 2, htype: m.htype, hlen: m.hlen, xid: m.xid, flags: m.flags,
		giaddr: m.giaddr, chaddr: m.chaddr,
	}
	a4 := func(a netip.Addr) []byte { b := a.As4(); return b[:] }
	u32 := func(d time.Duration) []byte { return binary.BigEndian.AppendUint32(nil, uint32(d/time.Second)) }
	r.options = append(r.options, dhcpOption{optMessageType, []byte{typ}}, dhcpOption{optServerID, a4(s.server)})
	if typ == dhcpNak {
		r.options = append(r.options, dhcpOption{optMessage, []byte("the uplink leases " + s.guest.String() + " only")})
		return r
	}
	if m.messageType() == dhcpInform {
		r.ciaddr = m.ciaddr
	} else {
		r.yiaddr = yiaddr.As4()
		r.options = append(r.options,
			dhcpOption{optLeaseTime, u32(s.lease)},
			dhcpOption{optRenewal, u32(s.lease / 2)},
			dhcpOption{optRebinding, u32(s.lease * 7 / 8)})
	}
	r.options = append(r.options,
		dhcpOption{optSubnetMask, a4(s.mask)},
		dhcpOption{optRouter, a4(s.server)},
		dhcpOption{optDNS, a4(s.dns)},
		dhcpOption{optBroadcast, a4(s.bcast)},
		dhcpOption{optMTU, binary.BigEndian.AppendUint16(nil, uint16(s.mtu))})
	return r
}

// serveDHCP answers the guest's DHCP messages until the uplink closes.
// One message is answered at a time, on this goroutine.
func (u *Uplink) serveDHCP(c *gonet.UDPConn) {
	s := u.dhcpServer()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpClientPort}
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := parseDHCP(buf[:n])
		if err != nil {
			u.stat.dropDHCPBad.Add(1)
			continue
		}
		r := s.reply(m)
		if r == nil {
			continue
		}
		if _, err := c.WriteTo(r.marshal(), bcast); err != nil {
			u.cfg.Logger.Debug("uplink: DHCP reply not sent", "err", err)
			continue
		}
		if r.messageType() == dhcpAck && m.messageType() == dhcpRequest {
			u.stat.dhcpAcks.Add(1)
			u.cfg.Logger.Info("uplink: DHCP lease", "guest", s.guest, "mac", net.HardwareAddr(m.chaddr[:min(int(m.hlen), 16)]).String())
		}
	}
}

// String describes m for test failures.
func (m dhcpMessage) String() string {
	return fmt.Sprintf("dhcp op %d type %d xid %#x yiaddr %v", m.op, m.messageType(), m.xid, netip.AddrFrom4(m.yiaddr))
}
