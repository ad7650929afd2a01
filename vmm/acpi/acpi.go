// Package acpi builds the ACPI tables a RainForest guest boots with.
//
// Build lays out, contiguously from a base guest physical address, an RSDP
// (revision 2), a FACS, an XSDT, a FADT (revision 6, not hardware-reduced),
// a MADT and a DSDT. The MADT is what lets an SMP Linux without MP-table
// support bring up its APs; the FADT points Linux at the PM registers the
// vmm/platform devices emulate (power-off through PM1a_CNT and _S5, reboot
// through the reset register at 0xCF9, the 32-bit PM timer); the DSDT, in
// AML written by this package's own encoder, describes the PCI root bridge
// and COM1, with a _PRT that routes every slot's INTx pins to IOAPIC inputs
// PCIINTxGSIBase.. (see PCIINTxGSI).
//
// # PCI hotplug
//
// With Config.HotplugSlots non-zero the tables also describe ACPI PCI
// hotplug for those slots of bus 0, which Linux's acpiphp driver handles
// with no guest-side setup. The VMM must then place the two register blocks
// behind them (vmm/platform.GPEBlock at GPE0Port, vmm/platform/hotplug's
// Controller at PCIHotplugPort) and wire the GPE block to the SCI:
//
//   - The FADT gets a GPE0 block (GPE0_BLK and X_GPE0_BLK at GPE0Port,
//     GPE0_BLK_LEN 4: two status bytes, then two enable bytes; GPEs 0-15).
//   - Under \_SB.PCI0: OperationRegion PCHP (SystemIO, PCIHotplugPort,
//     PCIHotplugLen) with the DWord fields PCIU (offset 0, slots with a
//     device check pending, cleared by reading), PCID (offset 4, slots with
//     an eject request pending) and PCEJ (offset 8, write-only: the guest
//     ejects the slots whose bits it writes); a PNP0C02 device PHPR whose
//     _CRS reserves those ports; one Device(Sxx) per slot (xx the slot in
//     hex) with _ADR (slot<<16), _SUN (slot) and _EJ0, which writes
//     1<<slot to PCEJ; method DVNT(bits, event), which notifies every Sxx
//     whose bit is set in bits; and the serialized method PCNT, which reads
//     PCIU and PCID and notifies device check (1) for the slots in the
//     first and eject request (3) for those in the second.
//   - \_GPE._E01 (GPE PCIHotplugGPE, edge-triggered: the OS clears the
//     status bit before running it) calls \_SB.PCI0.PCNT.
package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"

	"rainforest/vmm/layout"
)

// Guest physical layout and I/O ports the tables describe (vmm/layout
// defines them; the names here are the tables' view).
const (
	// DefaultBase is where the tables go (and so the RSDP), inside the
	// reserved BIOS area.
	DefaultBase = layout.ACPITables
	// MaxSize is the room reserved for the tables at DefaultBase.
	MaxSize = layout.ACPITablesMax

	LocalAPICAddress = layout.LocalAPIC
	IOAPICAddress    = layout.IOAPIC

	PM1aEventPort   = layout.PM1aEventPort // PM1a_EVT_BLK: status (2 bytes) + enable (2 bytes)
	PM1aEventLen    = layout.PM1aEventLen
	PM1aControlPort = layout.PM1aControlPort // PM1a_CNT_BLK
	PM1aControlLen  = layout.PM1aControlLen
	PMTimerPort     = layout.PMTimerPort // PM_TMR_BLK, 32-bit timer (TMR_VAL_EXT)
	PMTimerLen      = layout.PMTimerLen
	ResetPort       = layout.ResetPort // RESET_REG (system I/O)
	ResetValue      = 0x06             // RESET_VALUE
	SCIIRQ          = layout.SCIGSI    // SCI_INT

	// GPE0Port is GPE0_BLK (only with Config.HotplugSlots set): status
	// at GPE0Port..+1, enable at GPE0Port+2..+3.
	GPE0Port = layout.GPE0Port
	GPE0Len  = layout.GPE0Len
	// PCIHotplugPort is the PCI hotplug register block the DSDT's
	// OperationRegion PCHP covers (only with Config.HotplugSlots set):
	// PCIU at +0, PCID at +4, PCEJ at +8, 32 bits each.
	PCIHotplugPort = layout.PCIHotplugPort
	PCIHotplugLen  = layout.PCIHotplugLen
	// PCIHotplugGPE is the general-purpose event the hotplug registers
	// raise; \_GPE._E01 handles it.
	PCIHotplugGPE = 1

	// SleepTypeSoftOff is the SLP_TYP value _S5 advertises.
	SleepTypeSoftOff = 5

	COM1Port = layout.COM1Port
	COM1IRQ  = layout.COM1GSI

	PCIConfigPort   = layout.PCIConfigPort
	PCISlots        = 32 // device slots on bus 0, all described by _PRT
	PCIMMIOBase     = layout.PCIMMIOStart
	PCIMMIOLast     = layout.PCIMMIOEnd - 1
	MaxCPUs         = 254
	tableHeaderSize = 36
)

// Legacy PCI interrupt routing described by \_SB.PCI0._PRT. Pin p of slot
// s (p = 1 for INTA# .. 4 for INTD#, as in the Interrupt Pin register) is
// wired to GSI PCIINTxGSIBase + (s + p - 1) % PCIINTxGSICount: INTA# of slot
// s goes to GSI 16 + s%8, and INTB#..INTD# follow the usual swizzle. These
// GSIs are IOAPIC inputs 16..23; _PRT entries naming a GSI directly mean
// level-triggered, active-low, shareable, which the guest programs into
// the IOAPIC (KVM's IOAPIC treats a KVM_IRQ_LINE level of 1 as asserted
// whatever the polarity bit says).
const (
	PCIINTxGSIBase  = layout.PCIINTxGSIBase
	PCIINTxGSICount = layout.PCIINTxGSICount
)

// PCIINTxGSI returns the GSI that interrupt pin pin (1..4, INTA#..INTD#)
// of slot is wired to, or 0 and false for a slot or pin out of range.
func PCIINTxGSI(slot, pin int) (uint32, bool) {
	if slot < 0 || slot >= PCISlots || pin < 1 || pin > 4 {
		return 0, false
	}
	return uint32(PCIINTxGSIBase + (slot+pin-1)%PCIINTxGSICount), true
}

// ErrInvalidConfig is returned (wrapped) when Config or base is unusable.
var ErrInvalidConfig = errors.New("acpi: invalid configuration")

// ErrTooLarge is returned (wrapped) when the tables would not fit in MaxSize
// or below 4 GiB.
var ErrTooLarge = errors.New("acpi: tables too large")

// AllHotplugSlots is the HotplugSlots value describing every slot but the
// host bridge's (1..31).
const AllHotplugSlots = 0xFFFFFFFE

// Config says what the tables describe.
type Config struct {
	// NumCPUs is the number of vCPUs, 1..MaxCPUs. vCPU i gets local APIC
	// id i and ACPI processor UID i; the IOAPIC gets id NumCPUs.
	NumCPUs int
	// HotplugSlots is a bitmap of the bus-0 slots described as
	// hot-pluggable (bit s for slot s; bit 0, the host bridge, must be
	// clear). Zero leaves out the GPE block and all hotplug AML (see the
	// package comment).
	HotplugSlots uint32
}

// Table identification written into every header.
const (
	oemID       = "RNFRST"   // 6 bytes
	oemTableID  = "RAINFRST" // 8 bytes
	creatorID   = "RNFT"     // 4 bytes
	hypervisor  = "RAINFRST" // 8 bytes, FADT Hypervisor Vendor Identity
	oemRevision = 1
)

// Build returns the tables laid out for guest physical address base, and the
// GPA of the RSDP (which is base). base must be 16-byte aligned and the
// tables must end below 4 GiB (the FADT's 32-bit pointers are filled too).
func Build(cfg Config, base uint64) (tables []byte, rsdp uint64, err error) {
	if cfg.NumCPUs < 1 || cfg.NumCPUs > MaxCPUs {
		return nil, 0, fmt.Errorf("%w: NumCPUs %d not in 1..%d", ErrInvalidConfig, cfg.NumCPUs, MaxCPUs)
	}
	if cfg.HotplugSlots&1 != 0 {
		return nil, 0, fmt.Errorf("%w: HotplugSlots %#x includes slot 0, the host bridge", ErrInvalidConfig, cfg.HotplugSlots)
	}
	if base%16 != 0 {
		return nil, 0, fmt.Errorf("%w: base %#x not 16-byte aligned", ErrInvalidConfig, base)
	}
	dsdt, err := buildDSDT(cfg)
	if err != nil {
		return nil, 0, err
	}
	madt := buildMADT(cfg)

	// Layout: RSDP, FACS (64-byte aligned), XSDT, FADT, MADT, DSDT.
	const rsdpOff = 0
	const facsOff = 64
	const facsLen = 64
	const xsdtOff = facsOff + facsLen
	const xsdtLen = tableHeaderSize + 2*8
	fadtOff := align16(xsdtOff + xsdtLen)
	madtOff := align16(fadtOff + fadtLen)
	dsdtOff := align16(madtOff + len(madt))
	total := dsdtOff + len(dsdt)
	if total > MaxSize {
		return nil, 0, fmt.Errorf("%w: %d bytes, room for %d", ErrTooLarge, total, MaxSize)
	}
	if base > 1<<32-uint64(total) {
		return nil, 0, fmt.Errorf("%w: %d bytes at %#x cross 4 GiB", ErrTooLarge, total, base)
	}

	buf := make([]byte, total)
	gpa := func(off int) uint64 { return base + uint64(off) }

	copy(buf[facsOff:], buildFACS())
	copy(buf[fadtOff:], buildFADT(cfg, gpa(facsOff), gpa(dsdtOff)))
	copy(buf[madtOff:], madt)
	copy(buf[dsdtOff:], dsdt)
	copy(buf[xsdtOff:], buildXSDT(gpa(fadtOff), gpa(madtOff)))
	copy(buf[rsdpOff:], buildRSDP(gpa(xsdtOff)))
	return buf, base, nil
}

func align16(n int) int { return (n + 15) &^ 15 }

// checksum returns the byte that makes b sum to zero.
func checksum(b []byte) byte {
	var s byte
	for _, x := range b {
		s += x
	}
	return -s
}

// header fills the standard 36-byte description header at the start of t
// (whose final length is len(t)) and its checksum, which must come last.
func header(t []byte, sig string, revision byte) {
	copy(t[0:4], sig)
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[8] = revision
	t[9] = 0
	copy(t[10:16], oemID)
	copy(t[16:24], oemTableID)
	binary.LittleEndian.PutUint32(t[24:], oemRevision)
	copy(t[28:32], creatorID)
	binary.LittleEndian.PutUint32(t[32:], 1)
	t[9] = checksum(t)
}

// RSDP layout (ACPI 6.x, 5.2.5.3).
const (
	rsdpLen         = 36
	rsdpV1Len       = 20
	rsdpChecksumOff = 8
	rsdpRevisionOff = 15
	rsdpRSDTOff     = 16
	rsdpLengthOff   = 20
	rsdpXSDTOff     = 24
	rsdpExtCksumOff = 32
)

func buildRSDP(xsdt uint64) []byte {
	r := make([]byte, rsdpLen)
	copy(r, "RSD PTR ")
	copy(r[9:15], oemID)
	r[rsdpRevisionOff] = 2
	binary.LittleEndian.PutUint32(r[rsdpRSDTOff:], 0)
	binary.LittleEndian.PutUint32(r[rsdpLengthOff:], rsdpLen)
	binary.LittleEndian.PutUint64(r[rsdpXSDTOff:], xsdt)
	r[rsdpChecksumOff] = checksum(r[:rsdpV1Len])
	r[rsdpExtCksumOff] = checksum(r)
	return r
}

func buildXSDT(entries ...uint64) []byte {
	t := make([]byte, tableHeaderSize+8*len(entries))
	for i, e := range entries {
		binary.LittleEndian.PutUint64(t[tableHeaderSize+8*i:], e)
	}
	header(t, "XSDT", 1)
	return t
}

// buildFACS returns a 64-byte FACS, version 2, no global lock, no waking
// vector (the guest has no sleep states but S5).
func buildFACS() []byte {
	f := make([]byte, 64)
	copy(f, "FACS")
	binary.LittleEndian.PutUint32(f[4:], 64)
	f[32] = 2 // Version
	return f
}

// FADT layout (ACPI 6.x, table 5.9): byte offsets of the fields set here.
const (
	fadtLen              = 276
	fadtFirmwareCtrl     = 36
	fadtDSDT             = 40
	fadtSCIInt           = 46
	fadtSMICmd           = 48
	fadtPM1aEvtBlk       = 56
	fadtPM1aCntBlk       = 64
	fadtPMTmrBlk         = 76
	fadtGPE0Blk          = 80
	fadtPM1EvtLen        = 88
	fadtPM1CntLen        = 89
	fadtPMTmrLen         = 91
	fadtGPE0BlkLen       = 92
	fadtPLvl2Lat         = 96
	fadtPLvl3Lat         = 98
	fadtIAPCBootArch     = 109
	fadtFlags            = 112
	fadtResetReg         = 116
	fadtResetValue       = 128
	fadtMinorVersion     = 131
	fadtXFirmwareCtrl    = 132
	fadtXDSDT            = 140
	fadtXPM1aEvtBlk      = 148
	fadtXPM1aCntBlk      = 172
	fadtXPMTmrBlk        = 208
	fadtXGPE0Blk         = 220
	fadtHypervisorVendor = 268
)

// FADT flags (ACPI 6.x, table 5.10).
const (
	FADTFlagWBINVD      = 1 << 0
	FADTFlagProcC1      = 1 << 2
	FADTFlagPwrButton   = 1 << 4 // set: no fixed-feature power button
	FADTFlagSlpButton   = 1 << 5 // set: no fixed-feature sleep button
	FADTFlagTmrValExt   = 1 << 8 // set: PM timer is 32 bits wide
	FADTFlagResetRegSup = 1 << 10
	FADTFlagHWReduced   = 1 << 20
)

// IA-PC boot architecture flags (ACPI 6.x, table 5.11).
const (
	BootArchVGANotPresent     = 1 << 2
	BootArchCMOSRTCNotPresent = 1 << 5
)

// Generic Address Structure address space ids and access sizes.
const (
	gasSystemIO   = 1
	gasAccessByte = 1
)

// putGAS writes a 12-byte Generic Address Structure.
func putGAS(b []byte, space, bitWidth, access byte, addr uint64) {
	b[0] = space
	b[1] = bitWidth
	b[2] = 0
	b[3] = access
	binary.LittleEndian.PutUint64(b[4:], addr)
}

func buildFADT(cfg Config, facs, dsdt uint64) []byte {
	t := make([]byte, fadtLen)
	le := binary.LittleEndian
	le.PutUint32(t[fadtFirmwareCtrl:], uint32(facs))
	le.PutUint32(t[fadtDSDT:], uint32(dsdt))
	le.PutUint16(t[fadtSCIInt:], SCIIRQ)
	le.PutUint32(t[fadtSMICmd:], 0) // no SMI command port: ACPI mode always on
	le.PutUint32(t[fadtPM1aEvtBlk:], PM1aEventPort)
	le.PutUint32(t[fadtPM1aCntBlk:], PM1aControlPort)
	le.PutUint32(t[fadtPMTmrBlk:], PMTimerPort)
	t[fadtPM1EvtLen] = PM1aEventLen
	t[fadtPM1CntLen] = PM1aControlLen
	t[fadtPMTmrLen] = PMTimerLen
	le.PutUint16(t[fadtPLvl2Lat:], 101)  // > 100: C2 not supported
	le.PutUint16(t[fadtPLvl3Lat:], 1001) // > 1000: C3 not supported
	le.PutUint16(t[fadtIAPCBootArch:], BootArchVGANotPresent|BootArchCMOSRTCNotPresent)
	le.PutUint32(t[fadtFlags:], FADTFlagWBINVD|FADTFlagProcC1|FADTFlagPwrButton|
		FADTFlagSlpButton|FADTFlagTmrValExt|FADTFlagResetRegSup)
	putGAS(t[fadtResetReg:], gasSystemIO, 8, gasAccessByte, ResetPort)
	t[fadtResetValue] = ResetValue
	t[fadtMinorVersion] = 0
	// X_FIRMWARE_CTRL stays 0: ACPI allows only one FACS pointer to be
	// non-zero, and the FACS lies below 4 GiB.
	le.PutUint64(t[fadtXDSDT:], dsdt)
	putGAS(t[fadtXPM1aEvtBlk:], gasSystemIO, 8*PM1aEventLen, 0, PM1aEventPort)
	putGAS(t[fadtXPM1aCntBlk:], gasSystemIO, 8*PM1aControlLen, 0, PM1aControlPort)
	putGAS(t[fadtXPMTmrBlk:], gasSystemIO, 8*PMTimerLen, 0, PMTimerPort)
	if cfg.HotplugSlots != 0 {
		le.PutUint32(t[fadtGPE0Blk:], GPE0Port)
		t[fadtGPE0BlkLen] = GPE0Len
		putGAS(t[fadtXGPE0Blk:], gasSystemIO, 8*GPE0Len, 0, GPE0Port)
	}
	copy(t[fadtHypervisorVendor:], hypervisor)
	header(t, "FACP", 6)
	return t
}

// MADT layout (ACPI 6.x, 5.2.12).
const (
	madtLocalAPICAddr = 36
	madtFlags         = 40
	madtEntriesOff    = 44
	madtPCATCompat    = 1

	madtTypeLocalAPIC      = 0
	madtTypeIOAPIC         = 1
	madtTypeSourceOverride = 2
	madtTypeLocalAPICNMI   = 4

	madtLocalAPICLen      = 8
	madtIOAPICLen         = 12
	madtSourceOverrideLen = 10
	madtLocalAPICNMILen   = 6

	madtLAPICEnabled = 1
	// MPS INTI flags: polarity bits 0-1, trigger mode bits 2-3.
	mpsActiveHigh   = 0x1
	mpsLevelTrigger = 0xC
	allProcessors   = 0xFF
)

func buildMADT(cfg Config) []byte {
	le := binary.LittleEndian
	t := make([]byte, madtEntriesOff)
	le.PutUint32(t[madtLocalAPICAddr:], LocalAPICAddress)
	le.PutUint32(t[madtFlags:], madtPCATCompat)
	for i := 0; i < cfg.NumCPUs; i++ {
		// Type, length, ACPI processor UID, APIC id, flags.
		t = append(t, madtTypeLocalAPIC, madtLocalAPICLen, byte(i), byte(i))
		t = le.AppendUint32(t, madtLAPICEnabled)
	}
	t = append(t, madtTypeIOAPIC, madtIOAPICLen, byte(cfg.NumCPUs), 0)
	t = le.AppendUint32(t, IOAPICAddress)
	t = le.AppendUint32(t, 0) // GSI base
	override := func(irq byte, gsi uint32, flags uint16) {
		t = append(t, madtTypeSourceOverride, madtSourceOverrideLen, 0 /* ISA */, irq)
		t = le.AppendUint32(t, gsi)
		t = le.AppendUint16(t, flags)
	}
	override(0, 2, 0)
	override(SCIIRQ, SCIIRQ, mpsActiveHigh|mpsLevelTrigger)
	t = append(t, madtTypeLocalAPICNMI, madtLocalAPICNMILen, allProcessors)
	t = le.AppendUint16(t, 0) // flags: conforms to bus
	t = append(t, 1)          // LINT1
	header(t, "APIC", 5)
	return t
}

// buildPRT returns the PCI routing table package: for every slot and pin,
// Package(){slot<<16 | 0xFFFF, pin (0 = INTA#), 0, GSI} (no link device:
// the source index is the GSI itself).
func buildPRT(e *amlEncoder) []byte {
	var entries [][]byte
	for slot := 0; slot < PCISlots; slot++ {
		for pin := 1; pin <= 4; pin++ {
			gsi, _ := PCIINTxGSI(slot, pin)
			entries = append(entries, e.pack(
				e.integer(uint64(slot)<<16|0xFFFF),
				e.integer(uint64(pin-1)),
				e.integer(0),
				e.integer(uint64(gsi)),
			))
		}
	}
	return e.pack(entries...)
}

// buildDSDT returns the DSDT: _S5, \_SB.PCI0, \_SB.COM1 and one processor
// device per vCPU, and with hotplug slots the hotplug objects in PCI0 and
// the \_GPE scope.
func buildDSDT(cfg Config) ([]byte, error) {
	var e amlEncoder
	pci := e.device("PCI0", append([][]byte{
		e.name("_HID", e.eisaIDValue("PNP0A08")),
		e.name("_CID", e.eisaIDValue("PNP0A03")),
		e.name("_SEG", e.integer(0)),
		e.name("_BBN", e.integer(0)),
		e.name("_UID", e.integer(0)),
		e.name("_PRT", buildPRT(&e)),
		e.name("_CRS", e.resourceTemplate(
			resWordBusNumber(0, 0),
			resIO(PCIConfigPort, PCIConfigPort, 1, 8),
			resWordIO(0x0000, 0x0CF7),
			resWordIO(0x0D00, 0xFFFF),
			resDWordMemory(PCIMMIOBase, PCIMMIOLast),
		)),
	}, buildHotplugPCI(&e, cfg.HotplugSlots)...)...,
	)
	com1 := e.device("COM1",
		e.name("_HID", e.eisaIDValue("PNP0501")),
		e.name("_UID", e.integer(0)),
		e.name("_CRS", e.resourceTemplate(
			resIO(COM1Port, COM1Port, 1, 8),
			resIRQNoFlags(COM1IRQ),
		)),
	)
	sb := [][]byte{pci, com1}
	for i := 0; i < cfg.NumCPUs; i++ {
		sb = append(sb, e.device(fmt.Sprintf("C%03X", i),
			e.name("_HID", e.str("ACPI0007")),
			e.name("_UID", e.integer(uint64(i))),
		))
	}
	body := e.name("_S5", e.pack(e.integer(SleepTypeSoftOff), e.integer(SleepTypeSoftOff), e.integer(0), e.integer(0)))
	body = append(body, e.scope(`\_SB`, sb...)...)
	if cfg.HotplugSlots != 0 {
		body = append(body, e.scope(`\_GPE`,
			e.method(fmt.Sprintf("_E%02X", PCIHotplugGPE), 0, false, e.call(`\_SB.PCI0.PCNT`)),
		)...)
	}
	if e.err != nil {
		return nil, e.err
	}
	t := make([]byte, tableHeaderSize, tableHeaderSize+len(body))
	t = append(t, body...)
	header(t, "DSDT", 2)
	return t, nil
}

// Notify values (ACPI 6.x, table 5.166).
const (
	notifyDeviceCheck  = 1
	notifyEjectRequest = 3
)

// buildHotplugPCI returns the objects \_SB.PCI0 holds for the hotplug slots
// in slots (see the package comment); none when slots is 0.
func buildHotplugPCI(e *amlEncoder, slots uint32) [][]byte {
	if slots == 0 {
		return nil
	}
	out := [][]byte{
		e.opRegion("PCHP", regionSystemIO, PCIHotplugPort, PCIHotplugLen),
		e.field("PCHP", fieldAccessDWord|fieldWriteAsZeros,
			fieldUnit{"PCIU", 32}, fieldUnit{"PCID", 32}, fieldUnit{"PCEJ", 32}),
		e.device("PHPR",
			e.name("_HID", e.eisaIDValue("PNP0C02")),
			e.name("_UID", e.str("PCIHP")),
			e.name("_CRS", e.resourceTemplate(resIO(PCIHotplugPort, PCIHotplugPort, 1, PCIHotplugLen))),
		),
	}
	var notifies [][]byte
	for slot := 1; slot < PCISlots; slot++ {
		if slots&(1<<slot) == 0 {
			continue
		}
		name := fmt.Sprintf("S%02X", slot)
		out = append(out, e.device(name,
			e.name("_ADR", e.integer(uint64(slot)<<16)),
			e.name("_SUN", e.integer(uint64(slot))),
			e.method("_EJ0", 1, false, e.store(e.integer(1<<slot), e.nameString("PCEJ"))),
		))
		notifies = append(notifies, e.ifThen(e.and(e.arg(0), e.integer(1<<slot), nil),
			e.notify(e.nameString(name), e.arg(1))))
	}
	return append(out,
		e.method("DVNT", 2, false, notifies...),
		e.method("PCNT", 0, true,
			e.store(e.nameString("PCIU"), e.local(0)),
			e.store(e.nameString("PCID"), e.local(1)),
			e.call("DVNT", e.local(0), e.integer(notifyDeviceCheck)),
			e.call("DVNT", e.local(1), e.integer(notifyEjectRequest)),
		),
	)
}
