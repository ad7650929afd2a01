package vmm

import (
	"context"
	"errors"
	"testing"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/layout"
	"rainforest/vmm/ram"
)

// A machine with hotplug memory maps the region above RAM, in guest
// memory (so devices reach plugged blocks) and in KVM; SetMemory checks
// the size, and without a guest driver nothing gets plugged: WaitMemory
// gives the partial state when its context ends.
func TestHotplugMemoryMachine(t *testing.T) {
	needKVM(t)
	cores := onlineCores(t, 1)
	const region = 64 << 20
	m := newTestMachineConfig(t, Config{HostCores: cores, PageSize: ram.Page4K, MemSize: 16 << 20, HotplugMemory: region})
	regs := m.Mem.Regions()
	last := regs[len(regs)-1]
	if last.GPA != layout.HotplugBase(16<<20) || len(last.Data) != region {
		t.Fatalf("last guest memory region at %#x+%#x, want the hotplug region at %#x", last.GPA, len(last.Data), layout.HotplugBase(16<<20))
	}
	st, err := m.MemoryState()
	if err != nil || st.RegionSize != region || st.BlockSize != 2<<20 || st.Addr != last.GPA || st.Plugged != 0 {
		t.Fatalf("MemoryState = %+v, %v", st, err)
	}
	if err := m.SetMemory(3 << 20); err == nil {
		t.Fatal("SetMemory of a partial block accepted")
	}
	if err := m.SetMemory(8 << 20); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if st, err := m.WaitMemory(ctx); !errors.Is(err, context.Canceled) || st.Requested != 8<<20 || st.Plugged != 0 {
		t.Fatalf("WaitMemory = %+v, %v", st, err)
	}
	// Unplugged memory is inaccessible: the VMM's accessors refuse it
	// (a device told to use it fails its request; the VMM does not fault).
	b := make([]byte, 4096)
	if err := m.Mem.ReadAt(b, last.GPA+region-4096); !errors.Is(err, guestmem.ErrInaccessible) {
		t.Fatalf("read unplugged memory: %v, want ErrInaccessible", err)
	}
}
