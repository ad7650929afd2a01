package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"rainforest/vmm/hostcpu"
	"rainforest/vmm/ram"
	"rainforest/vmm/testguest"
)

// A machine with more vCPUs than cores parks the extra ones on its first
// core; PinVCPUs moves running threads (the kernel's affinity read back
// says so), and refuses bad cores without changing anything; a failure
// part-way puts every thread back.
func TestKVMPinVCPUs(t *testing.T) {
	needKVM(t)
	cores := onlineCores(t, 2)
	c0, c1 := cores[0], cores[1]
	m := newTestMachineConfig(t, Config{HostCores: []int{c0}, MaxVCPUs: 2, PageSize: ram.Page4K, MemSize: testguest.MinMemory})
	if m.NumVCPUs() != 2 || m.BootVCPUs() != 1 {
		t.Fatalf("%d vCPUs, %d booting; want 2, 1", m.NumVCPUs(), m.BootVCPUs())
	}
	if got, want := m.VCPUPins(), []VCPUPin{{0, c0, 0}, {1, c0, 0}}; !reflect.DeepEqual(got, want) {
		t.Errorf("before Run: %+v, want %+v", got, want)
	}
	var c testguest.Code
	c.Report(0).Spin() // each vCPU reports its index
	rec, stop := startGuest(t, m, c.Bytes())
	for _, w := range rec.wait(t, 2) {
		if len(w.cores) != 1 || w.cores[0] != c0 {
			t.Errorf("vcpu %d ran on a thread with affinity %v, want [%d]", w.value, w.cores, c0)
		}
	}
	pins := func() []int {
		var out []int
		for i, p := range m.VCPUPins() {
			if p.VCPU != i || p.TID == 0 {
				t.Fatalf("vcpu %d: pin %+v of a running thread", i, p)
			}
			out = append(out, p.Core)
		}
		return out
	}
	if got := pins(); !reflect.DeepEqual(got, []int{c0, c0}) {
		t.Errorf("running: cores %v, want [%d %d]", got, c0, c0)
	}

	if err := m.PinVCPUs([]int{c1, c0}); err != nil {
		t.Fatal(err)
	}
	if got := pins(); !reflect.DeepEqual(got, []int{c1, c0}) {
		t.Errorf("after PinVCPUs([%d %d]): cores %v", c1, c0, got)
	}
	// One core: every vCPU on it.
	if err := m.PinVCPUs([]int{c1}); err != nil {
		t.Fatal(err)
	}
	if got := pins(); !reflect.DeepEqual(got, []int{c1, c1}) {
		t.Errorf("after PinVCPUs([%d]): cores %v", c1, got)
	}
	if err := m.PinVCPUs([]int{c1, c0}); err != nil {
		t.Fatal(err)
	}

	for _, bad := range []struct {
		cores []int
		want  string
	}{
		{nil, "0 cores for 2 vCPUs"},
		{[]int{c0, c0}, fmt.Sprintf("core %d given twice", c0)},
		{[]int{c1, c0, c1}, "3 cores for 2 vCPUs"},
		{[]int{c0, 4095}, "core 4095 is not online"},
		{[]int{-1}, "core -1 is not online"},
	} {
		err := m.PinVCPUs(bad.cores)
		if !errors.Is(err, ErrPinning) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("PinVCPUs(%v) = %v, want ErrPinning saying %q", bad.cores, err, bad.want)
		}
		if len(bad.cores) > 0 && len(bad.cores) <= 2 && !errors.Is(err, hostcpu.ErrBadCPU) {
			t.Errorf("PinVCPUs(%v) = %v, want hostcpu.ErrBadCPU", bad.cores, err)
		}
		if got := pins(); !reflect.DeepEqual(got, []int{c1, c0}) {
			t.Errorf("refused PinVCPUs(%v) changed the cores to %v", bad.cores, got)
		}
	}

	// The kernel refuses vCPU 1's new core after vCPU 0 moved: vCPU 0
	// goes back.
	refused := errors.New("refused by the test")
	tid1 := m.VCPUPins()[1].TID
	m.affinity = func(tid, core int) error {
		if tid == tid1 {
			return refused
		}
		return setAffinity(tid, core)
	}
	err := m.PinVCPUs([]int{c0, c1})
	if !errors.Is(err, refused) || errors.Is(err, ErrPinning) || !strings.Contains(err.Error(), fmt.Sprintf("vcpu 1: pin to core %d", c1)) {
		t.Errorf("part-way failure: %v", err)
	}
	if got := pins(); !reflect.DeepEqual(got, []int{c1, c0}) {
		t.Errorf("after a failure part-way: cores %v, want [%d %d] back", got, c1, c0)
	}
	m.affinity = setAffinity

	if e := stop(); e.Reason != ExitStopped {
		t.Errorf("exit %+v", e)
	}
	// Stopped threads are no longer reached; their next start would take
	// the cores set now.
	if err := m.PinVCPUs([]int{c0}); err != nil {
		t.Fatal(err)
	}
	if got, want := m.VCPUPins(), []VCPUPin{{0, c0, 0}, {1, c0, 0}}; !reflect.DeepEqual(got, want) {
		t.Errorf("after stop: %+v, want %+v", got, want)
	}
}

// A vCPU the guest never starts waits in KVM_RUN asleep in the host
// kernel, on the first core, and pausing, resuming and stopping the
// machine reach it.
func TestKVMParkedVCPU(t *testing.T) {
	needKVM(t)
	c0 := onlineCores(t, 1)[0]
	m := newTestMachineConfig(t, Config{HostCores: []int{c0}, MaxVCPUs: 2, PageSize: ram.Page4K, MemSize: testguest.MinMemory})
	var c testguest.Code
	c.MovRAX(testguest.DataAddr)
	top := c.Len()
	c.IncMem()
	c.JumpTo(top)
	_, stop := startGuestVCPUs(t, m, c.Bytes(), 1)
	read := func() uint64 { v, _ := m.Mem.Uint64(testguest.DataAddr); return v }
	waitAbove := func(min uint64) {
		deadline := time.Now().Add(10 * time.Second)
		for read() <= min {
			if time.Now().After(deadline) {
				t.Fatalf("counter stuck at %d", read())
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitAbove(0)
	// The parked thread started, is pinned to c0, and sleeps.
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := m.VCPUPins()[1]
		state := ""
		if p.TID != 0 {
			if p.Core != c0 {
				t.Fatalf("parked vCPU on core %d, want %d", p.Core, c0)
			}
			state = threadState(t, p.TID)
			if state == "S" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("parked vCPU thread %d in state %q, want S (asleep)", p.TID, state)
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	n := read()
	m.Resume()
	waitAbove(n)
	if e := stop(); e.Reason != ExitStopped {
		t.Errorf("exit %+v", e)
	}
}

// threadState is the state letter of this process's thread tid.
func threadState(t *testing.T, tid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ...; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		t.Fatalf("stat %q", s)
	}
	return s[i+2 : i+3]
}
