package supervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"rainforest/ledger"
	"rainforest/vmm/shmem/abi"
)

// Every subOS joins the FICM group with its own peer id and gets the
// segments it is granted; the board lists them; a segment lives while a
// grantee does.
func TestSharingMembership(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	ctx := context.Background()
	sa := testSpec(t, "a", 1)
	sa.Segments = []SegmentGrant{{Name: "shared", Size: 8192}}
	a, err := s.Create(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	sb := testSpec(t, "b", 1)
	sb.Segments = []SegmentGrant{{Name: "shared", ReadOnly: true}}
	b, err := s.Create(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	if a.Peer != 1 || b.Peer != 2 || a.SegmentPeers["shared"] != 0 || b.SegmentPeers["shared"] != 1 {
		t.Errorf("peers: a %d %v, b %d %v", a.Peer, a.SegmentPeers, b.Peer, b.SegmentPeers)
	}
	pb := l.procs[b.PID]
	if len(pb.regions) != 2 || pb.regions[0].Name != FICMRegion || pb.regions[0].Self != 2 || pb.regions[0].Protocol != abi.ProtocolFICM ||
		pb.regions[1].Name != "shared" || pb.regions[1].RWSize != 8192 || !pb.regions[1].RWReadOnly || pb.regions[1].Self != 1 {
		t.Errorf("b's regions %+v", pb.regions)
	}
	if want := 1 + DefaultFICMPeers + 1 + SegmentPeers; len(pb.files) != want {
		t.Errorf("b got %d files, want %d", len(pb.files), want)
	}
	bd, err := s.Board()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := bd.Lookup("b"); !ok || e.Peer != 2 || len(bd.Entries) != 2 || e.CommCores[0] != b.Allocation.Cores[0] {
		t.Errorf("board %+v", bd)
	}
	// Nobody listens in a fake VMM: a message is refused, clearly.
	if err := s.Message(ctx, "a", "hello"); !errors.Is(err, ErrNotListening) {
		t.Errorf("message to a silent subOS: %v", err)
	}
	if err := s.Message(ctx, "nobody", "hello"); !errors.Is(err, ErrNotFound) {
		t.Errorf("message to nobody: %v", err)
	}
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if s.share.segments["shared"] == nil {
		t.Fatal("segment freed while b holds it")
	}
	// a's FICM slot is free again.
	c, err := s.Create(ctx, testSpec(t, "c", 1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Peer != 1 {
		t.Errorf("c got peer %d, want the freed 1", c.Peer)
	}
	if err := s.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if len(s.share.segments) != 0 {
		t.Errorf("segments left: %v", s.share.segments)
	}
	if bd, _ := s.Board(); len(bd.Entries) != 1 || bd.Entries[0].Name != "c" {
		t.Errorf("board after destroys %+v", bd)
	}
}

// Bad grants are refused with ErrInvalid and leave nothing behind.
func TestSharingBadGrants(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	ctx := context.Background()
	ok := testSpec(t, "a", 1)
	ok.Segments = []SegmentGrant{{Name: "s", Size: 4096}}
	if _, err := s.Create(ctx, ok); err != nil {
		t.Fatal(err)
	}
	for _, g := range [][]SegmentGrant{
		{{Name: "new"}},                           // no size for a new segment
		{{Name: "s", Size: 8192}},                 // size differs
		{{Name: "Bad_Name", Size: 4096}},          // name
		{{Name: "x", Size: 1000}},                 // not a page multiple
		{{Name: "x", Size: 2 << 30}},              // too big
		{{Name: "x", Size: 4096}, {Name: "x"}},    // twice
		{{Name: "y", Size: 4096}, {Name: "Bad!"}}, // second bad: the first is not kept
	} {
		sp := testSpec(t, "b", 1)
		sp.Segments = g
		if _, err := s.Create(ctx, sp); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", g, err)
		}
	}
	if len(s.share.segments) != 1 || len(s.List()) != 1 || act.pages != 16 {
		t.Errorf("left behind: segments %v, subOSes %d, pages %d", s.share.segments, len(s.List()), act.pages)
	}
}

// A restarted supervisor gets the FICM group and segments back from the
// VMMs it re-adopts: same memory, same board.
func TestSharingSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	ctx := context.Background()
	sp := testSpec(t, "a", 1)
	sp.Segments = []SegmentGrant{{Name: "seg", Size: 4096}}
	if _, err := s.Create(ctx, sp); err != nil {
		t.Fatal(err)
	}
	copy(s.share.segments["seg"].reg.RW(), "kept")
	out, _ := s.share.ficm.Output(9)
	copy(out, "ficm")
	s.Close()
	s2 := newTestSupervisor(t, dir, act, l)
	defer s2.Close()
	sg := s2.share.segments["seg"]
	if sg == nil || string(sg.reg.RW()[:4]) != "kept" || sg.grants["a"] != 0 {
		t.Fatalf("segment after restart: %+v", sg)
	}
	if out, _ := s2.share.ficm.Output(9); string(out[:4]) != "ficm" {
		t.Error("the FICM group was made anew, not recovered from a's VMM")
	}
	if bd, err := s2.Board(); err != nil || len(bd.Entries) != 1 || bd.Entries[0].Peer != 1 {
		t.Errorf("board after restart %+v, %v", bd, err)
	}
	sb := testSpec(t, "b", 1)
	sb.Segments = []SegmentGrant{{Name: "seg"}}
	b, err := s2.Create(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	if b.Peer != 2 || b.SegmentPeers["seg"] != 1 {
		t.Errorf("b after restart: peer %d, segments %v", b.Peer, b.SegmentPeers)
	}
}

// Check names bad grants field by field, changing nothing.
func TestCheckSegments(t *testing.T) {
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, &fakeLauncher{})
	defer s.Close()
	sp := testSpec(t, "a", 1)
	sp.Segments = []SegmentGrant{{Name: "ok", Size: 4096}, {Name: "ok", Size: 100}, {Name: "Bad"}}
	var fields []string
	for _, p := range s.Check(sp) {
		fields = append(fields, p.Field)
	}
	if fmt.Sprint(fields) != "[segments[1].name segments[1].size segments[2].name]" {
		t.Errorf("problems in %v", fields)
	}
}

// Every valid subOS name, up to the longest, fits the board.
func TestBoardTakesLongestName(t *testing.T) {
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, &fakeLauncher{})
	defer s.Close()
	name := strings.Repeat("n", ledger.MaxNameLen)
	if _, err := s.Create(context.Background(), testSpec(t, name, 1)); err != nil {
		t.Fatal(err)
	}
	if bd, err := s.Board(); err != nil || len(bd.Entries) != 1 || bd.Entries[0].Name != name {
		t.Errorf("board %+v, %v", bd, err)
	}
	sp := testSpec(t, "b", 1)
	sp.Segments = []SegmentGrant{{Name: strings.Repeat("s", ledger.MaxNameLen), Size: 4096}}
	if _, err := s.Create(context.Background(), sp); err != nil {
		t.Errorf("segment with the longest name: %v", err)
	}
}
