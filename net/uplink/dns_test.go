package uplink

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// dnsQuery is a query for name's A record with id.
func dnsQuery(id uint16, name string) []byte {
	q := []byte{byte(id >> 8), byte(id), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range bytes.Split([]byte(name), []byte(".")) {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

func TestServfail(t *testing.T) {
	q := dnsQuery(0x4242, "example.test")
	q = append(q, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0) // an OPT record after the question
	binary.BigEndian.PutUint16(q[10:], 1)
	r := servfail(q)
	if binary.BigEndian.Uint16(r) != 0x4242 || r[2] != 0x81 || r[3] != 0x82 {
		t.Errorf("header % x", r[:4])
	}
	if binary.BigEndian.Uint16(r[4:]) != 1 || binary.BigEndian.Uint16(r[10:]) != 0 || len(r) != len(dnsQuery(0, "example.test")) {
		t.Errorf("answer % x: want the question alone", r)
	}
	// A question that does not parse is left out.
	bad := dnsQuery(1, "example.test")[:15]
	if r := servfail(bad); len(r) != dnsHeaderLen || binary.BigEndian.Uint16(r[4:]) != 0 {
		t.Errorf("servfail of a cut question: % x", r)
	}
}

// The forwarder tries the nameservers in order, answers SERVFAIL when
// none does, and drops what is no query.
func TestDNSForwarder(t *testing.T) {
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close() // nothing there: the host says port unreachable
	mute, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close() // takes queries, never answers
	good := startFakeDNS(t)
	defer good.close()

	r := startRig(t, Config{
		Nameservers: []netip.AddrPort{deadAddr, good.addr()},
		Limits:      Limits{DNSTimeout: 50 * time.Millisecond},
	})
	defer func() { r.stop(t) }()
	c, err := r.guest.dialUDP(netip.AddrPortFrom(r.lease.dns, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(q []byte) []byte {
		t.Helper()
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	a := ask(dnsQuery(7, "example.test"))
	if binary.BigEndian.Uint16(a) != 7 || a[3]&0xf != 0 || binary.BigEndian.Uint16(a[6:]) != 1 {
		t.Errorf("answer through the second nameserver: % x", a)
	}
	// A message with the answer bit set is no query: dropped. The query
	// after it is answered.
	notQuery := dnsQuery(8, "example.test")
	notQuery[2] |= 0x80
	c.Write(notQuery)
	if a := ask(dnsQuery(9, "example.test")); binary.BigEndian.Uint16(a) != 9 {
		t.Errorf("answer % x, want id 9", a)
	}
	if s := r.u.Stats(); s.DropDNSBad != 1 || s.DNSQueries != 2 {
		t.Errorf("stats %+v: want one bad message, two queries", s)
	}

	// Nameservers that do not answer: SERVFAIL.
	r.stop(t)
	r = startRig(t, Config{
		Nameservers: []netip.AddrPort{mute.LocalAddr().(*net.UDPAddr).AddrPort()},
		Limits:      Limits{DNSTimeout: 50 * time.Millisecond},
	})
	c2, err := r.guest.dialUDP(netip.AddrPortFrom(r.lease.dns, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c = c2
	if a := ask(dnsQuery(10, "example.test")); binary.BigEndian.Uint16(a) != 10 || a[3]&0xf != 2 {
		t.Errorf("answer % x, want SERVFAIL", a)
	}
	if s := r.u.Stats(); s.DNSFailed != 1 {
		t.Errorf("DNSFailed %d, want 1", s.DNSFailed)
	}
}
