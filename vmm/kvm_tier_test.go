package vmm

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/ram"
	"rainforest/vmm/testguest"
)

// needKVM skips a KVM-tier test where /dev/kvm cannot be used, unless
// RF_REQUIRE_KVM=1 (set by CI), where that is a failure.
func needKVM(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return
	}
	if os.Getenv("RF_REQUIRE_KVM") == "1" {
		t.Fatalf("KVM tier required but /dev/kvm unusable: %v", err)
	}
	t.Skipf("no usable /dev/kvm: %v", err)
}

func onlineCores(t *testing.T, n int) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cores []int
	for c := 0; c < 1024 && len(cores) < n; c++ {
		if set.IsSet(c) {
			cores = append(cores, c)
		}
	}
	if len(cores) < n {
		t.Skipf("need %d cores, have %d", n, len(cores))
	}
	return cores
}

// portRecorder is a PIO device that records writes and the affinity of the
// thread that made them (the vCPU thread).
type portRecorder struct {
	mu     sync.Mutex
	writes []portWrite
	notify chan struct{}
}

type portWrite struct {
	offset uint64
	value  byte
	cores  []int
}

func newPortRecorder() *portRecorder { return &portRecorder{notify: make(chan struct{}, 64)} }

func (p *portRecorder) Read(offset uint64, data []byte) {}
func (p *portRecorder) Write(offset uint64, data []byte) {
	var set unix.CPUSet
	_ = unix.SchedGetaffinity(0, &set)
	var cores []int
	for c := 0; c < 1024; c++ {
		if set.IsSet(c) {
			cores = append(cores, c)
		}
	}
	p.mu.Lock()
	p.writes = append(p.writes, portWrite{offset, data[0], cores})
	p.mu.Unlock()
	p.notify <- struct{}{}
}

func (p *portRecorder) wait(t *testing.T, n int) []portWrite {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		p.mu.Lock()
		if len(p.writes) >= n {
			w := append([]portWrite(nil), p.writes...)
			p.mu.Unlock()
			return w
		}
		p.mu.Unlock()
		select {
		case <-p.notify:
		case <-deadline:
			t.Fatalf("guest made %d port writes, want %d", len(p.writes), n)
		}
	}
}

// faultReporter fails the test with the vector of a guest CPU exception.
type faultReporter struct{ t *testing.T }

func (f faultReporter) Read(uint64, []byte) {}
func (f faultReporter) Write(_ uint64, data []byte) {
	f.t.Errorf("test guest took CPU exception %d", data[0])
}

func newTestMachine(t *testing.T, cores []int, pageSize ram.PageSize, mem uint64) *Machine {
	t.Helper()
	return newTestMachineConfig(t, Config{HostCores: cores, PageSize: pageSize, MemSize: mem})
}

// newTestMachineConfig makes a machine of cfg (named, logging warnings)
// closed when the test ends.
func newTestMachineConfig(t *testing.T, cfg Config) *Machine {
	t.Helper()
	cfg.Name = "kvmtest"
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

func startGuest(t *testing.T, m *Machine, code []byte) (*portRecorder, func() Exit) {
	t.Helper()
	return startGuestVCPUs(t, m, code, m.NumVCPUs())
}

// startGuestVCPUs runs code on vCPUs 0..n-1; the others stay as KVM
// made them, waiting for an INIT/SIPI that never comes (as a vCPU a Linux
// guest keeps offline).
func startGuestVCPUs(t *testing.T, m *Machine, code []byte, n int) (*portRecorder, func() Exit) {
	t.Helper()
	rec := newPortRecorder()
	if err := m.MMIO.Insert(rec, testguest.MMIOPort, 0x1000); err != nil {
		t.Fatal(err)
	}
	if err := m.PIO.Insert(faultReporter{t}, testguest.FaultPort, 1); err != nil {
		t.Fatal(err)
	}
	regs, sregs, err := testguest.Setup(m.Mem, code)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		r := *regs
		r.RAX = uint64(i) // each vCPU reports its index
		r.RBX = uint64(i)
		if err := m.SetBootState(i, &r, sregs); err != nil {
			t.Fatal(err)
		}
		if err := testguest.EnableLAPIC(m.VCPU(i)); err != nil {
			t.Fatal(err)
		}
		if err := m.VCPU(i).SetRunnable(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Exit, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	var exit Exit
	stop := func() Exit {
		once.Do(func() {
			cancel()
			select {
			case exit = <-done:
			case <-time.After(20 * time.Second):
				t.Error("machine did not stop within 20s of cancel")
			}
		})
		return exit
	}
	t.Cleanup(func() { stop() })
	return rec, stop
}

// Every vCPU runs on its own thread pinned to its own core, and the guest's
// stores land in the memory slot the host sees.
func TestKVMPinningAndMemory(t *testing.T) {
	needKVM(t)
	cores := onlineCores(t, 2)
	m := newTestMachine(t, cores, ram.Page4K, testguest.MinMemory)
	var c testguest.Code
	c.Report(0) // report vCPU index from BL
	c.MovRAX(testguest.DataAddr).MovRBX(0x1122334455667788).Store64()
	c.Spin()
	rec, stop := startGuest(t, m, c.Bytes())
	ws := rec.wait(t, 2)
	seen := map[byte]bool{}
	for _, w := range ws {
		idx := int(w.value)
		if idx >= len(cores) {
			t.Fatalf("bad vcpu index %d", idx)
		}
		seen[w.value] = true
		if len(w.cores) != 1 || w.cores[0] != cores[idx] {
			t.Errorf("vcpu %d ran on a thread with affinity %v, want [%d]", idx, w.cores, cores[idx])
		}
	}
	if len(seen) != 2 {
		t.Errorf("vcpus reporting: %v", seen)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _ := m.Mem.Uint64(testguest.DataAddr)
		if v == 0x1122334455667788 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest store not visible: %#x", v)
		}
		time.Sleep(time.Millisecond)
	}
	if e := stop(); e.Reason != ExitStopped {
		t.Errorf("exit = %+v, want stopped", e)
	}
}

// A guest MMIO write to a doorbell address signals its eventfd in the
// kernel (ioeventfd) without an exit to the VMM's MMIO bus.
func TestKVMIOEventFD(t *testing.T) {
	needKVM(t)
	m := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	const bell = 0xD000_0000
	db, err := m.NewDoorbell(bell, 4, false)
	if err != nil {
		t.Fatal(err)
	}
	mmio := newPortRecorder()
	if err := m.MMIO.Insert(mmio, bell, 0x1000); err != nil {
		t.Fatal(err)
	}
	var c testguest.Code
	c.MovRAX(bell).MovRBX(7).Store32().Store32()
	c.MovRBX(0).Report(0)
	c.Spin()
	rec, _ := startGuest(t, m, c.Bytes())
	rec.wait(t, 1)
	if n := db.EventFD().Drain(); n != 2 {
		t.Errorf("doorbell eventfd counted %d writes, want 2", n)
	}
	if len(mmio.writes) != 0 {
		t.Errorf("doorbell writes reached the VMM: %v", mmio.writes)
	}
}

// Signalling an irqfd-bound eventfd delivers its MSI to the guest, whose
// interrupt handler runs and returns to user code.
func TestKVMIRQFD(t *testing.T) {
	needKVM(t)
	m := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	const vector = 0x40
	v, err := m.NewMSIVector(0xFEE00000, vector)
	if err != nil {
		t.Fatal(err)
	}
	var c testguest.Code
	c.MovRBX(1).Report(0) // ready
	c.WaitNonZero(testguest.CounterFor(vector))
	c.MovRBX(2).Report(0) // got it
	c.Spin()
	rec, _ := startGuest(t, m, c.Bytes())
	rec.wait(t, 1)
	if err := v.Fire(); err != nil {
		t.Fatal(err)
	}
	ws := rec.wait(t, 2)
	if ws[1].value != 2 {
		t.Fatalf("second report %d", ws[1].value)
	}
	if n, _ := m.Mem.Uint64(testguest.CounterFor(vector)); n != 1 {
		t.Errorf("vector %#x handled %d times, want 1", vector, n)
	}
}

// Hugepage-backed guest memory works when the host has a 2 MiB pool, and a
// short pool is refused before anything is made.
func TestKVMHugePages(t *testing.T) {
	needKVM(t)
	free, _, err := ram.FreeHugePages("", ram.Page2M, -1)
	if err != nil || free < 2 {
		if os.Getenv("RF_REQUIRE_KVM") == "1" {
			t.Fatalf("CI reserves 2 MiB hugepages, found %d (%v)", free, err)
		}
		t.Skipf("no free 2 MiB hugepages (%v)", err)
	}
	_, err = New(Config{Name: "toobig", MemSize: (free + 100000) * uint64(ram.Page2M), PageSize: ram.Page2M, HostCores: onlineCores(t, 1)})
	if !errors.Is(err, ram.ErrHugePages) {
		t.Errorf("oversized hugepage request: %v", err)
	}
	m := newTestMachine(t, onlineCores(t, 1), ram.Page2M, 2<<20)
	var c testguest.Code
	c.MovRAX(testguest.DataAddr).MovRBX(42).Store64().MovRBX(0).Report(0).Spin()
	rec, _ := startGuest(t, m, c.Bytes())
	rec.wait(t, 1)
	if v, _ := m.Mem.Uint64(testguest.DataAddr); v != 42 {
		t.Errorf("hugepage memory read %d", v)
	}
}

// Pause kicks every vCPU out of the guest and holds it; Resume lets it go on.
func TestKVMPauseResume(t *testing.T) {
	needKVM(t)
	m := newTestMachine(t, onlineCores(t, 2), ram.Page4K, testguest.MinMemory)
	var c testguest.Code
	c.MovRAX(testguest.DataAddr)
	top := c.Len()
	c.IncMem() // inc qword [rax]
	c.JumpTo(top)
	_, stop := startGuest(t, m, c.Bytes())
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	c1 := read()
	time.Sleep(50 * time.Millisecond)
	if c2 := read(); c2 != c1 {
		t.Errorf("guest ran while paused: %d -> %d", c1, c2)
	}
	m.Resume()
	waitAbove(c1)
	if e := stop(); e.Reason != ExitStopped {
		t.Errorf("exit %+v", e)
	}
}
