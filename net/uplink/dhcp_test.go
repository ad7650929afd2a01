package uplink

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// testDHCPServer is the server of the default subnet.
var testDHCPServer = dhcpServer{
	server: netip.MustParseAddr("10.0.2.2"), dns: netip.MustParseAddr("10.0.2.3"),
	guest: netip.MustParseAddr("10.0.2.15"), mask: netip.MustParseAddr("255.255.255.0"),
	bcast: netip.MustParseAddr("10.0.2.255"), lease: time.Hour, mtu: 1500,
}

// clientMessage is a client's message of type typ with extra options.
func clientMessage(typ byte, opts ...dhcpOption) dhcpMessage {
	m := dhcpMessage{op: 1, htype: 1, hlen: 6, xid: 0xfeedf00d, chaddr: [16]byte{0x52, 0x54, 0, 1, 2, 3}}
	m.options = append([]dhcpOption{{optMessageType, []byte{typ}}}, opts...)
	return m
}

// dhcpSeeds are well-formed and malformed messages for the fuzz target.
func dhcpSeeds() [][]byte {
	ip := func(s string) []byte { a := netip.MustParseAddr(s).As4(); return a[:] }
	disc := clientMessage(dhcpDiscover, dhcpOption{55, []byte{1, 3, 6, 26, 28, 51}})
	req := clientMessage(dhcpRequest, dhcpOption{optRequestedIP, ip("10.0.2.15")}, dhcpOption{optServerID, ip("10.0.2.2")})
	inform := clientMessage(dhcpInform)
	inform.ciaddr = [4]byte{10, 0, 2, 15}
	long := clientMessage(dhcpDiscover, dhcpOption{60, bytes.Repeat([]byte("v"), 400)})
	truncated := disc.marshal()
	truncated = append(truncated[:dhcpFixedLen+4], optRequestedIP, 200, 1, 2)
	return [][]byte{disc.marshal(), req.marshal(), inform.marshal(), long.marshal(), truncated, make([]byte, 10)}
}

func TestDHCPRoundTrip(t *testing.T) {
	for i, b := range dhcpSeeds()[:4] {
		m, err := parseDHCP(b)
		if err != nil {
			t.Fatalf("seed %d: %v", i, err)
		}
		again, err := parseDHCP(m.marshal())
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Errorf("seed %d: %v then %v (%v)", i, m, again, err)
		}
		if len(m.marshal()) < dhcpMinLen {
			t.Errorf("seed %d: %d bytes, want at least %d", i, len(m.marshal()), dhcpMinLen)
		}
	}
	// An option over 255 bytes is split on the wire and joined again.
	m, _ := parseDHCP(dhcpSeeds()[3])
	if o := m.option(60); o == nil || len(*o) != 400 {
		t.Errorf("long option not joined: %v", o)
	}
}

func TestDHCPParseErrors(t *testing.T) {
	good := clientMessage(dhcpDiscover).marshal()
	badCookie := bytes.Clone(good)
	badCookie[dhcpFixedLen] = 0
	longHW := bytes.Clone(good)
	longHW[2] = 17
	for name, c := range map[string]struct {
		b    []byte
		want error
	}{
		"short":    {good[:100], errDHCPShort},
		"cookie":   {badCookie, errDHCPCookie},
		"hlen":     {longHW, errDHCPHLen},
		"overflow": {dhcpSeeds()[4], errDHCPOption},
	} {
		if _, err := parseDHCP(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

func TestDHCPReplies(t *testing.T) {
	ip := func(s string) []byte { a := netip.MustParseAddr(s).As4(); return a[:] }
	s := testDHCPServer
	offer := s.reply(clientMessage(dhcpDiscover))
	if offer == nil || offer.messageType() != dhcpOffer || netip.AddrFrom4(offer.yiaddr) != s.guest || offer.xid != 0xfeedf00d {
		t.Fatalf("DISCOVER answered %v", offer)
	}
	for code, want := range map[byte]string{optRouter: "10.0.2.2", optDNS: "10.0.2.3", optSubnetMask: "255.255.255.0",
		optServerID: "10.0.2.2", optBroadcast: "10.0.2.255"} {
		if a, ok := offer.addr(code); !ok || a.String() != want {
			t.Errorf("option %d is %v, want %s", code, a, want)
		}
	}
	if o := offer.option(optLeaseTime); o == nil || !bytes.Equal(*o, []byte{0, 0, 0x0e, 0x10}) {
		t.Errorf("lease option %v, want 3600 s", o)
	}
	cases := []struct {
		name string
		m    dhcpMessage
		want byte // 0: no answer
	}{
		{"request", clientMessage(dhcpRequest, dhcpOption{optRequestedIP, ip("10.0.2.15")}, dhcpOption{optServerID, ip("10.0.2.2")}), dhcpAck},
		{"request-other-address", clientMessage(dhcpRequest, dhcpOption{optRequestedIP, ip("10.0.2.16")}), dhcpNak},
		{"request-other-server", clientMessage(dhcpRequest, dhcpOption{optRequestedIP, ip("10.0.2.15")}, dhcpOption{optServerID, ip("10.0.2.9")}), 0},
		{"renew-by-ciaddr", func() dhcpMessage {
			m := clientMessage(dhcpRequest)
			m.ciaddr = [4]byte{10, 0, 2, 15}
			return m
		}(), dhcpAck},
		{"inform", clientMessage(dhcpInform), dhcpAck},
		{"release", clientMessage(dhcpRelease), 0},
		{"no-type", dhcpMessage{op: 1}, 0},
		{"a-reply", func() dhcpMessage { m := clientMessage(dhcpDiscover); m.op = 2; return m }(), 0},
	}
	for _, c := range cases {
		r := s.reply(c.m)
		switch {
		case c.want == 0 && r != nil:
			t.Errorf("%s: answered %v", c.name, r)
		case c.want != 0 && (r == nil || r.messageType() != c.want):
			t.Errorf("%s: answered %v, want type %d", c.name, r, c.want)
		}
	}
	if r := s.reply(clientMessage(dhcpInform)); r.yiaddr != [4]byte{} || r.option(optLeaseTime) != nil {
		t.Errorf("INFORM answered with an address or a lease: %v", r)
	}
}

// FuzzParseDHCP: whatever a guest sends, parsing does not panic, what
// parses encodes and parses back the same, and the server's answer to it
// encodes to a message that parses.
func FuzzParseDHCP(f *testing.F) {
	for _, s := range dhcpSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDHCP(b)
		if err != nil {
			return
		}
		again, err := parseDHCP(m.marshal())
		if err != nil {
			t.Fatalf("re-parsing: %v", err)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip: %#v became %#v", m, again)
		}
		if r := testDHCPServer.reply(m); r != nil {
			if _, err := parseDHCP(r.marshal()); err != nil {
				t.Fatalf("answer does not parse: %v", err)
			}
		}
	})
}
