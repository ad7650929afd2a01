// Package testguest builds a tiny x86-64 guest for the VMM's KVM-tier tests.
//
// The VMM puts the vCPU straight into 64-bit long mode at CPL 3 (no firmware,
// no kernel): identity-mapped page tables for the first 4 GiB, a GDT with
// kernel and user segments and a TSS, and an IDT whose every vector runs a
// short CPL-0 handler that counts the interrupt, signals end-of-interrupt to
// the local APIC and returns. User code is assembled with Code. This runs at
// native speed even on hosts whose KVM only emulates guest kernel code.
package testguest

import (
	"encoding/binary"
	"fmt"

	gokvm "github.com/bobuhiro11/gokvm/kvm"

	"rainforest/vmm/guestmem"
)

// Guest layout.
const (
	GDTAddr      = 0x500
	TSSAddr      = 0x600
	PML4Addr     = 0x1000
	PDPTAddr     = 0x2000
	PDAddr       = 0x3000 // four page directories, 0x3000-0x6FFF
	IDTAddr      = 0x8000
	HandlerAddr  = 0x10000 // 64 bytes per vector, up to 0x13FFF
	CounterAddr  = 0xB000  // uint64 interrupt count per vector
	KernelStack  = 0xD000
	CodeAddr     = 0x20000
	DataAddr     = 0x30000 // free for tests
	UserStack    = 0x40000
	MinMemory    = 2 << 20
	lapicEOIAddr = 0xFEE000B0

	selKernelCode = 0x08
	selUserData   = 0x18 | 3
	selUserCode   = 0x20 | 3
	selTSS        = 0x28
)

// CounterFor returns the GPA of vector v's interrupt counter.
func CounterFor(v int) uint64 { return CounterAddr + 8*uint64(v) }

// Setup writes page tables, GDT, TSS, IDT and handlers into mem and the code
// at CodeAddr, and returns the registers to start a vCPU at CodeAddr in
// user mode with interrupts enabled and port I/O allowed (IOPL 3).
func Setup(mem *guestmem.Memory, code []byte) (*gokvm.Regs, *gokvm.Sregs, error) {
	if mem.Size() < MinMemory {
		return nil, nil, fmt.Errorf("test guest needs %d bytes of memory, have %d", MinMemory, mem.Size())
	}
	if len(code) > DataAddr-CodeAddr {
		return nil, nil, fmt.Errorf("test guest code too large: %d bytes", len(code))
	}
	const (
		present = 1 << 0
		rw      = 1 << 1
		user    = 1 << 2
		huge    = 1 << 7
	)
	put := func(gpa, v uint64) error { return mem.PutUint64(gpa, v) }
	var err error
	must := func(e error) {
		if err == nil {
			err = e
		}
	}
	must(put(PML4Addr, PDPTAddr|present|rw|user))
	for i := uint64(0); i < 4; i++ {
		must(put(PDPTAddr+8*i, (PDAddr+0x1000*i)|present|rw|user))
		for j := uint64(0); j < 512; j++ {
			must(put(PDAddr+0x1000*i+8*j, (i<<30|j<<21)|present|rw|user|huge))
		}
	}
	gdt := []uint64{
		0,
		0x00AF9A000000FFFF, // 0x08 kernel code64
		0x00CF92000000FFFF, // 0x10 kernel data
		0x00CFF2000000FFFF, // 0x18 user data
		0x00AFFA000000FFFF, // 0x20 user code64
		103 | (TSSAddr&0xFFFFFF)<<16 | 0x89<<40 | (TSSAddr>>24)<<56, // 0x28 TSS (available)
		0,
	}
	for i, d := range gdt {
		must(put(GDTAddr+8*uint64(i), d))
	}
	tss := make([]byte, 104)
	binary.LittleEndian.PutUint64(tss[4:], KernelStack) // RSP0
	binary.LittleEndian.PutUint16(tss[102:], 104)       // no I/O bitmap
	must(mem.WriteAt(tss, TSSAddr))
	for v := 0; v < 256; v++ {
		h := uint64(HandlerAddr + handlerSize*v)
		lo := h&0xFFFF | selKernelCode<<16 | 0x8E<<40 | (h>>16&0xFFFF)<<48
		must(put(IDTAddr+16*uint64(v), lo))
		must(put(IDTAddr+16*uint64(v)+8, h>>32))
		must(mem.WriteAt(handler(v), h))
	}
	must(mem.WriteAt(code, CodeAddr))
	if err != nil {
		return nil, nil, fmt.Errorf("test guest setup: %w", err)
	}
	seg := func(sel uint16, typ, dpl, l, db uint8) gokvm.Segment {
		return gokvm.Segment{Limit: 0xFFFFFFFF, Selector: sel, Typ: typ, Present: 1, DPL: dpl, S: 1, L: l, DB: db, G: 1}
	}
	s := &gokvm.Sregs{
		CS:       seg(selUserCode, 11, 3, 1, 0),
		DS:       seg(selUserData, 3, 3, 0, 1),
		ES:       seg(selUserData, 3, 3, 0, 1),
		FS:       seg(selUserData, 3, 3, 0, 1),
		GS:       seg(selUserData, 3, 3, 0, 1),
		SS:       seg(selUserData, 3, 3, 0, 1),
		TR:       gokvm.Segment{Base: TSSAddr, Limit: 103, Selector: selTSS, Typ: 11, Present: 1},
		LDT:      gokvm.Segment{Limit: 0xFFFF, Typ: 2, Present: 1},
		GDT:      gokvm.Descriptor{Base: GDTAddr, Limit: uint16(8*len(gdt) - 1)},
		IDT:      gokvm.Descriptor{Base: IDTAddr, Limit: 16*256 - 1},
		CR0:      0x80050033, // PG WP NE ET MP PE
		CR3:      PML4Addr,
		CR4:      0x20,  // PAE
		EFER:     0x500, // LMA LME
		ApicBase: 0xFEE00000 | 1<<11 | 1<<8,
	}
	r := &gokvm.Regs{RIP: CodeAddr, RSP: UserStack, RFLAGS: 0x2 | 0x200 | 0x3000}
	return r, s, nil
}

const handlerSize = 64

// FaultPort receives the vector number of any CPU exception (0-31) the
// guest takes; exception handlers report there (port I/O from CPL 0) and
// then spin, so a test can fail with the vector instead of a triple fault.
const FaultPort = 0x3F0

// MMIOPort is a guest-physical address outside RAM that tests use for
// guest-to-host reports: user code stores to it, the store exits to the
// VMM's MMIO bus. (Port I/O from CPL 3 needs IOPL, which hosts that run
// guest user code natively do not honour.)
const MMIOPort = 0xD010_0000

// handler is vector v's CPL-0 handler. Exceptions report to FaultPort and
// spin; interrupts count, signal EOI to the local APIC and return.
func handler(v int) []byte {
	var c Code
	if v < 32 {
		c.b = append(c.b, 0xB0, byte(v)) // mov al, v
		c.Out(FaultPort)
		c.b = append(c.b, 0xEB, 0xFE) // jmp $
		return c.b
	}
	c.b = append(c.b, 0x50) // push rax
	c.MovRAX(CounterFor(v))
	c.b = append(c.b, 0x48, 0xFF, 0x00) // inc qword [rax]
	c.MovRAX(lapicEOIAddr)
	c.b = append(c.b, 0xC7, 0x00, 0, 0, 0, 0) // mov dword [rax], 0
	c.b = append(c.b, 0x58, 0x48, 0xCF)       // pop rax; iretq
	return c.b
}

// Code assembles the handful of x86-64 instructions the tests need.
type Code struct{ b []byte }

// Bytes returns the machine code.
func (c *Code) Bytes() []byte { return c.b }

// Len returns the current length (for jump targets).
func (c *Code) Len() int { return len(c.b) }

// MovRAX loads a 64-bit immediate into RAX.
func (c *Code) MovRAX(v uint64) *Code {
	c.b = append(c.b, 0x48, 0xB8)
	c.b = binary.LittleEndian.AppendUint64(c.b, v)
	return c
}

// MovRBX loads a 64-bit immediate into RBX.
func (c *Code) MovRBX(v uint64) *Code {
	c.b = append(c.b, 0x48, 0xBB)
	c.b = binary.LittleEndian.AppendUint64(c.b, v)
	return c
}

// Store64 stores RBX at [RAX].
func (c *Code) Store64() *Code { c.b = append(c.b, 0x48, 0x89, 0x18); return c }

// Store16 stores BX's low 16 bits at [RAX].
func (c *Code) Store16() *Code { c.b = append(c.b, 0x66, 0x89, 0x18); return c }

// Store32 stores EBX at [RAX].
func (c *Code) Store32() *Code { c.b = append(c.b, 0x89, 0x18); return c }

// Load64 loads [RAX] into RBX.
func (c *Code) Load64() *Code { c.b = append(c.b, 0x48, 0x8B, 0x18); return c }

// Out writes AL to port (through DX).
func (c *Code) Out(port uint16) *Code {
	c.b = append(c.b, 0x66, 0xBA, byte(port), byte(port>>8), 0xEE)
	return c
}

// Report stores BL as a 32-bit value at MMIOPort+off, which exits to
// the VMM's MMIO bus.
func (c *Code) Report(off uint32) *Code {
	c.b = append(c.b, 0x48, 0x0F, 0xB6, 0xDB) // movzx rbx, bl
	c.MovRAX(MMIOPort + uint64(off))
	return c.Store32()
}

// WaitNonZero spins (with PAUSE) until the qword at addr is non-zero.
func (c *Code) WaitNonZero(addr uint64) *Code {
	c.MovRAX(addr)
	top := len(c.b)
	c.b = append(c.b, 0xF3, 0x90)             // pause
	c.b = append(c.b, 0x48, 0x83, 0x38, 0x00) // cmp qword [rax], 0
	c.b = append(c.b, 0x74, byte(top-(len(c.b)+2)))
	return c
}

// Spin loops forever at CPL 3.
func (c *Code) Spin() *Code { c.b = append(c.b, 0xF3, 0x90, 0xEB, 0xFC); return c }

// LAPIC is the part of a vCPU the test guest needs to enable its local APIC.
type LAPIC interface {
	LAPIC() (*gokvm.LAPICState, error)
	SetLAPIC(*gokvm.LAPICState) error
}

// EnableLAPIC software-enables the local APIC (spurious vector register),
// which firmware or the guest kernel would normally do.
func EnableLAPIC(c LAPIC) error {
	l, err := c.LAPIC()
	if err != nil {
		return err
	}
	const svr = 0xF0
	l.Regs[svr] = 0xFF
	l.Regs[svr+1] |= 1 // APIC software enable (bit 8)
	return c.SetLAPIC(l)
}

// IncMem increments the qword at [RAX].
func (c *Code) IncMem() *Code { c.b = append(c.b, 0x48, 0xFF, 0x00); return c }

// JumpTo jumps back to offset target (a short jump).
func (c *Code) JumpTo(target int) *Code {
	c.b = append(c.b, 0xEB, byte(target-(len(c.b)+2)))
	return c
}

// Reg is an x86-64 general-purpose register, numbered as in the encoding.
type Reg byte

// General-purpose registers.
const (
	RAX Reg = iota
	RCX
	RDX
	RBX
	RSP
	RBP
	RSI
	RDI
	R8
	R9
	R10
	R11
	R12
	R13
	R14
	R15
)

// Cond is the condition of a conditional jump (the low nibble of Jcc).
type Cond byte

// Jump conditions after Cmp: unsigned comparisons and equality.
const (
	Below      Cond = 0x2
	AboveEqual Cond = 0x3
	Equal      Cond = 0x4
	NotEqual   Cond = 0x5
	BelowEqual Cond = 0x6
	Above      Cond = 0x7
)

// rexW emits a REX.W prefix for a ModRM with reg and rm.
func (c *Code) rexW(reg, rm Reg) {
	c.b = append(c.b, 0x48|byte(reg>>3)<<2|byte(rm>>3))
}

// modRMReg emits a register-direct ModRM byte.
func (c *Code) modRMReg(reg, rm Reg) { c.b = append(c.b, 0xC0|byte(reg&7)<<3|byte(rm&7)) }

// modRMMem emits a ModRM (and SIB where needed) for [base+disp32].
func (c *Code) modRMMem(reg, base Reg, disp int32) {
	c.b = append(c.b, 0x80|byte(reg&7)<<3|byte(base&7))
	if base&7 == 4 {
		c.b = append(c.b, 0x24)
	}
	c.b = binary.LittleEndian.AppendUint32(c.b, uint32(disp))
}

// MovImm loads a 64-bit immediate into r.
func (c *Code) MovImm(r Reg, v uint64) *Code {
	c.b = append(c.b, 0x48|byte(r>>3), 0xB8|byte(r&7))
	c.b = binary.LittleEndian.AppendUint64(c.b, v)
	return c
}

// MovReg copies src into dst.
func (c *Code) MovReg(dst, src Reg) *Code {
	c.rexW(src, dst)
	c.b = append(c.b, 0x89)
	c.modRMReg(src, dst)
	return c
}

// Load loads the qword at [base+disp] into dst.
func (c *Code) Load(dst, base Reg, disp int32) *Code {
	c.rexW(dst, base)
	c.b = append(c.b, 0x8B)
	c.modRMMem(dst, base, disp)
	return c
}

// Store stores src as a qword at [base+disp].
func (c *Code) Store(base Reg, disp int32, src Reg) *Code {
	c.rexW(src, base)
	c.b = append(c.b, 0x89)
	c.modRMMem(src, base, disp)
	return c
}

// group1 emits an 0x81 /op instruction with a 32-bit immediate on r.
func (c *Code) group1(op byte, r Reg, imm int32) *Code {
	c.rexW(0, r)
	c.b = append(c.b, 0x81, 0xC0|op<<3|byte(r&7))
	c.b = binary.LittleEndian.AppendUint32(c.b, uint32(imm))
	return c
}

// AddImm adds a sign-extended 32-bit immediate to r.
func (c *Code) AddImm(r Reg, imm int32) *Code { return c.group1(0, r, imm) }

// AndImm ands r with a sign-extended 32-bit immediate.
func (c *Code) AndImm(r Reg, imm int32) *Code { return c.group1(4, r, imm) }

// CmpImm compares r with a sign-extended 32-bit immediate (r - imm).
func (c *Code) CmpImm(r Reg, imm int32) *Code { return c.group1(7, r, imm) }

// AddReg adds src to dst.
func (c *Code) AddReg(dst, src Reg) *Code {
	c.rexW(src, dst)
	c.b = append(c.b, 0x01)
	c.modRMReg(src, dst)
	return c
}

// SubReg subtracts src from dst.
func (c *Code) SubReg(dst, src Reg) *Code {
	c.rexW(src, dst)
	c.b = append(c.b, 0x29)
	c.modRMReg(src, dst)
	return c
}

// Cmp compares a with b (a - b) for a following JumpIf.
func (c *Code) Cmp(a, b Reg) *Code {
	c.rexW(b, a)
	c.b = append(c.b, 0x39)
	c.modRMReg(b, a)
	return c
}

// ShlImm shifts r left by n bits.
func (c *Code) ShlImm(r Reg, n byte) *Code {
	c.rexW(0, r)
	c.b = append(c.b, 0xC1, 0xE0|byte(r&7), n)
	return c
}

// Inc increments r.
func (c *Code) Inc(r Reg) *Code {
	c.rexW(0, r)
	c.b = append(c.b, 0xFF, 0xC0|byte(r&7))
	return c
}

// Pause emits PAUSE (a spin-loop hint).
func (c *Code) Pause() *Code { c.b = append(c.b, 0xF3, 0x90); return c }

// JumpIf jumps to offset target when cc holds (near jump, any distance).
func (c *Code) JumpIf(cc Cond, target int) *Code {
	c.b = append(c.b, 0x0F, 0x80|byte(cc))
	c.b = binary.LittleEndian.AppendUint32(c.b, uint32(int32(target-(len(c.b)+4))))
	return c
}

// Jump jumps to offset target (near jump, any distance).
func (c *Code) Jump(target int) *Code {
	c.b = append(c.b, 0xE9)
	c.b = binary.LittleEndian.AppendUint32(c.b, uint32(int32(target-(len(c.b)+4))))
	return c
}

// JumpIfForward emits a conditional jump whose target is not known yet and
// returns a fixup to pass to Land once it is.
func (c *Code) JumpIfForward(cc Cond) int {
	c.b = append(c.b, 0x0F, 0x80|byte(cc), 0, 0, 0, 0)
	return len(c.b) - 4
}

// Land points the forward jump with fixup at the current offset.
func (c *Code) Land(fixup int) *Code {
	binary.LittleEndian.PutUint32(c.b[fixup:], uint32(int32(len(c.b)-(fixup+4))))
	return c
}
