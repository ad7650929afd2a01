package vmm

import (
	"math/bits"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

// CPUProfile selects how much of the host CPU a guest sees.
type CPUProfile string

// CPU profiles.
const (
	// ProfileHost passes what KVM supports.
	ProfileHost CPUProfile = "host"
	// ProfileNestedSafe hides features that KVM's instruction emulator cannot
	// execute (CMPXCHG16B, XSAVE and everything built on it), for hosts whose
	// KVM emulates guest kernel code instead of running it.
	ProfileNestedSafe CPUProfile = "nested-safe"
)

const (
	leaf1ECXCX16        = 1 << 13
	leaf1ECXFMA         = 1 << 12
	leaf1ECXTSCDeadline = 1 << 24
	leaf1ECXXSAVE       = 1 << 26
	leaf1ECXOSXSAVE     = 1 << 27
	leaf1ECXAVX         = 1 << 28
	leaf1ECXF16C        = 1 << 29
	leaf1ECXHypervisor  = 1 << 31
	leaf1EDXHTT         = 1 << 28
)

// BuildCPUID returns the CPUID table for vCPU index of n, from KVM's
// supported table: APIC ids equal vCPU indexes, one thread per core, n cores
// in one package, so that leaves 1, 4, 0xB, 0x1F and AMD's 0x80000008 and
// 0x8000001E agree with each other and with the ACPI MADT.
func BuildCPUID(supported []gokvm.CPUIDEntry2, index, n int, profile CPUProfile, tscDeadline bool) []gokvm.CPUIDEntry2 {
	shift := uint32(bits.Len(uint(n - 1))) // bits of APIC id that number cores
	var out []gokvm.CPUIDEntry2
	for _, e := range supported {
		switch e.Function {
		case 0x1:
			e.Ebx = e.Ebx&0x0000ffff | uint32(index)<<24 | uint32(min(n, 255))<<16
			e.Ecx |= leaf1ECXHypervisor
			if tscDeadline {
				e.Ecx |= leaf1ECXTSCDeadline
			}
			if n > 1 {
				e.Edx |= leaf1EDXHTT
			}
			if profile == ProfileNestedSafe {
				e.Ecx &^= leaf1ECXCX16 | leaf1ECXXSAVE | leaf1ECXOSXSAVE | leaf1ECXAVX | leaf1ECXF16C | leaf1ECXFMA
			}
		case 0x4:
			// Cores per package - 1 in EAX[31:26]; caches are private to a core.
			if e.Eax&0x1f != 0 {
				e.Eax = e.Eax&0x3fff | uint32(n-1)<<26
			}
		case 0x7:
			if profile == ProfileNestedSafe && e.Index == 0 {
				e.Ebx &^= 1<<5 | 0xffff0000 // AVX2, AVX-512 family
				e.Ecx = 0
				e.Edx = 0
			}
		case 0xb, 0x1f:
			e.Edx = uint32(index)
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.Eax, e.Ebx, e.Ecx = 0, 1, 1<<8
			case 1: // core level
				e.Eax, e.Ebx, e.Ecx = shift, uint32(n), 1|2<<8
			default:
				e.Eax, e.Ebx, e.Ecx = 0, 0, e.Index
			}
		case 0xd:
			if profile == ProfileNestedSafe {
				continue
			}
		case 0x80000008:
			e.Ecx = uint32(n-1) | shift<<12
		case 0x8000001e:
			e.Eax = uint32(index)
			e.Ebx = uint32(index) // core id, one thread per core
			e.Ecx = 0
		}
		out = append(out, e)
	}
	return out
}
