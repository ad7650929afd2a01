package supervisor

import (
	"context"
	"testing"
)

// Counters count the audit events by kind and the VMMs that ended on
// their own; a destroyed subOS's VMM is not one of those.
func TestCounters(t *testing.T) {
	l := &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, l)
	defer s.Close()
	ctx := context.Background()
	if c := s.Counters(); len(c.Events) != 0 || c.VMMExits != 0 {
		t.Errorf("a new supervisor counts %+v", c)
	}
	if _, err := s.Create(ctx, testSpec(t, "a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, testSpec(t, "b", 1))
	if err != nil {
		t.Fatal(err)
	}
	l.procs[b.PID].exit()
	eventually(t, "b gone on its own", func() bool {
		got, err := s.Get("b")
		return err == nil && got.State == StateExited
	})
	c := s.Counters()
	want := map[string]uint64{"create": 2, "destroy": 1, "reclaim": 2}
	for what, n := range want {
		if c.Events[what] != n {
			t.Errorf("%s events %d, want %d (all: %v)", what, c.Events[what], n, c.Events)
		}
	}
	if c.VMMExits != 1 {
		t.Errorf("VMM exits %d, want 1", c.VMMExits)
	}
	// The map is a copy.
	c.Events["create"] = 99
	if s.Counters().Events["create"] != 2 {
		t.Error("Counters shares its map")
	}
}
