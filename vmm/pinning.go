package vmm

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"rainforest/internal/units"
	"rainforest/vmm/acpi"
	"rainforest/vmm/hostcpu"
)

// VCPULimit bounds a machine's vCPUs (the MADT's xAPIC ids; the IOAPIC
// takes the next one, and 255 is the broadcast id).
const VCPULimit = acpi.MaxCPUs

// ErrPinning wraps every reason PinVCPUs refuses its cores before
// touching anything.
var ErrPinning = errors.New("bad vCPU pinning")

// VCPUPin is where one vCPU's thread runs.
type VCPUPin struct {
	VCPU int
	// Core is the host core the thread is pinned to: read from the
	// kernel (sched_getaffinity) while the thread runs, else the core it
	// will take when it starts; -1 when the thread's affinity is not a
	// single core (someone outside the VMM changed it).
	Core int
	// TID is the thread's id in the VMM's PID namespace, 0 while the
	// thread does not run (before Run, after the machine stopped).
	TID int
}

// PinVCPUs pins vCPU i's thread to cores[i], and every vCPU beyond
// len(cores) to cores[0] (where a vCPU the guest has not brought online
// waits, costing nothing: it sits in KVM_RUN in the host kernel). A
// running thread is re-pinned at once (sched_setaffinity); one not
// started yet takes its core when it starts. cores must be 1 to
// NumVCPUs distinct host cores, online when the machine was made (a
// jailed VMM cannot read sysfs later), else the error wraps ErrPinning
// and nothing changed. A failure part-way (the kernel refusing a core,
// e.g. outside the VMM's cpuset) restores the previous pinning and
// returns the error.
//
// The NUMA node of the memory is not changed: cores on another node than
// the machine's memory work, but slower.
func (m *Machine) PinVCPUs(cores []int) error {
	if len(cores) == 0 || len(cores) > len(m.vcpus) {
		return fmt.Errorf("%w: %d cores for %d vCPUs (1 to %d)", ErrPinning, len(cores), len(m.vcpus), len(m.vcpus))
	}
	seen := map[int]bool{}
	for _, c := range cores {
		switch {
		case seen[c]:
			return fmt.Errorf("%w: %w: core %d given twice", ErrPinning, hostcpu.ErrBadCPU, c)
		case !slices.Contains(m.hostCores, c):
			return fmt.Errorf("%w: %w: core %d is not online (online: %s)", ErrPinning, hostcpu.ErrBadCPU, c, units.FormatCPUList(m.hostCores))
		}
		seen[c] = true
	}
	m.pinMu.Lock()
	defer m.pinMu.Unlock()
	prev := make([]int, 0, len(m.vcpus))
	for i, v := range m.vcpus {
		core := cores[0]
		if i < len(cores) {
			core = cores[i]
		}
		old, err := m.pin(v, core)
		if err != nil {
			err = fmt.Errorf("vcpu %d: pin to core %d: %w", i, core, err)
			for j := range prev {
				if _, rerr := m.pin(m.vcpus[j], prev[j]); rerr != nil {
					err = errors.Join(err, fmt.Errorf("vcpu %d: restoring core %d: %w", j, prev[j], rerr))
				}
			}
			return err
		}
		prev = append(prev, old)
	}
	m.log.Info("vCPUs pinned", "cores", cores, "vcpus", len(m.vcpus))
	return nil
}

// pin moves v to core and returns the core it had.
func (m *Machine) pin(v *vcpu, core int) (old int, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if tid := v.tid.Load(); tid != 0 {
		if err := m.affinity(int(tid), core); err != nil {
			return v.core, err
		}
	}
	old, v.core = v.core, core
	return old, nil
}

// VCPUPins returns where each vCPU's thread runs, as the kernel has it
// for the running ones.
func (m *Machine) VCPUPins() []VCPUPin {
	out := make([]VCPUPin, len(m.vcpus))
	for i, v := range m.vcpus {
		v.mu.Lock()
		p := VCPUPin{VCPU: i, Core: v.core, TID: int(v.tid.Load())}
		if p.TID != 0 {
			p.Core = affinityCore(p.TID, p.Core)
		}
		v.mu.Unlock()
		out[i] = p
	}
	return out
}

// affinityCore is the one core thread tid may run on, -1 when it may run
// on several, or fallback when the kernel does not say.
func affinityCore(tid, fallback int) int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		return fallback
	}
	if set.Count() != 1 {
		return -1
	}
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) {
			return c
		}
	}
	return -1
}

// setAffinity pins thread tid (0: the calling thread) to core.
func setAffinity(tid, core int) error {
	var set unix.CPUSet
	set.Set(core)
	return unix.SchedSetaffinity(tid, &set)
}
