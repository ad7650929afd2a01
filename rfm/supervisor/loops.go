package supervisor

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"rainforest/ficm/board"
	"rainforest/ledger"
	"rainforest/rfm/loopnet"
	"rainforest/vmm/config"
	"rainforest/vmm/virtio/net/loop"
)

// Loop networks (RFloop). A NIC with Loop set is a member's port on a
// loop network: an Ethernet segment between subOSes whose frames go from
// VMM to VMM through shared memory (vmm/virtio/net/loop), with no host
// network stack and no supervisor on the path. A network's members are
// fixed when it is made, by its first member's create (every member's
// NIC names them all, LoopMembers; a later member may leave them out):
// each member's lane and doorbell exist from then on, so members may
// start in any order and a member destroyed and created again resumes on
// the same lanes. The supervisor holds the lanes (rfm/loopnet) until the
// last member is gone.
//
// Addresses are fixed too, so that the VMMs can hold every member to its
// own (the anti-spoofing rules of vmm/virtio/net/loop): member k (in the
// members' order) has the MAC loopnet.MemberMAC(network, k) and the IPv4
// address k+2 of the network's subnet (LoopSubnet, DefaultLoopSubnet when
// unset), which the guest is told on its command line (rf.addr=, see
// addrCmdline; the images configure the NIC with that MAC).
//
// A restarted supervisor does not get the lanes back: the members that
// run keep their network (the VMMs hold the lanes), but a member cannot
// be created again on it until every member is gone (nicProblems says
// so).

// DefaultLoopSubnet is a loop network's IPv4 subnet when its NICs name
// none: member k gets 10.99.0.(k+2).
const DefaultLoopSubnet = "10.99.0.0/24"

// loopNet is a loop network the supervisor made (Supervisor.loops, under
// mu; made and closed under opMu).
type loopNet struct {
	net     *loopnet.Network
	members []string
	subnet  string
}

// loopSubnet returns n's subnet, the default when unset.
func loopSubnet(n NIC) string {
	if n.LoopSubnet == "" {
		return DefaultLoopSubnet
	}
	return n.LoopSubnet
}

// loopMemberAddr returns member k's address on a loop network of subnet
// p (a valid IPv4 prefix with room for k): host k+2.
func loopMemberAddr(p netip.Prefix, k int) netip.Prefix {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(k) + 2
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits())
}

// loopTable is the member table of the loop network n names (its
// LoopMembers and subnet; check with loopProblems first).
func loopTable(n NIC) ([]loopnet.Member, error) {
	p, err := netip.ParsePrefix(loopSubnet(n))
	if err != nil {
		return nil, err
	}
	var out []loopnet.Member
	for k, m := range n.LoopMembers {
		out = append(out, loopnet.Member{Name: m, MAC: loopnet.MemberMAC(n.Loop, k), IP: loopMemberAddr(p, k).Addr().String()})
	}
	return out, nil
}

// withLoopMembers fills in the members of spec's loop NICs that leave
// them out from the networks the supervisor holds.
func (s *Supervisor) withLoopMembers(spec Spec) Spec {
	var nets []NIC
	for _, n := range spec.Nets {
		if ln := s.loopNet(n.Loop); n.Loop != "" && len(n.LoopMembers) == 0 && ln != nil {
			n.LoopMembers = slices.Clone(ln.members)
			if n.LoopSubnet == "" && ln.subnet != DefaultLoopSubnet {
				n.LoopSubnet = ln.subnet
			}
		}
		nets = append(nets, n)
	}
	spec.Nets = nets
	return spec
}

// loopNet returns the loop network called name, nil when the supervisor
// holds none.
func (s *Supervisor) loopNet(name string) *loopNet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loops[name]
}

// loopMembersRunning lists the subOSes but except with a NIC on loop
// network name.
func (s *Supervisor) loopMembersRunning(name, except string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n, so := range s.subos {
		if n != except && slices.ContainsFunc(so.info.Spec.Nets, func(c NIC) bool { return c.Loop == name }) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// loopProblems lists what is wrong with loop NIC i of subOS name, n
// (members filled in by withLoopMembers): its network's members (2 to
// loop.MaxMembers distinct subOS names, name among them), its subnet,
// and the network the supervisor holds under that name.
func (s *Supervisor) loopProblems(name string, i int, n NIC) []ledger.Problem {
	var probs []ledger.Problem
	add := func(field, format string, args ...any) {
		probs = append(probs, ledger.Problem{Field: fmt.Sprintf("nets[%d].%s", i, field), Message: fmt.Sprintf(format, args...)})
	}
	if n.Bridge != "" || n.TAP != "" || n.User || len(n.Publish) > 0 || n.HostLoopback || n.CreateBridge || n.BridgeAddress != "" || n.Vhost == VhostOn {
		add("loop", "a NIC on loop network %q is on that network only: no bridge, tap, vhost or uplink settings", n.Loop)
	}
	if n.MAC != "" {
		add("mac", "a loop network's members have the MACs the network gives them: leave mac out")
	}
	if !nicIDPattern.MatchString(n.Loop) {
		add("loop", "loop network %q: 1 to 32 of letters, digits, _ . -", n.Loop)
		return probs
	}
	ln := s.loopNet(n.Loop)
	if len(n.LoopMembers) == 0 {
		add("loop_members", "loop network %q does not exist yet: name all its members (loop_members, --net loop=%s,members=A+B) with the first of them", n.Loop, n.Loop)
		return probs
	}
	switch m := n.LoopMembers; {
	case len(m) < 2:
		add("loop_members", "loop network %q has %d member(s) (%s): a loop network needs at least two", n.Loop, len(m), strings.Join(m, "+"))
	case len(m) > loop.MaxMembers:
		add("loop_members", "loop network %q has %d members, at most %d", n.Loop, len(m), loop.MaxMembers)
	case !slices.Contains(m, name):
		add("loop_members", "loop network %q's members (%s) do not include %s", n.Loop, strings.Join(m, "+"), name)
	}
	seen := map[string]bool{}
	for _, m := range n.LoopMembers {
		if !board.ValidName(m) {
			add("loop_members", "member %q is not a subOS name", m)
		} else if seen[m] {
			add("loop_members", "member %q named twice", m)
		}
		seen[m] = true
	}
	p, err := netip.ParsePrefix(loopSubnet(n))
	switch {
	case err != nil || !p.Addr().Is4():
		add("loop_subnet", "%q: want an IPv4 subnet with its prefix length, such as %s", loopSubnet(n), DefaultLoopSubnet)
	case p.Bits() > 30 || uint64(len(n.LoopMembers))+2 >= uint64(1)<<(32-p.Bits()):
		add("loop_subnet", "%s has no room for %d members (they get the addresses from .2 up)", p, len(n.LoopMembers))
	}
	if len(probs) > 0 {
		return probs
	}
	switch {
	case ln != nil && (!slices.Equal(ln.members, n.LoopMembers) || ln.subnet != loopSubnet(n)):
		add("loop_members", "loop network %q exists with members %s on %s: another member set or subnet is another network", n.Loop, strings.Join(ln.members, "+"), ln.subnet)
	case ln == nil:
		if running := s.loopMembersRunning(n.Loop, name); len(running) > 0 {
			add("loop", "loop network %q's memory went with the supervisor that made it; its members %s still run on it: destroy them before making the network again", n.Loop, strings.Join(running, ", "))
		}
	}
	return probs
}

// openLoop attaches NIC n (ID filled in) of subOS name to its loop
// network, making the network when the supervisor holds none of that
// name; it returns the VMM's net and its descriptors, and undo, which
// closes a network it made. Under opMu.
func (s *Supervisor) openLoop(name string, n NIC) (config.Net, map[string]*os.File, func(), error) {
	undo := func() {}
	ln := s.loopNet(n.Loop)
	if ln == nil {
		table, err := loopTable(n)
		if err != nil {
			return config.Net{}, nil, undo, fmt.Errorf("%w: nets %s: %w", ErrInvalid, n.ID, err)
		}
		nw, err := loopnet.Create(n.Loop, table, 0)
		if err != nil {
			return config.Net{}, nil, undo, fmt.Errorf("nets %s: %w", n.ID, err)
		}
		ln = &loopNet{net: nw, members: slices.Clone(n.LoopMembers), subnet: loopSubnet(n)}
		s.mu.Lock()
		s.loops[n.Loop] = ln
		s.mu.Unlock()
		undo = func() {
			s.mu.Lock()
			if s.loops[n.Loop] == ln {
				delete(s.loops, n.Loop)
			}
			s.mu.Unlock()
			nw.Close()
		}
	}
	a, err := ln.net.Attach(name, n.ID)
	if err != nil {
		undo()
		return config.Net{}, nil, func() {}, fmt.Errorf("nets %s: %w", n.ID, err)
	}
	return a.Net, a.Files, undo, nil
}

// releaseLoops closes the loop networks of so's NICs that no other
// subOS is a member of (so's VMM is gone; under opMu).
func (s *Supervisor) releaseLoops(so *subOS) {
	for _, n := range so.info.Spec.Nets {
		ln := s.loopNet(n.Loop)
		if n.Loop == "" || ln == nil || len(s.loopMembersRunning(n.Loop, so.info.Name)) > 0 {
			continue
		}
		s.mu.Lock()
		delete(s.loops, n.Loop)
		s.mu.Unlock()
		if err := ln.net.Close(); err != nil {
			s.log.Warn("close loop network", "loop", n.Loop, "err", err)
		}
	}
}

// loopAddr is subOS name's address on the loop network of its NIC n
// (members filled in): host k+2 of the subnet for member k.
func loopAddr(name string, n NIC) (netip.Prefix, bool) {
	k := slices.Index(n.LoopMembers, name)
	p, err := netip.ParsePrefix(loopSubnet(n))
	if k < 0 || err != nil {
		return netip.Prefix{}, false
	}
	return loopMemberAddr(p, k), true
}
