package netdev

// The source guard of a TAP NIC: what the guest transmits enters the host
// at the TAP's ingress, whether the VMM injects it or the host kernel's
// vhost-net does (which bypasses the VMM, and with it the VMM's own
// spoofing checks). A base chain on that ingress hook, before every
// other, drops and counts frames whose Ethernet source is not the NIC's
// MAC and, with an address lock, IPv4 and ARP frames that claim another
// address.
//
// The rules are nftables rules made through github.com/google/nftables,
// picked because it speaks nftables' netlink protocol itself (no `nft`
// binary on the host, no rule text to build and escape), and is well
// kept (Google's, used by Tailscale among others), where the other Go
// choices run the nft binary.
//
// The chains live in the kernel, so they keep working across a
// supervisor restart; the kernel drops a TAP's hook when the TAP goes
// (older kernels delete the chain with it, newer ones keep it without a
// device), and UnguardTAP deletes whatever is left.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// GuardTable is the nftables table (family netdev) of the TAP guards.
const GuardTable = "rainforest"

// Guard counter names (the rules' comments, and the keys GuardCounters
// returns).
const (
	CounterSpoofedMAC = "host_tx_spoofed_mac"
	CounterSpoofedIP  = "host_tx_spoofed_ip"
)

// guardPriority puts a guard's chain before every other on the ingress
// hook: one above the lowest priority there is (NF_IP_PRI_FIRST).
const guardPriority = nftables.ChainPriority(-1<<31 + 1)

// Ethernet types and header offsets the rules match.
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	ethSrcOffset  = 6  // link-layer header: destination (6), source (6)
	ipv4SrcOffset = 12 // network header: source address
	arpSHAOffset  = 8  // ARP for Ethernet/IPv4: sender hardware address
	arpSPAOffset  = 14 // ARP for Ethernet/IPv4: sender protocol address
)

// arpEthIPv4 is the first 6 bytes of an ARP packet for IPv4 over
// Ethernet: hardware type 1, protocol type 0x0800, lengths 6 and 4.
var arpEthIPv4 = []byte{0x00, 0x01, 0x08, 0x00, 6, 4}

// guardChainName is the name of TAP tap's guard chain.
func guardChainName(tap string) string { return "tap-" + tap }

// GuardRule is one rule of a guard chain: its expressions and the
// counter (name) it counts into.
type GuardRule struct {
	Counter string
	Exprs   []expr.Any
}

// GuardRules are the rules of the guard of a TAP NIC with MAC mac and,
// when ip is valid, the IPv4 address ip, in order:
//
//	ether saddr != MAC counter drop                          (spoofed MAC)
//	arp htype/ptype/hlen/plen != 1/ip/6/4 counter drop       (spoofed IP)
//	arp saddr ether != MAC counter drop                      (spoofed MAC)
//	arp saddr ip != IP, != 0.0.0.0 counter drop              (spoofed IP)
//	meta protocol ip, ip saddr != IP, != 0.0.0.0 counter drop (spoofed IP)
//
// The ARP and IPv4 rules come only with an address lock; 0.0.0.0 is left
// to DHCP and ARP probes.
func GuardRules(mac net.HardwareAddr, ip netip.Addr) ([]GuardRule, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("guard: MAC address %v: want 6 bytes", mac)
	}
	if ip.IsValid() && !ip.Is4() {
		return nil, fmt.Errorf("guard: address %s: want an IPv4 address", ip)
	}
	rules := []GuardRule{{CounterSpoofedMAC, concat(
		load(expr.PayloadBaseLLHeader, ethSrcOffset, 6), neq(mac), countDrop())}}
	if !ip.IsValid() {
		return rules, nil
	}
	a4 := ip.As4()
	zero := []byte{0, 0, 0, 0}
	rules = append(rules,
		GuardRule{CounterSpoofedIP, concat(isProtocol(etherTypeARP),
			load(expr.PayloadBaseNetworkHeader, 0, 6), neq(arpEthIPv4), countDrop())},
		GuardRule{CounterSpoofedMAC, concat(isProtocol(etherTypeARP),
			load(expr.PayloadBaseNetworkHeader, arpSHAOffset, 6), neq(mac), countDrop())},
		GuardRule{CounterSpoofedIP, concat(isProtocol(etherTypeARP),
			load(expr.PayloadBaseNetworkHeader, arpSPAOffset, 4), neq(a4[:]), neq(zero), countDrop())},
		GuardRule{CounterSpoofedIP, concat(isProtocol(etherTypeIPv4),
			load(expr.PayloadBaseNetworkHeader, ipv4SrcOffset, 4), neq(a4[:]), neq(zero), countDrop())},
	)
	return rules, nil
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// load loads n bytes at off of header base into register 1.
func load(base expr.PayloadBase, off, n uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n}}
}

// neq goes on only when register 1 is not data.
func neq(data []byte) []expr.Any {
	return []expr.Any{&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: append([]byte(nil), data...)}}
}

// isProtocol goes on only when the frame's protocol (its EtherType,
// past any VLAN tag the kernel took off) is proto.
func isProtocol(proto uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, proto)},
	}
}

func countDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

func guardTable() *nftables.Table {
	return &nftables.Table{Name: GuardTable, Family: nftables.TableFamilyNetdev}
}

// GuardTAP installs (or replaces) TAP tap's guard: frames it receives
// from its guest with another source than mac, and with ip valid IPv4
// and ARP frames with another source address than ip, are counted and
// dropped. The table is made when missing; other TAPs' chains are left
// as they are.
func GuardTAP(tap string, mac net.HardwareAddr, ip netip.Addr) error {
	if err := CheckName(tap); err != nil {
		return err
	}
	rules, err := GuardRules(mac, ip)
	if err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("guard %s: nftables: %w", tap, err)
	}
	name := guardChainName(tap)
	old, err := hasChain(c, name)
	if err != nil {
		return fmt.Errorf("guard %s: %w", tap, err)
	}
	t := c.AddTable(guardTable())
	if old {
		c.DelChain(&nftables.Chain{Table: t, Name: name})
	}
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityRef(guardPriority),
		Device: tap, Policy: &policy})
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.Exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.Counter)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("guard %s: install chain %s in netdev table %s (the host kernel needs nftables: modprobe nf_tables): %w", tap, name, GuardTable, err)
	}
	return nil
}

// UnguardTAP deletes TAP tap's guard chain; one that is gone already
// (the kernel deleted it with the TAP) is not an error.
func UnguardTAP(tap string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("unguard %s: nftables: %w", tap, err)
	}
	t := guardTable()
	name := guardChainName(tap)
	if ok, err := hasChain(c, name); err != nil || !ok {
		if err != nil {
			return fmt.Errorf("unguard %s: %w", tap, err)
		}
		return nil
	}
	c.DelChain(&nftables.Chain{Table: t, Name: name})
	if err := c.Flush(); err != nil && !isNotFound(err) {
		return fmt.Errorf("unguard %s: delete chain %s: %w", tap, name, err)
	}
	return nil
}

// GuardCounters returns TAP tap's guard counters (packets dropped, by
// counter name, every name present); ErrNoGuard when tap has no guard.
func GuardCounters(tap string) (map[string]uint64, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("guard counters %s: nftables: %w", tap, err)
	}
	t := guardTable()
	name := guardChainName(tap)
	if ok, err := hasChain(c, name); err != nil || !ok {
		if err != nil {
			return nil, fmt.Errorf("guard counters %s: %w", tap, err)
		}
		return nil, fmt.Errorf("%w: %s", ErrNoGuard, tap)
	}
	rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: name})
	if err != nil {
		return nil, fmt.Errorf("guard counters %s: %w", tap, err)
	}
	return sumCounters(rules), nil
}

// sumCounters adds rules' counters up by their comments (the counter
// names GuardRules gives).
func sumCounters(rules []*nftables.Rule) map[string]uint64 {
	out := map[string]uint64{CounterSpoofedMAC: 0}
	for _, r := range rules {
		name, ok := userdata.GetString(r.UserData, userdata.TypeComment)
		if !ok || !strings.HasPrefix(name, "host_") {
			continue
		}
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				out[name] += ctr.Packets
			}
		}
	}
	return out
}

// ErrNoGuard means a TAP has no guard chain.
var ErrNoGuard = errors.New("no guard on TAP")

// hasChain says whether the guard table has a chain called name (the
// library's single-chain lookup does not tell "none" from a failure).
func hasChain(c *nftables.Conn, name string) (bool, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return false, fmt.Errorf("list netdev chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == GuardTable && ch.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// isNotFound says whether err is the kernel's "no such table, chain or
// rule".
func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT)
}

// GuardTAP implements supervisor.Network: GuardTAP with the MAC parsed.
func (Host) GuardTAP(tap, mac string, ip netip.Addr) error {
	hw, err := ParseMAC(mac)
	if err != nil {
		return err
	}
	return GuardTAP(tap, hw, ip)
}

// UnguardTAP implements supervisor.Network.
func (Host) UnguardTAP(tap string) error { return UnguardTAP(tap) }

// GuardCounters implements supervisor.Network.
func (Host) GuardCounters(tap string) (map[string]uint64, error) { return GuardCounters(tap) }
