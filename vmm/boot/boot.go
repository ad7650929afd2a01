// Package boot loads a Linux kernel and initrd into guest memory and prepares
// the initial CPU state for the boot CPU.
//
// Two kernel formats are supported:
//
//   - PVH: an ELF64 vmlinux carrying the Xen PVH entry note
//     (XEN_ELFNOTE_PHYS32_ENTRY). The kernel starts in 32-bit protected mode
//     with paging off and EBX pointing at a struct hvm_start_info.
//   - bzImage: the Linux x86 boot protocol (2.12 or later) entered through its
//     64-bit entry point, with identity-mapped page tables and RSI pointing at
//     struct boot_params (the "zero page").
//
// The package knows nothing about KVM: it writes guest memory through
// guestmem.Memory and describes the CPU with plain Go structs (CPUState) that
// the VMM translates to its hypervisor's register types. Kernel and initrd
// files are untrusted input: every field is bounds-checked and malformed
// files give errors, never panics.
//
// The guest physical addresses of the boot structures come from vmm/layout:
// the GDT, the PVH start info or the bzImage zero page, page tables for an
// identity map of the first GiB with 2 MiB pages (bzImage only), the command
// line, and the kernel at 1 MiB (or its pref_address; PVH kernels load at
// their ELF physical addresses).
package boot

import (
	"errors"
	"fmt"
	"io"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/layout"
)

// Guest physical addresses of the boot structures (vmm/layout defines them).
const (
	GDTAddr         = layout.BootGDT
	StartInfoAddr   = layout.PVHStartInfo // PVH struct hvm_start_info
	ZeroPageAddr    = layout.ZeroPage     // bzImage struct boot_params
	BootStackTop    = layout.BootStackTop
	PML4Addr        = layout.BootPML4
	PDPTAddr        = layout.BootPDPT
	PDAddr          = layout.BootPD
	CmdlineAddr     = layout.Cmdline
	CmdlineMax      = layout.CmdlineMax // bytes at CmdlineAddr, including the terminating NUL
	EBDAStart       = layout.EBDAStart
	ACPIStart       = layout.ACPITables
	RSDPAddr        = layout.ACPITables // where the VMM puts the ACPI RSDP
	HighMemStart    = layout.LowMemReserved
	BzImageLoadAddr = layout.KernelLoad // default load address of the protected-mode kernel
	MMIOHoleStart   = layout.LowRAMEnd
	HighRAMStart    = layout.HighRAMStart
	MinRAMSize      = layout.MinRAM

	pageSize = 0x1000
)

// Sentinel errors. Errors returned by this package wrap one of these (and
// sometimes guestmem.ErrOutOfRange) so callers can branch with errors.Is.
var (
	// ErrUnknownFormat: the kernel is neither an ELF file nor a bzImage.
	ErrUnknownFormat = errors.New("unknown kernel format")
	// ErrTruncated: the file ends before a structure it declares.
	ErrTruncated = errors.New("kernel file truncated")
	// ErrMalformed: a header field is inconsistent or out of range.
	ErrMalformed = errors.New("malformed kernel file")
	// ErrNoPVHNote: an ELF kernel without the Xen PVH entry note.
	ErrNoPVHNote = errors.New("ELF kernel has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
	// ErrUnsupported: a well-formed kernel this loader cannot boot (wrong
	// architecture, boot protocol too old, no 64-bit entry point, ...).
	ErrUnsupported = errors.New("unsupported kernel")
	// ErrNoFit: the kernel or initrd does not fit in guest RAM.
	ErrNoFit = errors.New("does not fit in guest memory")
	// ErrCmdlineTooLong: the command line exceeds CmdlineMax-1 bytes or the
	// kernel's own limit.
	ErrCmdlineTooLong = errors.New("kernel command line too long")
	// ErrBadParams: invalid Params (nil kernel, RAM too small, ...).
	ErrBadParams = errors.New("invalid boot parameters")
)

// Format is a kernel image format.
type Format int

// Kernel formats.
const (
	FormatUnknown Format = iota
	FormatPVH            // ELF vmlinux with a PVH entry note
	FormatBzImage        // Linux x86 boot protocol image, 64-bit entry
)

func (f Format) String() string {
	switch f {
	case FormatPVH:
		return "pvh"
	case FormatBzImage:
		return "bzImage"
	default:
		return "unknown"
	}
}

// Params says what to boot.
type Params struct {
	Kernel     io.ReaderAt // kernel image (PVH ELF or bzImage); required
	KernelSize int64       // size of Kernel in bytes
	Initrd     io.ReaderAt // optional initrd; nil for none
	InitrdSize int64       // size of Initrd in bytes
	Cmdline    string      // kernel command line, at most CmdlineMax-1 bytes
	RAMSize    uint64      // guest RAM size; laid out by BuildE820
	RSDPAddr   uint64      // GPA of the ACPI RSDP, 0 if none
}

// Result describes what Load placed in guest memory and how to start the CPU.
type Result struct {
	Format      Format
	Entry       uint64 // guest physical entry point (equal to CPU.RIP)
	CPU         CPUState
	KernelStart uint64 // first GPA the kernel occupies
	KernelEnd   uint64 // first GPA after the kernel, including room it needs to run (bzImage init_size)
	InitrdAddr  uint64 // 0 if no initrd
	InitrdSize  uint64
	BootInfo    uint64 // GPA of hvm_start_info (PVH) or boot_params (bzImage)
	CmdlineAddr uint64
	E820        []E820Entry
}

// Load detects the kernel format, loads kernel and initrd into mem, writes the
// command line, memory map and boot information structures, and returns the
// initial CPU state of the boot CPU.
func Load(mem *guestmem.Memory, p Params) (*Result, error) {
	if mem == nil {
		return nil, fmt.Errorf("%w: nil guest memory", ErrBadParams)
	}
	if p.Kernel == nil {
		return nil, fmt.Errorf("%w: no kernel", ErrBadParams)
	}
	if p.KernelSize < 0 || p.InitrdSize < 0 {
		return nil, fmt.Errorf("%w: negative file size", ErrBadParams)
	}
	if p.Initrd == nil && p.InitrdSize != 0 {
		return nil, fmt.Errorf("%w: initrd size %d without initrd", ErrBadParams, p.InitrdSize)
	}
	if len(p.Cmdline) > CmdlineMax-1 {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrCmdlineTooLong, len(p.Cmdline), CmdlineMax-1)
	}
	e820, err := BuildE820(p.RAMSize)
	if err != nil {
		return nil, err
	}
	format, err := DetectFormat(p.Kernel, p.KernelSize)
	if err != nil {
		return nil, err
	}
	res := &Result{Format: format, CmdlineAddr: CmdlineAddr, E820: e820}
	switch format {
	case FormatPVH:
		err = loadPVH(mem, p, res)
	case FormatBzImage:
		err = loadBzImage(mem, p, res)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// writeCmdline writes the NUL-terminated command line at CmdlineAddr.
func writeCmdline(mem *guestmem.Memory, cmdline string) error {
	buf := make([]byte, len(cmdline)+1)
	copy(buf, cmdline)
	if err := mem.WriteAt(buf, CmdlineAddr); err != nil {
		return fmt.Errorf("boot: writing command line: %w", err)
	}
	return nil
}

// loadInitrd places the initrd below limit avoiding the kernel and copies it
// into guest memory.
func loadInitrd(mem *guestmem.Memory, p Params, limit uint64, res *Result) error {
	if p.Initrd == nil {
		return nil
	}
	size := uint64(p.InitrdSize)
	addr, err := PlaceInitrd(size, limit, res.KernelStart, res.KernelEnd)
	if err != nil {
		return err
	}
	dst, err := mem.Slice(addr, size)
	if err != nil {
		return fmt.Errorf("boot: initrd at %#x: %w: %w", addr, ErrNoFit, err)
	}
	if err := readFull(p.Initrd, dst, 0); err != nil {
		return fmt.Errorf("boot: reading initrd: %w", err)
	}
	res.InitrdAddr, res.InitrdSize = addr, size
	return nil
}

// PlaceInitrd returns the highest page-aligned address a at or above
// HighMemStart with a+size <= limit and [a, a+size) not overlapping
// [kernelStart, kernelEnd). A size of 0 yields address 0.
func PlaceInitrd(size, limit, kernelStart, kernelEnd uint64) (uint64, error) {
	if size == 0 {
		return 0, nil
	}
	try := func(top uint64) (uint64, bool) {
		if top < size {
			return 0, false
		}
		a := (top - size) &^ (pageSize - 1)
		return a, a >= HighMemStart
	}
	a, ok := try(limit)
	if ok && (a >= kernelEnd || a+size <= kernelStart) {
		return a, nil
	}
	if ok && kernelStart < limit {
		// Overlaps the kernel: go below it.
		if a, ok := try(kernelStart); ok {
			return a, nil
		}
	}
	return 0, fmt.Errorf("boot: initrd of %d bytes below %#x avoiding kernel [%#x,%#x): %w",
		size, limit, kernelStart, kernelEnd, ErrNoFit)
}

// readFull fills dst from r at off; a short read is ErrTruncated.
func readFull(r io.ReaderAt, dst []byte, off int64) error {
	n, err := r.ReadAt(dst, off)
	if n == len(dst) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: short read of %d bytes at offset %#x (got %d)", ErrTruncated, len(dst), off, n)
	}
	return err
}
