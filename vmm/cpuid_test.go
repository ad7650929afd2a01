package vmm

import (
	"testing"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

func TestBuildCPUID(t *testing.T) {
	sup := []gokvm.CPUIDEntry2{
		{Function: 1, Ecx: leaf1ECXCX16 | leaf1ECXXSAVE, Ebx: 0x0800},
		{Function: 0xb, Index: 0}, {Function: 0xb, Index: 1}, {Function: 0xb, Index: 2},
		{Function: 0xd, Index: 0, Eax: 7},
		{Function: 0x80000008, Eax: 0x3030},
	}
	out := BuildCPUID(sup, 2, 4, ProfileNestedSafe, true)
	for _, e := range out {
		switch {
		case e.Function == 1:
			if e.Ebx>>24 != 2 || (e.Ebx>>16)&0xff != 4 {
				t.Errorf("leaf 1 EBX %#x: want APIC id 2, 4 logical", e.Ebx)
			}
			if e.Ecx&(leaf1ECXCX16|leaf1ECXXSAVE) != 0 {
				t.Errorf("nested-safe leaf 1 ECX %#x still has CX16/XSAVE", e.Ecx)
			}
			if e.Ecx&leaf1ECXHypervisor == 0 || e.Ecx&leaf1ECXTSCDeadline == 0 {
				t.Errorf("leaf 1 ECX %#x lacks hypervisor/tsc-deadline", e.Ecx)
			}
		case e.Function == 0xb && e.Index == 1:
			if e.Eax != 2 || e.Ebx != 4 || e.Edx != 2 {
				t.Errorf("leaf 0xb.1 = %+v", e)
			}
		case e.Function == 0xd:
			t.Error("nested-safe profile kept leaf 0xd")
		case e.Function == 0x80000008:
			if e.Ecx&0xff != 3 || (e.Ecx>>12)&0xf != 2 {
				t.Errorf("leaf 0x80000008 ECX %#x", e.Ecx)
			}
		}
	}
	host := BuildCPUID(sup, 0, 1, ProfileHost, false)
	if host[0].Ecx&leaf1ECXCX16 == 0 {
		t.Error("host profile dropped CX16")
	}
}
