// Package vmtest is a fake of the VM layer for unit tests of the layers
// above it (interrupts, the chassis, devices): it keeps in memory what a
// KVM VM would hold (memory slots, GSIs and routes, irqfds, ioeventfds,
// line levels), refuses what KVM would refuse (an eventfd attached twice,
// overlapping memory, a duplicate ioeventfd), and lets tests fire an
// eventfd as the kernel would and look at the state.
package vmtest

import (
	"errors"
	"fmt"
	"sync"

	"rainforest/vmm/vm"
)

// VM is the fake. It is safe for concurrent use.
type VM struct {
	mu       sync.Mutex
	gsis     *vm.IDs
	slots    *vm.IDs
	routes   map[uint32][2]uint64 // gsi -> addr, data
	irqfds   map[int]IRQFD        // by eventfd
	bells    map[Bell]bool
	mem      map[uint32]Mem
	levels   map[uint32]bool // KVM_IRQ_LINE levels
	asserted map[uint32]bool // what Asserted answers beyond levels
}

// IRQFD is an attached irqfd.
type IRQFD struct {
	GSI      uint32
	Resample int // -1: an edge irqfd
}

// Bell is a registered ioeventfd.
type Bell struct {
	FD    int
	Addr  uint64
	N     uint32
	PIO   bool
	Match bool
	Value uint64
}

// Mem is a memory slot.
type Mem struct {
	GPA      uint64 // 0: allocated but not mapped
	Size     uint64
	ReadOnly bool
}

// New returns an empty fake.
func New() *VM {
	return &VM{gsis: vm.NewIDs("GSI", 24, 1024), slots: vm.NewIDs("memory slot", 0, 509), routes: map[uint32][2]uint64{},
		irqfds: map[int]IRQFD{}, bells: map[Bell]bool{}, mem: map[uint32]Mem{}, levels: map[uint32]bool{}, asserted: map[uint32]bool{}}
}

// AllocGSI implements interrupt.Chip.
func (v *VM) AllocGSI() (uint32, error) { return v.gsis.Alloc() }

// FreeGSI implements interrupt.Chip.
func (v *VM) FreeGSI(gsi uint32) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for fd, q := range v.irqfds {
		if q.GSI == gsi {
			return fmt.Errorf("vmtest: GSI %d freed with eventfd %d still attached", gsi, fd)
		}
	}
	delete(v.routes, gsi)
	return v.gsis.Free(gsi)
}

// SetMSIRoute implements interrupt.Chip.
func (v *VM) SetMSIRoute(gsi uint32, addr uint64, data uint32) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.routes[gsi] = [2]uint64{addr, uint64(data)}
	return nil
}

func (v *VM) attach(fd int, q IRQFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.irqfds[fd]; ok {
		return fmt.Errorf("vmtest: eventfd %d is already an irqfd (EBUSY)", fd)
	}
	v.irqfds[fd] = q
	return nil
}

// AttachIRQFD implements interrupt.Chip.
func (v *VM) AttachIRQFD(fd int, gsi uint32) error {
	return v.attach(fd, IRQFD{GSI: gsi, Resample: -1})
}

// AttachResampleIRQFD implements interrupt.Chip.
func (v *VM) AttachResampleIRQFD(fd, resampleFD int, gsi uint32) error {
	if gsi >= 24 {
		return fmt.Errorf("vmtest: resampling irqfd on GSI %d, not an irqchip input", gsi)
	}
	return v.attach(fd, IRQFD{GSI: gsi, Resample: resampleFD})
}

// DetachIRQFD implements interrupt.Chip.
func (v *VM) DetachIRQFD(fd int, gsi uint32) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	q, ok := v.irqfds[fd]
	if !ok || q.GSI != gsi {
		return fmt.Errorf("vmtest: eventfd %d is not an irqfd of GSI %d", fd, gsi)
	}
	delete(v.irqfds, fd)
	return nil
}

// SetLevel implements interrupt.Chip.
func (v *VM) SetLevel(gsi uint32, high bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.levels[gsi] = high
	return nil
}

// Asserted implements interrupt.Chip: the KVM_IRQ_LINE level, or what
// SetAsserted said.
func (v *VM) Asserted(gsi uint32) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.levels[gsi] || v.asserted[gsi], nil
}

// SetAsserted makes Asserted report gsi as asserted by an irqfd.
func (v *VM) SetAsserted(gsi uint32, on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.asserted[gsi] = on
}

// MapMemory implements devices.VM.
func (v *VM) MapMemory(gpa uint64, mem []byte, readOnly bool) (uint32, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.checkLocked(gpa, uint64(len(mem)), ^uint32(0)); err != nil {
		return 0, err
	}
	slot, err := v.slots.Alloc()
	if err != nil {
		return 0, err
	}
	v.mem[slot] = Mem{GPA: gpa, Size: uint64(len(mem)), ReadOnly: readOnly}
	return slot, nil
}

func (v *VM) checkLocked(gpa, size uint64, self uint32) error {
	if gpa%4096 != 0 || size == 0 || size%4096 != 0 {
		return fmt.Errorf("vmtest: memory at %#x+%#x not page-aligned", gpa, size)
	}
	for s, m := range v.mem {
		if s != self && m.GPA != 0 && gpa < m.GPA+m.Size && m.GPA < gpa+size {
			return fmt.Errorf("vmtest: memory at %#x+%#x overlaps slot %d (EEXIST)", gpa, size, s)
		}
	}
	return nil
}

// MoveMemory implements devices.VM.
func (v *VM) MoveMemory(slot uint32, gpa uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.mem[slot]
	if !ok {
		return fmt.Errorf("vmtest: memory slot %d not mapped", slot)
	}
	if gpa != 0 {
		if err := v.checkLocked(gpa, m.Size, slot); err != nil {
			return err
		}
	}
	m.GPA = gpa
	v.mem[slot] = m
	return nil
}

// UnmapMemory implements devices.VM.
func (v *VM) UnmapMemory(slot uint32) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.mem[slot]; !ok {
		return fmt.Errorf("vmtest: memory slot %d not mapped", slot)
	}
	delete(v.mem, slot)
	return v.slots.Free(slot)
}

func bell(fd int, addr uint64, n uint32, pio bool, match *uint64) Bell {
	b := Bell{FD: fd, Addr: addr, N: n, PIO: pio}
	if match != nil {
		b.Match, b.Value = true, *match
	}
	return b
}

// AddIOEventFD implements devices.VM.
func (v *VM) AddIOEventFD(fd int, addr uint64, n uint32, pio bool, match *uint64) error {
	b := bell(fd, addr, n, pio, match)
	v.mu.Lock()
	defer v.mu.Unlock()
	for o := range v.bells {
		if o.Addr == addr && o.N == n && o.PIO == pio && (!o.Match || !b.Match || o.Value == b.Value) {
			return errors.New("vmtest: ioeventfd collides with one registered (EEXIST)")
		}
	}
	v.bells[b] = true
	return nil
}

// RemoveIOEventFD implements devices.VM.
func (v *VM) RemoveIOEventFD(fd int, addr uint64, n uint32, pio bool, match *uint64) error {
	b := bell(fd, addr, n, pio, match)
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.bells[b] {
		return fmt.Errorf("vmtest: no ioeventfd %+v", b)
	}
	delete(v.bells, b)
	return nil
}

// IRQFDs returns the attached irqfds by eventfd.
func (v *VM) IRQFDs() map[int]IRQFD {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[int]IRQFD{}
	for k, q := range v.irqfds {
		out[k] = q
	}
	return out
}

// Route returns gsi's MSI route.
func (v *VM) Route(gsi uint32) (addr uint64, data uint32, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.routes[gsi]
	return r[0], uint32(r[1]), ok
}

// Bells returns the registered ioeventfds.
func (v *VM) Bells() []Bell {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []Bell
	for b := range v.bells {
		out = append(out, b)
	}
	return out
}

// Memory returns the memory slots.
func (v *VM) Memory() map[uint32]Mem {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[uint32]Mem{}
	for k, m := range v.mem {
		out[k] = m
	}
	return out
}

// Usage counts what is handed out, as vm.VM.Usage does.
func (v *VM) Usage() vm.Usage {
	v.mu.Lock()
	defer v.mu.Unlock()
	return vm.Usage{Slots: v.slots.InUse(), GSIs: v.gsis.InUse(), Routes: len(v.routes), IRQFDs: len(v.irqfds), IOEventFDs: len(v.bells)}
}
