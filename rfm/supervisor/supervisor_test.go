package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/ledger"
)

func TestCreateDestroy(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	ctx := context.Background()
	a, err := s.Create(ctx, testSpec(t, "a", 2))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Allocation.Cores) != 2 || a.Allocation.Cores[0] == 0 {
		t.Errorf("cores %v: want two, never the housekeeping core 0", a.Allocation.Cores)
	}
	if act.pages != 16 || len(act.groups["a"]) != 2 {
		t.Errorf("actuator: pages %d groups %v", act.pages, act.groups)
	}
	if _, err := s.Create(ctx, testSpec(t, "a", 1)); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate name: %v", err)
	}
	if _, err := s.Create(ctx, testSpec(t, "b", 2)); !errors.Is(err, ledger.ErrNoCores) {
		t.Errorf("only one core left, asked two: %v", err)
	}
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if act.pages != 0 || len(act.groups) != 0 || len(s.ledger.Allocations()) != 0 {
		t.Errorf("after destroy: pages %d groups %v ledger %v", act.pages, act.groups, s.ledger.Allocations())
	}
	if err := s.Destroy(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("destroy twice: %v", err)
	}
	ev, _ := s.Events(0, 100)
	var whats []string
	for _, e := range ev {
		whats = append(whats, e.What)
	}
	want := []string{"create", "create-failed", "create-failed", "reclaim", "destroy"}
	if fmt.Sprint(whats) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", whats, want)
	}
	if _, err := s.Create(WithActor(ctx, "uid 7 pid 9 (rfm)"), testSpec(t, "c", 1)); err != nil {
		t.Fatal(err)
	}
	ev, _ = s.Events(0, 100)
	if last := ev[len(ev)-1]; last.What != "create" || last.Who != "uid 7 pid 9 (rfm)" || ev[0].Who != "supervisor" {
		t.Errorf("actors: last %+v, first %+v", last, ev[0])
	}
}

// A create that fails half-way rolls back every reservation.
func TestCreateRollsBack(t *testing.T) {
	for _, fail := range []string{"hugepages", "cgroup", "launch", "addprocess"} {
		t.Run(fail, func(t *testing.T) {
			act, l := &fakeActuator{failOn: fail}, &fakeLauncher{fail: fail == "launch"}
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "kvm"), nil, 0o600) // the fake KVM device
			s := newTestSupervisor(t, dir, act, l)
			defer s.Close()
			if _, err := s.Create(context.Background(), testSpec(t, "a", 1)); err == nil {
				t.Fatal("create succeeded")
			}
			if act.pages != 0 || len(act.groups) != 0 || len(s.ledger.Allocations()) != 0 || len(s.List()) != 0 {
				t.Errorf("left behind: pages %d groups %v ledger %v", act.pages, act.groups, s.ledger.Allocations())
			}
			if err := s.ledger.Verify(); err != nil {
				t.Error(err)
			}
			recs, _ := s.store.Records()
			if len(recs) != 0 {
				t.Errorf("records left: %v", recs)
			}
			// No log, socket or jail directory of the failed subOS.
			if left, _ := filepath.Glob(filepath.Join(dir, "run", "a*")); len(left) != 0 {
				t.Errorf("files left: %v", left)
			}
		})
	}
}

// A spec with PCI devices is refused, one problem per device, by Check and
// by Create, and nothing is reserved: no passthrough would attach them.
func TestDevicesRefused(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	sp := testSpec(t, "a", 1)
	sp.Devices = []string{testDevice, "0000:09:00.0"}
	if probs := s.ledger.Check(ledger.Request{Name: "x", CPUs: 1, Node: -1, Memory: 32 << 20, PageSize: 2 << 20, Devices: []string{testDevice}}); len(probs) != 0 {
		t.Fatalf("the ledger alone would assign %s: %v", testDevice, probs)
	}
	want := []ledger.Problem{
		{Field: "devices[0]", Message: "PCI passthrough is not supported yet; nothing would attach 0000:03:00.0"},
		{Field: "devices[1]", Message: "PCI passthrough is not supported yet; nothing would attach 0000:09:00.0"},
	}
	probs := s.Check(sp)
	if len(probs) < 2 || fmt.Sprint(probs[:2]) != fmt.Sprint(want) {
		t.Errorf("Check = %v; want first %v", probs, want)
	}
	_, err := s.Create(context.Background(), sp)
	var pe *ProblemsError
	if !errors.As(err, &pe) || !errors.Is(err, ErrInvalid) || fmt.Sprint(pe.Problems) != fmt.Sprint(want) {
		t.Fatalf("Create = %v; want a ProblemsError with %v", err, want)
	}
	if act.pages != 0 || len(act.groups) != 0 || len(s.ledger.Allocations()) != 0 || len(s.List()) != 0 || len(l.argv) != 0 {
		t.Errorf("left behind: pages %d groups %v ledger %v", act.pages, act.groups, s.ledger.Allocations())
	}
	if o := s.ledger.DeviceOwner(testDevice); o != "" {
		t.Errorf("device %s reserved for %q", testDevice, o)
	}
	if _, err := (Admission{s.ledger}).Reserve(sp.Request()); !errors.Is(err, ErrInvalid) || s.ledger.DeviceOwner(testDevice) != "" {
		t.Errorf("Admission.Reserve = %v, owner %q; want refused, no owner", err, s.ledger.DeviceOwner(testDevice))
	}
	sp.Devices = nil
	if probs := s.Check(sp); len(probs) != 0 {
		t.Errorf("without devices: %v", probs)
	}
}

// A restarted supervisor re-adopts live VMMs with the same allocations and
// reclaims the resources of dead ones.
func TestRestartReadopts(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	ctx := context.Background()
	a, err := s.Create(ctx, testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, testSpec(t, "b", 1))
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // the supervisor goes away; the VMMs keep running
	l.procs[b.PID].exit()
	s2 := newTestSupervisor(t, dir, act, l)
	defer s2.Close()
	list := s2.List()
	if len(list) != 1 || list[0].Name != "a" || list[0].PID != a.PID || !list[0].Adopted ||
		fmt.Sprint(list[0].Allocation) != fmt.Sprint(a.Allocation) {
		t.Fatalf("after restart: %+v; want a as before", list)
	}
	if _, ok := s2.ledger.Get("b"); ok {
		t.Error("dead b still in the ledger")
	}
	// A VMM dying under a running supervisor is reclaimed too.
	l.procs[a.PID].exit()
	deadline := time.Now().Add(5 * time.Second)
	for len(s2.List()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a not reclaimed after its VMM exited")
		}
		time.Sleep(time.Millisecond)
	}
	if act.pages != 0 || len(act.groups) != 0 {
		t.Errorf("left: pages %d groups %v", act.pages, act.groups)
	}
}

// Concurrent creates never double-allocate.
func TestConcurrentCreates(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Create(context.Background(), testSpec(t, fmt.Sprintf("s%d", i), 1))
		}()
	}
	wg.Wait()
	seen := map[int]string{}
	for _, i := range s.List() {
		for _, c := range i.Allocation.Cores {
			if o, dup := seen[c]; dup {
				t.Errorf("core %d given to %s and %s", c, o, i.Name)
			}
			seen[c] = i.Name
		}
	}
	if len(s.List()) != 3 {
		t.Errorf("%d subOSes on 3 free cores", len(s.List()))
	}
}

// The VMM's document holds the spec on the resources the ledger gave.
func TestVMMDocument(t *testing.T) {
	spec := Spec{Name: "a", Kernel: "/k", Initrd: "/i", CmdlineAppend: "x=1", Disks: withDiskIDs([]Disk{{Path: "/d", ReadOnly: true}, {ID: "disk0", Path: "/e"}})}
	doc := vmmDocument(spec, ledger.Allocation{Cores: []int{2, 3}, Memory: 64 << 20, PageSize: 2 << 20}, "/run/a.sock", nil)
	if err := doc.Validate(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(doc.Cores) != "[2 3]" || doc.Memory != 64<<20 || doc.PageSize != "2M" || doc.Append != "x=1" || doc.Console.Socket != "/run/a.sock" {
		t.Errorf("document %+v", doc)
	}
	if doc.Disks[0].ID != "disk1" || !doc.Disks[0].ReadOnly || doc.Disks[1].ID != "disk0" {
		t.Errorf("disks %+v: the unnamed one gets the first free id", doc.Disks)
	}
}

// With IRQ steering on, host interrupts avoid exactly the cores subOSes own.
func TestSteerIRQs(t *testing.T) {
	var calls [][]int
	restores := 0
	act, l := &fakeActuator{}, &fakeLauncher{}
	s, err := New(Config{StateDir: t.TempDir(), RunDir: t.TempDir(), Inventory: testInventory(), Actuator: act, Launcher: l,
		SteerIRQs: func(avoid []int) (func() error, error) {
			calls = append(calls, append([]int(nil), avoid...))
			return func() error { restores++; return nil }, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Create(ctx, testSpec(t, "a", 2)); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || len(calls[0]) != 2 || restores != 1 {
		t.Errorf("steering calls %v, restores %d; want one call with a's 2 cores, undone at destroy", calls, restores)
	}
}

// Listing does not wait for a VMM that is slow to start; the subOS shows as
// starting meanwhile.
func TestListDuringSlowCreate(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{gate: make(chan struct{})}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	done := make(chan error, 1)
	go func() {
		_, err := s.Create(context.Background(), testSpec(t, "slow", 1))
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		list := s.List()
		if len(list) == 1 && list[0].State == StateStarting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("list during create: %+v", list)
		}
		time.Sleep(time.Millisecond)
	}
	close(l.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if list := s.List(); len(list) != 1 || list[0].State != StateRunning {
		t.Errorf("after create: %+v", list)
	}
}

// TestCheckFilesDisks: a disk may be a regular file or a block device,
// nothing else.
func TestCheckFilesDisks(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "a", Kernel: kernel, Disks: []Disk{{Path: kernel}, {Path: dir}, {Path: "/dev/null"}, {Path: ""}}}
	want := map[string]string{
		"disks[1].path": dir + " is a directory",
		"disks[2].path": "/dev/null is a character device",
		"disks[3].path": "required",
	}
	if st, err := os.Stat("/dev/loop0"); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		spec.Disks = append(spec.Disks, Disk{Path: "/dev/loop0"})
	}
	probs := checkFiles(spec)
	if len(probs) != len(want) {
		t.Fatalf("problems %v", probs)
	}
	for _, p := range probs {
		if !strings.Contains(p.Message, want[p.Field]) {
			t.Errorf("%s: %q, want %q", p.Field, p.Message, want[p.Field])
		}
	}
}

// TestConsoleLimitsRefused: console log settings the VMM would refuse are
// refused at create, before anything is reserved, each naming its field.
func TestConsoleLimitsRefused(t *testing.T) {
	dir := t.TempDir()
	s := newTestSupervisor(t, dir, &fakeActuator{}, &fakeLauncher{})
	defer s.Close()
	spec := testSpec(t, "a", 2)
	spec.ConsoleLogSize, spec.ConsoleLogRate = 100, 1<<40
	_, err := s.Create(context.Background(), spec)
	var pe *ProblemsError
	if !errors.As(err, &pe) || len(pe.Problems) != 2 || pe.Problems[0].Field != "console_log_size" || pe.Problems[1].Field != "console_log_rate" {
		t.Fatalf("err %v", err)
	}
	if a := s.ledger.Allocations(); len(a) != 0 {
		t.Errorf("reserved %v", a)
	}
}
