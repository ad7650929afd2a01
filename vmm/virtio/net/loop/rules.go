package loop

import (
	"encoding/binary"

	vnet "rainforest/vmm/virtio/net"
)

// verdict is what the source rules say of a frame.
type verdict uint8

const (
	allowed    verdict = iota
	spoofedMAC         // Ethernet source or ARP sender hardware address not the member's
	spoofedIP          // an IP address not the member's
	blocked            // a kind of frame the member may not send, or a malformed header
)

// EtherTypes, IP protocols and ICMPv6 types the rules look at.
const (
	etherIPv4  = 0x0800
	etherARP   = 0x0806
	etherIPv6  = 0x86DD
	etherVLAN  = 0x8100
	etherQinQ  = 0x88A8
	etherVLAN2 = 0x9100

	ip6HopByHop     = 0
	ip6Routing      = 43
	ip6DestOpts     = 60
	ip6ICMP         = 58
	icmp6NeighAdv   = 136
	maxIPv6ExtHdrs  = 4
	ipv4HeaderLen   = 20
	ipv6HeaderLen   = 40
	arpIPv4Len      = 28
	neighAdvTargetE = 24 // end of a neighbour advertisement's target address
)

// ruleMember is a member's addresses as the rules use them.
type ruleMember struct {
	mac    vnet.MAC
	locked bool     // it has an IPv4 address
	ip4    [4]byte  // that address
	ll6    [16]byte // its IPv6 link-local address
}

// rules are a loop network's source rules (see the package
// documentation), the same on the sending and the receiving side.
type rules struct{ members []ruleMember }

func newRules(ms []Member) *rules {
	r := &rules{members: make([]ruleMember, len(ms))}
	for i, m := range ms {
		rm := ruleMember{mac: m.MAC, locked: m.IP.IsValid(), ll6: linkLocal(m.MAC)}
		if rm.locked {
			rm.ip4 = m.IP.As4()
		}
		r.members[i] = rm
	}
	return r
}

// linkLocal is the IPv6 link-local address of mac: fe80::/64 and its
// modified EUI-64.
func linkLocal(mac vnet.MAC) [16]byte {
	return [16]byte{0: 0xfe, 1: 0x80, 8: mac[0] ^ 2, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]}
}

// check says whether member from may send eth, the start of an Ethernet
// frame (its first inspectLen bytes at most: a header reaching beyond is
// blocked).
func (r *rules) check(from int, eth []byte) verdict {
	if len(eth) < vnet.EthHeaderLen {
		return blocked
	}
	m := &r.members[from]
	if vnet.MAC(eth[6:12]) != m.mac {
		return spoofedMAC
	}
	body := eth[vnet.EthHeaderLen:]
	switch binary.BigEndian.Uint16(eth[12:14]) {
	case etherIPv4:
		if len(body) < ipv4HeaderLen || body[0]>>4 != 4 {
			return blocked
		}
		if !r.ip4OK(from, [4]byte(body[12:16])) {
			return spoofedIP
		}
	case etherARP:
		// Ethernet and IPv4 only: hardware type 1, protocol IPv4, sizes 6
		// and 4.
		if len(body) < arpIPv4Len || binary.BigEndian.Uint16(body[0:]) != 1 || binary.BigEndian.Uint16(body[2:]) != etherIPv4 ||
			body[4] != 6 || body[5] != 4 {
			return blocked
		}
		if vnet.MAC(body[8:14]) != m.mac {
			return spoofedMAC
		}
		if spa := [4]byte(body[14:18]); spa != [4]byte{} && !r.ip4OK(from, spa) {
			return spoofedIP
		}
	case etherIPv6:
		return r.checkIPv6(from, body)
	case etherVLAN, etherQinQ, etherVLAN2:
		return blocked
	default:
		if m.locked {
			return blocked
		}
	}
	return allowed
}

// checkIPv6 checks an IPv6 packet's source and, for a neighbour
// advertisement, its target.
func (r *rules) checkIPv6(from int, ip []byte) verdict {
	if len(ip) < ipv6HeaderLen || ip[0]>>4 != 6 {
		return blocked
	}
	if !r.ip6OK(from, [16]byte(ip[8:24]), true) {
		return spoofedIP
	}
	next, off := ip[6], ipv6HeaderLen
	for range maxIPv6ExtHdrs {
		if next != ip6HopByHop && next != ip6Routing && next != ip6DestOpts {
			break
		}
		if off+2 > len(ip) {
			return blocked
		}
		next, off = ip[off], off+(int(ip[off+1])+1)*8
	}
	switch next {
	case ip6HopByHop, ip6Routing, ip6DestOpts:
		return blocked // more extension headers than the rules follow
	case ip6ICMP:
		if off+1 > len(ip) {
			return blocked
		}
		if ip[off] == icmp6NeighAdv {
			if off+neighAdvTargetE > len(ip) {
				return blocked
			}
			if !r.ip6OK(from, [16]byte(ip[off+8:off+neighAdvTargetE]), false) {
				return spoofedIP
			}
		}
	}
	return allowed
}

// ip4OK says whether member from may use IPv4 address a as a source: its
// own when it has one; otherwise any that is no other member's.
func (r *rules) ip4OK(from int, a [4]byte) bool {
	if m := &r.members[from]; m.locked {
		return a == m.ip4
	}
	for i := range r.members {
		if i != from && r.members[i].locked && r.members[i].ip4 == a {
			return false
		}
	}
	return true
}

// ip6OK says whether member from may use IPv6 address a as a source (or,
// unspecified not allowed, advertise it): the unspecified address when
// allowed; its link-local address when it has an IPv4 address; otherwise
// any that is no other member's link-local address.
func (r *rules) ip6OK(from int, a [16]byte, unspecified bool) bool {
	if a == ([16]byte{}) {
		return unspecified
	}
	if m := &r.members[from]; m.locked {
		return a == m.ll6
	}
	for i := range r.members {
		if i != from && r.members[i].ll6 == a {
			return false
		}
	}
	return true
}
