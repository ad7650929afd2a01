package uplink

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// The DNS forwarder listens on the DNS address's UDP port 53 in the
// netstack and sends each query, as it is, to the nameservers in order
// from a host socket of its own, returning the first answer with the
// query's ID; when none answers within Limits.DNSTimeout each, the guest
// gets SERVFAIL. At most Limits.DNSQueries are in flight. TCP queries to
// port 53 are forwarded as connections to the first nameserver
// (hostTarget).

// dnsHeaderLen is a DNS message's fixed header.
const dnsHeaderLen = 12

// bindUDP makes a netstack UDP socket bound to addr.
func (u *Uplink) bindUDP(addr tcpip.FullAddress, broadcast bool) (*gonet.UDPConn, error) {
	var wq waiter.Queue
	ep, err := u.st.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if err != nil {
		return nil, errors.New(err.String())
	}
	ep.SocketOptions().SetBroadcast(broadcast)
	if err := ep.Bind(addr); err != nil {
		ep.Close()
		return nil, errors.New(err.String())
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

// serveDNS reads the guest's queries until the uplink closes.
func (u *Uplink) serveDNS(c *gonet.UDPConn) {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		q := buf[:n]
		to, ok := from.(*net.UDPAddr)
		if !ok || len(q) < dnsHeaderLen || q[2]&0x80 != 0 {
			u.stat.dropDNSBad.Add(1)
			continue
		}
		if !u.dnsSlots.tryAcquire() {
			u.stat.dropDNSLimit.Add(1)
			continue
		}
		query := slices.Clone(q)
		if !u.spawn(func() {
			defer u.dnsSlots.release()
			u.resolve(c, query, to)
		}) {
			u.dnsSlots.release()
			return
		}
	}
}

// resolve asks the nameservers in turn and writes the guest the first
// answer, or SERVFAIL.
func (u *Uplink) resolve(c *gonet.UDPConn, query []byte, to *net.UDPAddr) {
	u.stat.dnsQueries.Add(1)
	for _, ns := range u.cfg.Nameservers {
		if resp, err := u.ask(ns, query); err == nil {
			c.WriteTo(resp, to)
			return
		}
		if u.ctx.Err() != nil {
			return
		}
	}
	u.stat.dnsFailed.Add(1)
	c.WriteTo(servfail(query), to)
}

// ask sends query to ns and returns its answer: the first message back
// with the query's ID and the answer bit set.
func (u *Uplink) ask(ns netip.AddrPort, query []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(u.ctx, u.cfg.Limits.DNSTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", ns.String())
	if err != nil {
		return nil, err
	}
	if !u.track(c) {
		return nil, ErrClosed
	}
	defer u.untrack(c)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	buf := make([]byte, maxDatagram)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n >= dnsHeaderLen && buf[2]&0x80 != 0 && binary.BigEndian.Uint16(buf) == binary.BigEndian.Uint16(query) {
			return slices.Clone(buf[:n]), nil
		}
	}
}

// servfail returns the SERVFAIL answer to query: its ID, opcode and
// recursion-desired bit, and its question when it has exactly one that
// parses.
func servfail(query []byte) []byte {
	r := make([]byte, dnsHeaderLen, len(query))
	copy(r, query[:4])
	r[2] = 0x80 | query[2]&0x79 // QR, the opcode and RD
	r[3] = 0x80 | 2             // RA, RCODE SERVFAIL
	if binary.BigEndian.Uint16(query[4:]) != 1 {
		return r
	}
	end, ok := questionEnd(query)
	if !ok {
		return r
	}
	binary.BigEndian.PutUint16(r[4:], 1)
	return append(r, query[dnsHeaderLen:end]...)
}

// questionEnd returns where the first question of a DNS message ends: an
// uncompressed name then type and class.
func questionEnd(m []byte) (int, bool) {
	i := dnsHeaderLen
	for {
		if i >= len(m) {
			return 0, false
		}
		l := int(m[i])
		if l == 0 {
			i++
			break
		}
		if l&0xc0 != 0 {
			return 0, false
		}
		i += 1 + l
	}
	if i+4 > len(m) {
		return 0, false
	}
	return i + 4, true
}
