package vmm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"rainforest/vmm/config"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/layout"
	"rainforest/vmm/ram"
	"rainforest/vmm/virtio/mem"
)

// ErrNoHotplugMemory means the machine has no hotplug memory region
// (Config.HotplugMemory was 0).
var ErrNoHotplugMemory = errors.New("the machine has no hotplug memory (hotplug_memory is 0)")

// MemoryCmdline is cmdline with memhp_default_state=online_movable
// appended (last, so that it wins), so that the guest onlines the memory
// virtio-mem plugs into ZONE_MOVABLE and can unplug it again.
func MemoryCmdline(cmdline string) string {
	return strings.TrimSpace(cmdline + " memhp_default_state=online_movable")
}

// memoryBacking backs a virtio-mem region with a memfd mapped without a
// hugepage reservation: plugging makes the range accessible and faults
// its pages in (a short pool is a refusal the guest sees, never a fault);
// unplugging punches them out of the memfd, so the host gets them back
// and a later plug reads zeros, and makes the range inaccessible again.
// Unplugged memory is inaccessible (the device requires the driver to
// accept VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE), so a guest that touches
// it anyway faults, and its VMM stops, rather than taking free pages of
// the host's pool that the ledger has not given it.
type memoryBacking struct{ r *ram.RAM }

var _ mem.Backing = memoryBacking{}

// Plug implements mem.Backing.
func (b memoryBacking) Plug(off, size uint64) error {
	if err := b.r.Protect(off, size, true); err != nil {
		return err
	}
	if err := b.r.Populate(off, size); err != nil {
		return errors.Join(err, b.Unplug(off, size))
	}
	return nil
}

// Unplug implements mem.Backing.
func (b memoryBacking) Unplug(off, size uint64) error {
	return errors.Join(b.r.Release(off, size), b.r.Protect(off, size, false))
}

// setupHotplugMemory allocates the hotplug region of cfg.HotplugMemory
// bytes above RAM, maps it into the guest as one memory slot and makes
// its virtio-mem model (added to the PCI bus by addDevices); it returns
// the guest memory region to add to m.Mem.
func (m *Machine) setupHotplugMemory(node int) (guestmem.Region, error) {
	cfg := m.cfg
	bs := config.HotplugBlockSize(cfg.PageSize)
	if cfg.HotplugMemory%bs != 0 || cfg.HotplugMemory > config.MaxHotplugMemory {
		return guestmem.Region{}, fmt.Errorf("hotplug memory %d: a multiple of the %d-byte block size, at most %d", cfg.HotplugMemory, bs, uint64(config.MaxHotplugMemory))
	}
	r, err := ram.Allocate(ram.Options{Name: "rf-" + cfg.Name + "-hotplug", Size: cfg.HotplugMemory, PageSize: cfg.PageSize,
		Node: node, NoReserve: true, SysRoot: cfg.SysRoot})
	if err != nil {
		return guestmem.Region{}, fmt.Errorf("hotplug memory: %w", err)
	}
	m.AddCloser(r.Close)
	if err := r.Protect(0, cfg.HotplugMemory, false); err != nil { // nothing is plugged yet
		return guestmem.Region{}, fmt.Errorf("hotplug memory: %w", err)
	}
	base := layout.HotplugBase(cfg.MemSize)
	dev, err := mem.New(mem.Options{Addr: base, RegionSize: cfg.HotplugMemory, BlockSize: bs, Backing: memoryBacking{r}})
	if err != nil {
		return guestmem.Region{}, err
	}
	if _, err := m.vm.MapMemory(base, r.Data, false); err != nil {
		return guestmem.Region{}, fmt.Errorf("hotplug memory: %w", err)
	}
	m.memdev = dev
	return guestmem.Region{GPA: base, Data: r.Data, Accessible: dev.Accessible}, nil
}

// MemoryState is the hotplug memory's state.
type MemoryState = mem.State

// SetMemory asks the guest to plug hotplug memory until requested bytes
// are plugged (a multiple of the block size, at most the region): it
// returns at once; MemoryState and WaitMemory follow the guest.
func (m *Machine) SetMemory(requested uint64) error {
	if m.memdev == nil {
		return ErrNoHotplugMemory
	}
	return m.memdev.SetRequested(requested)
}

// MemoryState returns the hotplug memory's state.
func (m *Machine) MemoryState() (MemoryState, error) {
	if m.memdev == nil {
		return MemoryState{}, ErrNoHotplugMemory
	}
	return m.memdev.State(), nil
}

// WaitMemory waits until the guest has plugged what was requested, or
// ctx ends (then with ctx's error and the state reached: a partial
// result).
func (m *Machine) WaitMemory(ctx context.Context) (MemoryState, error) {
	if m.memdev == nil {
		return MemoryState{}, ErrNoHotplugMemory
	}
	return m.memdev.Settle(ctx)
}
