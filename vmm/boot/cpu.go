package boot

import (
	"encoding/binary"
	"fmt"

	"rainforest/vmm/guestmem"
)

// Control register and EFER bits.
const (
	CR0PE    = 1 << 0
	CR0ET    = 1 << 4
	CR0PG    = 1 << 31
	CR4PAE   = 1 << 5
	EFERLME  = 1 << 8
	EFERLMA  = 1 << 10
	RFLAGSRe = 1 << 1 // bit 1 of RFLAGS is reserved and always set
)

// Selectors of the boot GDT written at GDTAddr. Code64 and Data are the boot
// protocol's __BOOT_CS and __BOOT_DS.
const (
	SelectorCode32 = 0x08
	SelectorCode64 = 0x10
	SelectorData   = 0x18
	SelectorTSS    = 0x20 // 16-byte system descriptor (0x20..0x2F)
	gdtLimit       = 0x2F
	tssLimit       = 0x67
)

// Segment is the hidden (cached) state of a segment register, in the form
// hypervisors take it. Limit is in bytes (already scaled by G).
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8 // 4-bit descriptor type
	Present  bool
	DPL      uint8
	DB       bool // default operation size 32-bit
	S        bool // code/data (true) or system (false) segment
	L        bool // 64-bit code segment
	G        bool // 4 KiB limit granularity
	AVL      bool
}

// DescriptorTable is a GDTR or IDTR value.
type DescriptorTable struct {
	Base  uint64
	Limit uint16
}

// CPUState is the initial register state of the boot CPU. Registers not
// listed are zero.
type CPUState struct {
	RIP, RSP, RSI, RBX, RFLAGS uint64
	CR0, CR3, CR4, EFER        uint64

	CS, DS, ES, FS, GS, SS, TR, LDT Segment
	GDT, IDT                        DescriptorTable
}

// descriptor encodes a segment as an 8-byte GDT entry (base and limit low 32
// bits only).
func descriptor(s Segment) uint64 {
	limit := uint64(s.Limit)
	if s.G {
		limit >>= 12
	}
	d := limit & 0xFFFF
	d |= (s.Base & 0xFFFFFF) << 16
	d |= uint64(s.Type&0xF) << 40
	if s.S {
		d |= 1 << 44
	}
	d |= uint64(s.DPL&3) << 45
	if s.Present {
		d |= 1 << 47
	}
	d |= (limit >> 16 & 0xF) << 48
	if s.AVL {
		d |= 1 << 52
	}
	if s.L {
		d |= 1 << 53
	}
	if s.DB {
		d |= 1 << 54
	}
	if s.G {
		d |= 1 << 55
	}
	d |= (s.Base >> 24 & 0xFF) << 56
	return d
}

func code32Segment() Segment {
	return Segment{Limit: 0xFFFFFFFF, Selector: SelectorCode32, Type: 0xB, Present: true, DB: true, S: true, G: true}
}

func code64Segment() Segment {
	return Segment{Limit: 0xFFFFFFFF, Selector: SelectorCode64, Type: 0xB, Present: true, S: true, L: true, G: true}
}

func dataSegment() Segment {
	return Segment{Limit: 0xFFFFFFFF, Selector: SelectorData, Type: 0x3, Present: true, DB: true, S: true, G: true}
}

func tssSegment() Segment {
	return Segment{Limit: tssLimit, Selector: SelectorTSS, Type: 0xB, Present: true}
}

func ldtSegment() Segment {
	return Segment{Type: 0x2} // not present: "unusable"
}

// writeGDT writes the boot GDT at GDTAddr: null, flat 32-bit code, flat
// 64-bit code, flat data, and a 16-byte busy TSS descriptor (base 0).
func writeGDT(mem *guestmem.Memory) error {
	entries := []uint64{
		0,
		descriptor(code32Segment()),
		descriptor(code64Segment()),
		descriptor(dataSegment()),
		descriptor(tssSegment()),
		0, // upper half of the 64-bit TSS descriptor
	}
	buf := make([]byte, 8*len(entries))
	for i, e := range entries {
		binary.LittleEndian.PutUint64(buf[8*i:], e)
	}
	if err := mem.WriteAt(buf, GDTAddr); err != nil {
		return fmt.Errorf("boot: writing GDT: %w", err)
	}
	return nil
}

// baseCPUState returns the state shared by both entry modes: the boot GDT,
// flat data segments, TSS and LDT, no IDT, interrupts off.
func baseCPUState() CPUState {
	data := dataSegment()
	return CPUState{
		RSP:    BootStackTop,
		RFLAGS: RFLAGSRe,
		DS:     data, ES: data, FS: data, GS: data, SS: data,
		TR:  tssSegment(),
		LDT: ldtSegment(),
		GDT: DescriptorTable{Base: GDTAddr, Limit: gdtLimit},
	}
}

// pvhCPUState is 32-bit protected mode, paging off, EBX = start_info.
func pvhCPUState(entry uint64) CPUState {
	s := baseCPUState()
	s.CS = code32Segment()
	s.RIP = entry
	s.RBX = StartInfoAddr
	s.CR0 = CR0PE | CR0ET
	return s
}

// longModeCPUState is 64-bit long mode on the identity map, RSI = zero page.
func longModeCPUState(entry uint64) CPUState {
	s := baseCPUState()
	s.CS = code64Segment()
	s.RIP = entry
	s.RSI = ZeroPageAddr
	s.CR0 = CR0PE | CR0ET | CR0PG
	s.CR3 = PML4Addr
	s.CR4 = CR4PAE
	s.EFER = EFERLME | EFERLMA
	return s
}

// Page table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7
)

// IdentityMapSize is how much of guest memory the boot page tables map.
const IdentityMapSize = 1 << 30

// writePageTables builds the identity map of the first IdentityMapSize bytes
// with 2 MiB pages: PML4 at PML4Addr, PDPT at PDPTAddr, one PD at PDAddr.
func writePageTables(mem *guestmem.Memory) error {
	tables := make([]byte, 3*pageSize)
	pml4, pdpt, pd := tables[:pageSize], tables[pageSize:2*pageSize], tables[2*pageSize:]
	binary.LittleEndian.PutUint64(pml4, PDPTAddr|ptePresent|pteWrite)
	binary.LittleEndian.PutUint64(pdpt, PDAddr|ptePresent|pteWrite)
	for i := range uint64(512) {
		binary.LittleEndian.PutUint64(pd[8*i:], i<<21|ptePresent|pteWrite|ptePS)
	}
	if err := mem.WriteAt(tables, PML4Addr); err != nil {
		return fmt.Errorf("boot: writing page tables: %w", err)
	}
	return nil
}
