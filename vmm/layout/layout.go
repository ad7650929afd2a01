// Package layout is the guest physical map of a RainForest subOS, in one
// place: where the boot structures, RAM, the PCI MMIO window and the
// platform's fixed MMIO and I/O port ranges are. The boot loader, the ACPI
// tables, the PCI bus and the VMM all take their addresses from here.
//
// Memory (guest physical):
//
//	0x0000_0500  boot GDT
//	0x0000_6000  PVH hvm_start_info, its module list and memory map (to 0x6FFF)
//	0x0000_7000  bzImage boot_params (the zero page)
//	0x0000_8FF0  initial stack pointer
//	0x0000_9000  PML4, 0xA000 PDPT, 0xB000 PD: identity map of the first GiB
//	0x0002_0000  kernel command line (CmdlineMax bytes)
//	0x0009_FC00  EBDA (reserved) up to 0xA0000
//	0x000E_0000  ACPI tables (RSDP first), reserved up to 1 MiB
//	0x0010_0000  kernel (bzImage protected-mode code; PVH at its ELF addresses)
//	...          RAM up to min(memory, LowRAMEnd)
//	0xC000_0000  PCI MMIO window (BARs), up to 0xE000_0000
//	0xFEB0_0000  guest status register (4 KiB)
//	0xFEC0_0000  IOAPIC
//	0xFEE0_0000  local APICs
//	0xFFFB_C000  KVM identity map page (Intel), 0xFFFB_D000 TSS (3 pages)
//	0x1_0000_0000 RAM above LowRAMEnd continues here
//	...          hotplug memory (virtio-mem) from the next GiB boundary (HotplugBase)
//
// I/O ports: COM1 at 0x3F8, the guest status port 0x501, the ACPI PM1a
// event, control and timer blocks at 0x600-0x60B, the GPE0 block at
// 0x610-0x613, the PCI hotplug registers at 0x620-0x62B, the PCI
// configuration ports 0xCF8-0xCFF (the reset register is 0xCF9).
package layout

// Boot structures in low memory.
const (
	BootGDT         = 0x500
	PVHStartInfo    = 0x6000 // struct hvm_start_info
	ZeroPage        = 0x7000 // struct boot_params
	BootStackTop    = 0x8FF0
	BootPML4        = 0x9000
	BootPDPT        = 0xA000
	BootPD          = 0xB000
	Cmdline         = 0x20000
	CmdlineMax      = 4096 // bytes at Cmdline, including the NUL
	EBDAStart       = 0x9FC00
	EBDAEnd         = 0xA0000
	ACPITables      = 0xE0000 // the RSDP is first
	ACPITablesMax   = 0x20000 // room up to 1 MiB
	KernelLoad      = 0x100000
	LowMemReserved  = 0x100000 // below this: boot structures and legacy areas
	MinRAM          = 2 << 20
	LowRAMEnd       = 0xC000_0000 // RAM above this moves to HighRAMStart
	HighRAMStart    = 0x1_0000_0000
	PCIMMIOStart    = 0xC000_0000 // the PCI BAR window
	PCIMMIOEnd      = 0xE000_0000 // exclusive
	GuestStatusMMIO = 0xFEB0_0000 // memory-mapped alias of GuestStatusPort
	GuestStatusLen  = 0x1000
	IOAPIC          = 0xFEC0_0000
	LocalAPIC       = 0xFEE0_0000
	KVMIdentityMap  = 0xFFFB_C000 // one page KVM needs on Intel
	KVMTSS          = 0xFFFB_D000 // three pages KVM needs on Intel
)

// I/O ports.
const (
	COM1Port        = 0x3F8
	COM1Len         = 8
	GuestStatusPort = 0x501
	PM1aEventPort   = 0x600 // status (2 bytes) + enable (2 bytes)
	PM1aEventLen    = 4
	PM1aControlPort = 0x604
	PM1aControlLen  = 2
	PMTimerPort     = 0x608
	PMTimerLen      = 4
	GPE0Port        = 0x610 // status (2 bytes) + enable (2 bytes)
	GPE0Len         = 4
	PCIHotplugPort  = 0x620 // up, down, eject: 32 bits each
	PCIHotplugLen   = 12
	PCIConfigPort   = 0xCF8 // address at 0xCF8, data at 0xCFC-0xCFF
	PCIConfigLen    = 8
	ResetPort       = 0xCF9 // inside the PCI configuration range
)

// Interrupt lines (GSIs of the in-kernel IOAPIC).
const (
	COM1GSI = 4
	SCIGSI  = 9
	// PCIINTxGSIBase..+PCIINTxGSICount are the PCI INTx inputs the DSDT's
	// _PRT routes slots to.
	PCIINTxGSIBase  = 16
	PCIINTxGSICount = 8
	// IOAPICPins is the number of IOAPIC inputs; GSIs from here on are
	// free for MSI routes.
	IOAPICPins = 24
	// MaxGSI bounds the GSIs the VMM allocates.
	MaxGSI = 1024
)

// HotplugAlign aligns the hotplug memory region (virtio-mem), which
// starts at the first multiple of it at or above the end of RAM and
// above 4 GiB.
const HotplugAlign = 1 << 30

// HotplugBase returns the guest physical address of the hotplug memory
// region of a guest with memSize bytes of RAM.
func HotplugBase(memSize uint64) uint64 {
	end := uint64(HighRAMStart)
	if memSize > LowRAMEnd {
		end += memSize - LowRAMEnd
	}
	return (end + HotplugAlign - 1) &^ (HotplugAlign - 1)
}
