package boot

import "fmt"

// E820 entry types (as in the BIOS E820 interface and hvm_memmap_table_entry).
const (
	E820RAM      = 1
	E820Reserved = 2
	E820ACPI     = 3
	E820NVS      = 4
)

// MaxE820Entries is the capacity of boot_params.e820_table.
const MaxE820Entries = 128

// E820Entry is one range of the guest physical memory map.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// LowRAMEnd returns the end of RAM below 4 GiB for a guest of ramSize bytes:
// RAM runs from 0 to min(ramSize, 3 GiB); the rest sits at 4 GiB.
func LowRAMEnd(ramSize uint64) uint64 {
	return min(ramSize, MMIOHoleStart)
}

// BuildE820 returns the guest memory map for ramSize bytes of RAM:
//
//	[0, 0x9FC00)               RAM
//	[0x9FC00, 0xA0000)         reserved (EBDA)
//	[0xE0000, 0x100000)        reserved (ACPI tables / BIOS area)
//	[0x100000, lowEnd)         RAM, lowEnd = min(ramSize, 3 GiB)
//	[4 GiB, 4 GiB + rest)      RAM, only if ramSize > 3 GiB
//
// ramSize must be at least MinRAMSize.
func BuildE820(ramSize uint64) ([]E820Entry, error) {
	if ramSize < MinRAMSize {
		return nil, fmt.Errorf("%w: RAM size %#x below minimum %#x", ErrBadParams, ramSize, uint64(MinRAMSize))
	}
	if ramSize > 1<<52-HighRAMStart {
		return nil, fmt.Errorf("%w: RAM size %#x too large", ErrBadParams, ramSize)
	}
	lowEnd := LowRAMEnd(ramSize)
	m := []E820Entry{
		{Addr: 0, Size: EBDAStart, Type: E820RAM},
		{Addr: EBDAStart, Size: 0xA0000 - EBDAStart, Type: E820Reserved},
		{Addr: ACPIStart, Size: HighMemStart - ACPIStart, Type: E820Reserved},
		{Addr: HighMemStart, Size: lowEnd - HighMemStart, Type: E820RAM},
	}
	if ramSize > lowEnd {
		m = append(m, E820Entry{Addr: HighRAMStart, Size: ramSize - lowEnd, Type: E820RAM})
	}
	return m, nil
}
