package vm

import (
	"errors"
	"testing"

	"rainforest/vmm/kvm"
)

func TestIDs(t *testing.T) {
	a := NewIDs("GSI", 24, 27)
	for want := uint32(24); want < 27; want++ {
		if got, err := a.Alloc(); err != nil || got != want {
			t.Fatalf("Alloc = %d, %v; want %d", got, err, want)
		}
	}
	if _, err := a.Alloc(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Alloc past the end = %v", err)
	}
	if err := a.Free(25); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(25); err == nil {
		t.Fatal("double free accepted")
	}
	if err := a.Free(99); err == nil {
		t.Fatal("free of a number never handed out accepted")
	}
	if got, err := a.Alloc(); err != nil || got != 25 {
		t.Fatalf("Alloc after free = %d, %v; want the freed 25", got, err)
	}
	if a.InUse() != 3 {
		t.Fatalf("InUse = %d", a.InUse())
	}
}

// Every change commits the whole table, base routes first, MSI routes by
// GSI; a failed commit leaves the table as it was.
func TestRoutingTable(t *testing.T) {
	base := kvm.DefaultRoutes()
	var committed [][]kvm.Route
	fail := false
	rt := NewRoutingTable(base, func(rs []kvm.Route) error {
		if fail {
			return errors.New("KVM says no")
		}
		committed = append(committed, rs)
		return nil
	})
	if err := rt.SetMSI(30, 0xFEE00000, 0x41); err != nil {
		t.Fatal(err)
	}
	if err := rt.SetMSI(25, 0xFEE00000, 0x42); err != nil {
		t.Fatal(err)
	}
	if err := rt.SetMSI(25, 0xFEE00000, 0x42); err != nil || len(committed) != 2 {
		t.Fatalf("unchanged route committed again: %d commits, %v", len(committed), err)
	}
	last := committed[len(committed)-1]
	if len(last) != len(base)+2 || last[len(base)].GSI != 25 || last[len(base)+1].GSI != 30 {
		t.Fatalf("table %+v", last[len(base):])
	}
	if err := rt.SetMSI(5, 0xFEE00000, 0x43); err == nil {
		t.Fatal("MSI route on an irqchip input accepted")
	}
	fail = true
	if err := rt.SetMSI(26, 0xFEE00000, 0x44); err == nil {
		t.Fatal("failed commit reported success")
	}
	if err := rt.Remove(25); err == nil {
		t.Fatal("failed commit reported success")
	}
	fail = false
	if rt.Len() != 2 {
		t.Fatalf("after failed commits: %d routes, want 2", rt.Len())
	}
	if err := rt.Remove(25); err != nil || rt.Len() != 1 {
		t.Fatalf("Remove: %v, %d routes", err, rt.Len())
	}
	if err := rt.Remove(99); err != nil {
		t.Fatalf("Remove of an absent route: %v", err)
	}
}
