package supervisor

import (
	"context"
	"strings"
	"testing"

	"rainforest/rfm/loopnet"
	"rainforest/vmm/config"
)

// TestLoopNIC: the first member's create makes the loop network with all
// its members, a later member joins by the network's name alone, each
// VMM gets the member table, its lanes and doorbells, and the guest its
// address; bad networks are refused with nothing made; the network
// outlives a member's destroy and goes with the last member.
func TestLoopNIC(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisorNet(t, t.TempDir(), act, l, newFakeNetwork())
	defer s.Close()
	ctx := context.Background()

	// Refused, nothing made: one member, a network not made yet without
	// its members, a member list without the subOS, a MAC of one's own,
	// a subnet with no room.
	for _, c := range []struct {
		nic  NIC
		says string
	}{
		{NIC{Loop: "lan", LoopMembers: []string{"a"}}, "needs at least two"},
		{NIC{Loop: "lan"}, "does not exist yet"},
		{NIC{Loop: "lan", LoopMembers: []string{"b", "c"}}, "do not include a"},
		{NIC{Loop: "lan", LoopMembers: []string{"a", "b"}, MAC: "02:00:00:00:00:01"}, "leave mac out"},
		{NIC{Loop: "lan", LoopMembers: []string{"a", "b", "c"}, LoopSubnet: "10.0.0.0/30"}, "no room"},
		{NIC{Loop: "lan", LoopMembers: []string{"a", "b"}, Bridge: "br0"}, "on that network only"},
		{NIC{Loop: "lan", LoopMembers: []string{"a", "a"}}, "named twice"},
	} {
		bad := testSpec(t, "a", 1)
		bad.Nets = []NIC{c.nic}
		if _, err := s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("create with %+v: %v, want %q", c.nic, err, c.says)
		}
		if probs := s.Check(bad); len(probs) == 0 {
			t.Errorf("check of %+v found nothing", c.nic)
		}
		if len(s.loops) != 0 {
			t.Fatalf("a refused create left loop networks %v", s.loops)
		}
	}

	a := testSpec(t, "a", 1)
	a.Nets = []NIC{{User: false, Loop: "lan", LoopMembers: []string{"a", "b"}}}
	ia, err := s.Create(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if n := ia.Spec.Nets[0]; n.MAC != loopnet.MemberMAC("lan", 0) || n.TAP != "" {
		t.Errorf("a's loop NIC: %+v", n)
	}
	doc := l.proc(ia.PID).doc
	if len(doc.Nets) != 1 || doc.Nets[0].Loop == nil || doc.Nets[0].Loop.Self != 0 || len(doc.Nets[0].Loop.Members) != 2 {
		t.Fatalf("a's VMM nets: %+v", doc.Nets)
	}
	if m := doc.Nets[0].Loop.Members[1]; m.Name != "b" || m.IP != "10.99.0.3" || m.MAC != loopnet.MemberMAC("lan", 1) {
		t.Errorf("member b in a's table: %+v", m)
	}
	for k := range 2 {
		for _, f := range []string{config.LoopLaneFile("net0", k), config.LoopBellFile("net0", k)} {
			if _, ok := doc.Files[f]; !ok {
				t.Errorf("no descriptor %s for a's VMM: %v", f, doc.Files)
			}
		}
	}
	if want := "rf.addr=" + loopnet.MemberMAC("lan", 0) + "=10.99.0.2/24"; !strings.Contains(doc.Append, want) {
		t.Errorf("a's command line %q lacks %q", doc.Append, want)
	}

	// b joins by name: the members come from the network.
	b := testSpec(t, "b", 1)
	b.Nets = []NIC{{Loop: "lan"}}
	ib, err := s.Create(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if n := ib.Spec.Nets[0]; strings.Join(n.LoopMembers, "+") != "a+b" || n.MAC != loopnet.MemberMAC("lan", 1) {
		t.Errorf("b's loop NIC: %+v", n)
	}
	if d := l.proc(ib.PID).doc; d.Nets[0].Loop.Self != 1 || !strings.Contains(d.Append, "=10.99.0.3/24") {
		t.Errorf("b's VMM: self %d, command line %q", d.Nets[0].Loop.Self, d.Append)
	}
	// Another member set under the same name is refused.
	c := testSpec(t, "c", 1)
	c.Nets = []NIC{{Loop: "lan", LoopMembers: []string{"a", "c"}}}
	if _, err := s.Create(ctx, c); err == nil || !strings.Contains(err.Error(), "exists with members a+b") {
		t.Errorf("create of c on lan with other members: %v", err)
	}

	// The network outlives a and goes with b, the last member.
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if s.loopNet("lan") == nil {
		t.Fatal("the loop network went with a while b is a member")
	}
	if _, err = s.Create(ctx, a); err != nil { // a again: the same lanes
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if err := s.Destroy(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if s.loopNet("lan") != nil {
		t.Error("the loop network outlived its last member")
	}
}
