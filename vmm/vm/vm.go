// Package vm is the VMM's VM layer: one KVM virtual machine with its
// in-kernel irqchip and PIT, and the single owner of what KVM numbers per
// VM: memory slots, GSIs and the GSI routing table. It also keeps count of
// the irqfds and ioeventfds registered, so that tests can check that a
// removed device gave everything back (Usage). It holds no policy: the
// machine and its devices say what goes where.
package vm

import (
	"errors"
	"fmt"
	"sync"

	"rainforest/vmm/kvm"
	"rainforest/vmm/layout"
)

// KVM limits the VM layer works within.
const (
	// MaxSlots bounds the memory slots (KVM offers at least 509 on x86).
	MaxSlots = 509
)

// VM is one KVM virtual machine. It is safe for concurrent use.
type VM struct {
	sys    *kvm.System
	kvm    *kvm.VM
	slots  *IDs
	gsis   *IDs
	routes *RoutingTable

	mu         sync.Mutex
	mapped     map[uint32]mapping
	irqfds     map[irqfdKey]bool
	ioeventfds map[ioeventfdKey]bool
}

type mapping struct {
	gpa      uint64
	mem      []byte
	readOnly bool
	active   bool
}

type irqfdKey struct {
	fd  int
	gsi uint32
}

type ioeventfdKey struct {
	fd    int
	addr  uint64
	n     uint32
	pio   bool
	match bool
	value uint64
}

func keyOf(fd int, addr uint64, n uint32, pio bool, match *uint64) ioeventfdKey {
	k := ioeventfdKey{fd: fd, addr: addr, n: n, pio: pio}
	if match != nil {
		k.match, k.value = true, *match
	}
	return k
}

// New opens the KVM device at path ("/dev/kvm" when empty) and creates a
// VM with the in-kernel irqchip (PIC, IOAPIC, local APICs), a PIT and the
// legacy GSI routing. On error nothing is left open.
func New(path string) (_ *VM, err error) {
	if path == "" {
		path = "/dev/kvm"
	}
	sys, err := kvm.OpenPath(path)
	if err != nil {
		return nil, err
	}
	return NewOn(sys)
}

// NewOn is New on an open KVM device (kvm.FromFile: a jailed VMM's
// descriptor); the VM takes charge of sys (closed on error too).
func NewOn(sys *kvm.System) (_ *VM, err error) {
	v := &VM{sys: sys, slots: NewIDs("memory slot", 0, MaxSlots), gsis: NewIDs("GSI", layout.IOAPICPins, layout.MaxGSI),
		mapped: map[uint32]mapping{}, irqfds: map[irqfdKey]bool{}, ioeventfds: map[ioeventfdKey]bool{}}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if v.kvm, err = sys.CreateVM(); err != nil {
		return nil, err
	}
	if err = v.kvm.SetTSSAddr(layout.KVMTSS); err != nil {
		return nil, err
	}
	if err = v.kvm.SetIdentityMapAddr(layout.KVMIdentityMap); err != nil {
		return nil, err
	}
	if err = v.kvm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err = v.kvm.CreatePIT2(); err != nil {
		return nil, err
	}
	v.routes = NewRoutingTable(kvm.DefaultRoutes(), v.kvm.SetGSIRouting)
	if err = v.kvm.SetGSIRouting(v.routes.Routes()); err != nil {
		return nil, err
	}
	return v, nil
}

// Close closes the VM and /dev/kvm; KVM frees the VM once its vCPUs are
// closed too.
func (v *VM) Close() error {
	var errs []error
	if v.kvm != nil {
		errs = append(errs, v.kvm.Close())
		v.kvm = nil
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
		v.sys = nil
	}
	return errors.Join(errs...)
}

// System returns the /dev/kvm handle (CPUID and capabilities).
func (v *VM) System() *kvm.System { return v.sys }

// KVM returns the VM handle (to create vCPUs).
func (v *VM) KVM() *kvm.VM { return v.kvm }

// MapMemory maps host memory mem at guest physical address gpa in a new
// memory slot (read-only: guest writes exit as MMIO) and returns the slot.
// The caller keeps mem mapped until UnmapMemory.
func (v *VM) MapMemory(gpa uint64, mem []byte, readOnly bool) (uint32, error) {
	if len(mem) == 0 || len(mem)%4096 != 0 || gpa%4096 != 0 {
		return 0, fmt.Errorf("vm: memory at %#x: %d bytes: must be non-empty and page-aligned", gpa, len(mem))
	}
	slot, err := v.slots.Alloc()
	if err != nil {
		return 0, err
	}
	if err := v.kvm.SetMemory(slot, gpa, mem, readOnly); err != nil {
		_ = v.slots.Free(slot)
		return 0, err
	}
	v.mu.Lock()
	v.mapped[slot] = mapping{gpa: gpa, mem: mem, readOnly: readOnly, active: true}
	v.mu.Unlock()
	return slot, nil
}

// MoveMemory maps slot's memory at gpa instead; gpa 0 leaves it unmapped
// (the slot stays allocated), and a later move maps it again.
func (v *VM) MoveMemory(slot uint32, gpa uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.mapped[slot]
	if !ok {
		return fmt.Errorf("vm: memory slot %d is not mapped", slot)
	}
	if m.active && m.gpa == gpa {
		return nil
	}
	if m.active {
		if err := v.kvm.SetMemory(slot, m.gpa, nil, false); err != nil {
			return err
		}
		m.active = false
		v.mapped[slot] = m
	}
	if gpa == 0 {
		return nil
	}
	if gpa%4096 != 0 {
		return fmt.Errorf("vm: memory slot %d: address %#x not page-aligned", slot, gpa)
	}
	if err := v.kvm.SetMemory(slot, gpa, m.mem, m.readOnly); err != nil {
		return err
	}
	m.gpa, m.active = gpa, true
	v.mapped[slot] = m
	return nil
}

// UnmapMemory deletes slot and frees its number.
func (v *VM) UnmapMemory(slot uint32) error {
	v.mu.Lock()
	m, ok := v.mapped[slot]
	if ok {
		delete(v.mapped, slot)
	}
	v.mu.Unlock()
	if !ok {
		return fmt.Errorf("vm: memory slot %d is not mapped", slot)
	}
	var err error
	if m.active {
		err = v.kvm.SetMemory(slot, m.gpa, nil, false)
	}
	return errors.Join(err, v.slots.Free(slot))
}

// AllocGSI returns a free GSI above the IOAPIC inputs.
func (v *VM) AllocGSI() (uint32, error) { return v.gsis.Alloc() }

// FreeGSI drops gsi's route, if any, and frees it. Its irqfds must be
// detached first.
func (v *VM) FreeGSI(gsi uint32) error {
	return errors.Join(v.routes.Remove(gsi), v.gsis.Free(gsi))
}

// SetMSIRoute routes gsi to an MSI message.
func (v *VM) SetMSIRoute(gsi uint32, addr uint64, data uint32) error {
	return v.routes.SetMSI(gsi, addr, data)
}

// RemoveRoute drops gsi's MSI route.
func (v *VM) RemoveRoute(gsi uint32) error { return v.routes.Remove(gsi) }

// AttachIRQFD makes a signal on the eventfd fd inject gsi (an edge, or an
// MSI through gsi's route).
func (v *VM) AttachIRQFD(fd int, gsi uint32) error {
	if err := v.kvm.IRQFD(fd, gsi); err != nil {
		return err
	}
	v.mu.Lock()
	v.irqfds[irqfdKey{fd, gsi}] = true
	v.mu.Unlock()
	return nil
}

// AttachResampleIRQFD makes a signal on fd assert the irqchip input gsi
// until the guest's EOI, which signals resampleFD.
func (v *VM) AttachResampleIRQFD(fd, resampleFD int, gsi uint32) error {
	if err := v.kvm.IRQFDResample(fd, resampleFD, gsi); err != nil {
		return err
	}
	v.mu.Lock()
	v.irqfds[irqfdKey{fd, gsi}] = true
	v.mu.Unlock()
	return nil
}

// DetachIRQFD undoes AttachIRQFD or AttachResampleIRQFD.
func (v *VM) DetachIRQFD(fd int, gsi uint32) error {
	if err := v.kvm.RemoveIRQFD(fd, gsi); err != nil {
		return err
	}
	v.mu.Lock()
	delete(v.irqfds, irqfdKey{fd, gsi})
	v.mu.Unlock()
	return nil
}

// SetLevel drives the irqchip input gsi from userspace (KVM_IRQ_LINE).
func (v *VM) SetLevel(gsi uint32, high bool) error { return v.kvm.IRQLine(gsi, high) }

// Asserted reports whether the IOAPIC input gsi is asserted now, by any
// source (KVM_IRQ_LINE or an irqfd).
func (v *VM) Asserted(gsi uint32) (bool, error) {
	if gsi >= layout.IOAPICPins {
		return false, fmt.Errorf("vm: GSI %d is not an IOAPIC input", gsi)
	}
	irr, err := v.kvm.IOAPICRequests()
	if err != nil {
		return false, err
	}
	return irr&(1<<gsi) != 0, nil
}

// AddIOEventFD makes a guest write of n bytes at addr (port I/O when pio;
// of exactly *match when match is set) signal the eventfd fd in the
// kernel, without an exit.
func (v *VM) AddIOEventFD(fd int, addr uint64, n uint32, pio bool, match *uint64) error {
	k := keyOf(fd, addr, n, pio, match)
	var err error
	if match != nil {
		err = v.kvm.IOEventFDMatch(fd, addr, n, pio, *match)
	} else {
		err = v.kvm.IOEventFD(fd, addr, n, pio)
	}
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.ioeventfds[k] = true
	v.mu.Unlock()
	return nil
}

// RemoveIOEventFD undoes AddIOEventFD (same arguments).
func (v *VM) RemoveIOEventFD(fd int, addr uint64, n uint32, pio bool, match *uint64) error {
	k := keyOf(fd, addr, n, pio, match)
	var err error
	if match != nil {
		err = v.kvm.RemoveIOEventFDMatch(fd, addr, n, pio, *match)
	} else {
		err = v.kvm.RemoveIOEventFD(fd, addr, n, pio)
	}
	if err != nil {
		return err
	}
	v.mu.Lock()
	delete(v.ioeventfds, k)
	v.mu.Unlock()
	return nil
}

// Usage counts what the VM has handed out or has registered.
type Usage struct {
	Slots, GSIs, Routes, IRQFDs, IOEventFDs int
}

// Usage returns the counts now.
func (v *VM) Usage() Usage {
	v.mu.Lock()
	defer v.mu.Unlock()
	return Usage{Slots: v.slots.InUse(), GSIs: v.gsis.InUse(), Routes: v.routes.Len(), IRQFDs: len(v.irqfds), IOEventFDs: len(v.ioeventfds)}
}
