// Package platform models the small legacy devices of a RainForest guest:
// the ACPI fixed-hardware PM registers (PM1a event and control blocks and
// the PM timer), the GPE0 general-purpose event block, the reset control
// register at port 0xCF9, and a one-byte guest status port the guest writes
// its exit code to.
//
// The PM1a event block and the GPE block raise the ACPI system control
// interrupt (SCI): each drives a Line that is high exactly while one of its
// status bits is set together with the matching enable bit. The VMM gives
// both an Input of one SCI, which ORs them onto the single level-triggered
// SCI line (GSI 9 as the MADT describes it).
//
// Each device is a bus.Device placed by the VMM at the ports the ACPI
// tables (vmm/acpi) advertise. Power-off and reset are reported through
// plain callbacks given at construction; they run on the vCPU thread that
// made the access, without any device lock held, and may be called again if
// the guest repeats the write. All devices are safe for concurrent use and
// tolerate any offset and access width.
package platform

import (
	"sync"
	"time"
)

// readRegister copies the bytes of a size-byte little-endian register value
// that [offset, offset+len(data)) covers into data; bytes past the register
// read as 0xFF.
func readRegister(value uint64, size int, offset uint64, data []byte) {
	for i := range data {
		pos := offset + uint64(i)
		if pos < offset || pos >= uint64(size) {
			data[i] = 0xFF
			continue
		}
		data[i] = byte(value >> (8 * pos))
	}
}

// mergeRegister returns value with the bytes that data writes at offset
// replaced, and a mask of the bits written. Bytes past size are ignored.
func mergeRegister(value uint64, size int, offset uint64, data []byte) (merged, written uint64) {
	for i, b := range data {
		pos := offset + uint64(i)
		if pos < offset || pos >= uint64(size) {
			continue
		}
		shift := 8 * pos
		value = value&^(0xFF<<shift) | uint64(b)<<shift
		written |= 0xFF << shift
	}
	return value, written
}

// Line is an interrupt line: SetLevel(true) asserts it, SetLevel(false)
// deasserts it. The VMM's IRQ lines and SCI inputs are Lines.
type Line interface {
	SetLevel(high bool)
}

// SCI is the ACPI system control interrupt: one level-triggered line
// shared by the event blocks, asserted while any of its inputs is. It is
// safe for concurrent use; the line's SetLevel is called with the SCI's lock
// held, only when the combined level changes.
type SCI struct {
	mu       sync.Mutex
	line     Line
	asserted int // inputs that are high
}

// NewSCI returns an SCI driving line (nil: the level is only tracked).
func NewSCI(line Line) *SCI { return &SCI{line: line} }

// Input returns a new input of the SCI, initially low.
func (s *SCI) Input() Line { return &sciInput{sci: s} }

// Level reports whether the SCI is asserted.
func (s *SCI) Level() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asserted > 0
}

// sciInput is one source of an SCI; high is guarded by sci.mu.
type sciInput struct {
	sci  *SCI
	high bool
}

// SetLevel implements Line.
func (in *sciInput) SetLevel(high bool) {
	s := in.sci
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.high == high {
		return
	}
	in.high = high
	was := s.asserted > 0
	if high {
		s.asserted++
	} else {
		s.asserted--
	}
	if now := s.asserted > 0; now != was && s.line != nil {
		s.line.SetLevel(now)
	}
}

// eventBlock is the status/enable register pair of an ACPI event block:
// a 16-bit status register whose bits are cleared by writing 1 to them at
// offset 0, and a 16-bit enable register at offset 2. Its line is kept high
// exactly while status & enable & events is non-zero, re-evaluated on every
// write and SetStatus; SetLevel is called with mu held (so levels reach the
// line in order), only on a change.
type eventBlock struct {
	mu     sync.Mutex
	status uint16
	enable uint16
	events uint16 // status bits that can raise the line
	line   Line
	level  bool
}

// eventBlockLen is the size of an event block: status, then enable.
const eventBlockLen = 4

func (b *eventBlock) setStatus(bits uint16) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.status |= bits
	b.updateLocked()
}

func (b *eventBlock) registers() (status, enable uint16) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status, b.enable
}

func (b *eventBlock) updateLocked() {
	level := b.status&b.enable&b.events != 0
	if level == b.level {
		return
	}
	b.level = level
	if b.line != nil {
		b.line.SetLevel(level)
	}
}

func (b *eventBlock) read(offset uint64, data []byte) {
	b.mu.Lock()
	v := uint64(b.status) | uint64(b.enable)<<16
	b.mu.Unlock()
	readRegister(v, eventBlockLen, offset, data)
}

// write clears the status bits written as 1 and stores the enable bytes
// written.
func (b *eventBlock) write(offset uint64, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, written := mergeRegister(0, eventBlockLen, offset, data)
	b.status &^= uint16(v & written)
	mask := uint16(written >> 16)
	b.enable = b.enable&^mask | uint16(v>>16)&mask
	b.updateLocked()
}

// PM1 event block layout: status at offset 0, enable at offset 2.
const PM1EventLen = eventBlockLen

// PM1 status and enable bits (ACPI 6.x, 4.8.3.1).
const (
	PM1TimerStatus       = 1 << 0
	PM1BusMasterStatus   = 1 << 4
	PM1GlobalStatus      = 1 << 5
	PM1PowerButtonStatus = 1 << 8
	PM1SleepButtonStatus = 1 << 9
	PM1RTCStatus         = 1 << 10
	PM1WakeStatus        = 1 << 15

	// PM1SCIEvents are the status bits with an enable bit (TMR_EN, GBL_EN,
	// PWRBTN_EN, SLPBTN_EN, RTC_EN) and so can raise the SCI; BM_STS and
	// WAK_STS cannot.
	PM1SCIEvents = PM1TimerStatus | PM1GlobalStatus | PM1PowerButtonStatus |
		PM1SleepButtonStatus | PM1RTCStatus
)

// PM1Event is the PM1a event block: a 16-bit status register whose bits are
// cleared by writing 1 to them, and a 16-bit enable register. This platform
// has no fixed-feature events, so status bits are only ever set through
// SetStatus. Its SCI line is high while a status bit of PM1SCIEvents is set
// with its enable bit.
type PM1Event struct {
	b eventBlock
}

// NewPM1Event returns a PM1a event block with all bits clear, driving sci
// (nil: no SCI).
func NewPM1Event(sci Line) *PM1Event {
	return &PM1Event{b: eventBlock{events: PM1SCIEvents, line: sci}}
}

// SetStatus sets status bits, as hardware would on an event.
func (e *PM1Event) SetStatus(bits uint16) { e.b.setStatus(bits) }

// Registers returns the status and enable registers.
func (e *PM1Event) Registers() (status, enable uint16) { return e.b.registers() }

// Read implements bus.Device.
func (e *PM1Event) Read(offset uint64, data []byte) { e.b.read(offset, data) }

// Write implements bus.Device: written status bits that are 1 clear the
// status bit; enable bytes are stored.
func (e *PM1Event) Write(offset uint64, data []byte) { e.b.write(offset, data) }

// GPEBlockLen is the size of the GPE0 block (GPE0_BLK_LEN): two status
// bytes, then two enable bytes, for GPEs 0-15.
const GPEBlockLen = eventBlockLen

// GPEBlock is the GPE0 general-purpose event block: status bit n (cleared
// by writing 1 to it, at offset 0) and enable bit n (offset 2) belong to GPE
// n. Device models raise a GPE with SetStatus; the SCI line is high while a
// status bit is set with its enable bit. Any offset and width is accepted;
// the OS uses byte accesses.
type GPEBlock struct {
	b eventBlock
}

// NewGPEBlock returns a GPE block with all bits clear, driving sci (nil:
// no SCI).
func NewGPEBlock(sci Line) *GPEBlock {
	return &GPEBlock{b: eventBlock{events: 0xFFFF, line: sci}}
}

// SetStatus sets the status bits of the GPEs in bits (bit n: GPE n).
func (g *GPEBlock) SetStatus(bits uint16) { g.b.setStatus(bits) }

// Registers returns the status and enable registers.
func (g *GPEBlock) Registers() (status, enable uint16) { return g.b.registers() }

// Read implements bus.Device.
func (g *GPEBlock) Read(offset uint64, data []byte) { g.b.read(offset, data) }

// Write implements bus.Device: status bits written as 1 are cleared; enable
// bytes are stored.
func (g *GPEBlock) Write(offset uint64, data []byte) { g.b.write(offset, data) }

// PM1 control block.
const (
	PM1ControlLen = 2

	PM1SCIEnable       = 1 << 0
	PM1BusMasterReload = 1 << 1
	PM1GlobalRel       = 1 << 2 // write-only
	PM1SleepType       = 7 << 10
	PM1SleepEn         = 1 << 13 // write-only

	pm1SleepTypeShift = 10
	// SleepTypeSoftOff is the SLP_TYP the DSDT's _S5 object names.
	SleepTypeSoftOff = 5
)

// PM1Control is the PM1a control block. SCI_EN always reads 1 (the
// platform is in ACPI mode from reset; the FADT has no SMI_CMD). Writing
// SLP_EN with SLP_TYP = SleepTypeSoftOff calls the power-off callback; other
// sleep types are not offered by the DSDT and are ignored.
type PM1Control struct {
	mu         sync.Mutex
	value      uint16
	onPowerOff func()
}

// NewPM1Control returns a PM1a control block calling onPowerOff (nil: none)
// when the guest enters S5.
func NewPM1Control(onPowerOff func()) *PM1Control {
	return &PM1Control{value: PM1SCIEnable, onPowerOff: onPowerOff}
}

// Read implements bus.Device.
func (c *PM1Control) Read(offset uint64, data []byte) {
	c.mu.Lock()
	v := c.value
	c.mu.Unlock()
	readRegister(uint64(v), PM1ControlLen, offset, data)
}

// Write implements bus.Device.
func (c *PM1Control) Write(offset uint64, data []byte) {
	c.mu.Lock()
	merged, _ := mergeRegister(uint64(c.value), PM1ControlLen, offset, data)
	v := uint16(merged)
	c.value = v&^(PM1SleepEn|PM1GlobalRel) | PM1SCIEnable
	c.mu.Unlock()
	if v&PM1SleepEn != 0 && (v&PM1SleepType)>>pm1SleepTypeShift == SleepTypeSoftOff && c.onPowerOff != nil {
		c.onPowerOff()
	}
}

// PM timer.
const (
	PMTimerLen = 4
	// PMTimerHz is the ACPI PM timer frequency.
	PMTimerHz = 3579545
)

// PMTimer is the 32-bit ACPI PM timer (the FADT sets TMR_VAL_EXT), counting
// at PMTimerHz from a monotonic clock and wrapping at 2^32. Writes are
// ignored.
type PMTimer struct {
	elapsed func() time.Duration
}

// NewPMTimer returns a PM timer. elapsed reports monotonic time since some
// fixed start; nil means time since the call to NewPMTimer.
func NewPMTimer(elapsed func() time.Duration) *PMTimer {
	if elapsed == nil {
		start := time.Now()
		elapsed = func() time.Duration { return time.Since(start) }
	}
	return &PMTimer{elapsed: elapsed}
}

// Count returns the current 32-bit counter value.
func (t *PMTimer) Count() uint32 {
	d := t.elapsed()
	if d < 0 {
		d = 0
	}
	sec := uint64(d / time.Second)
	ns := uint64(d % time.Second)
	return uint32(sec*PMTimerHz + ns*PMTimerHz/uint64(time.Second))
}

// Read implements bus.Device.
func (t *PMTimer) Read(offset uint64, data []byte) {
	readRegister(uint64(t.Count()), PMTimerLen, offset, data)
}

// Write implements bus.Device; the timer is read-only.
func (t *PMTimer) Write(offset uint64, data []byte) {}

// Reset control register (port 0xCF9) values that reset the machine.
const (
	ResetHard = 0x06 // SYS_RST | RST_CPU
	ResetFull = 0x0E // FULL_RST | SYS_RST | RST_CPU
	resetCPU  = 0x04
)

// ResetRegister is the one-byte reset control register. Writing ResetHard
// or ResetFull calls the reset callback; other values are stored (minus the
// RST_CPU bit) and otherwise ignored.
type ResetRegister struct {
	mu      sync.Mutex
	value   byte
	onReset func()
}

// NewResetRegister returns a reset register calling onReset (nil: none).
func NewResetRegister(onReset func()) *ResetRegister {
	return &ResetRegister{onReset: onReset}
}

// Read implements bus.Device.
func (r *ResetRegister) Read(offset uint64, data []byte) {
	r.mu.Lock()
	v := r.value
	r.mu.Unlock()
	readRegister(uint64(v), 1, offset, data)
}

// Write implements bus.Device.
func (r *ResetRegister) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	v := data[0]
	r.mu.Lock()
	r.value = v &^ resetCPU
	r.mu.Unlock()
	if (v == ResetHard || v == ResetFull) && r.onReset != nil {
		r.onReset()
	}
}

// GuestStatusPort is the I/O port the VMM places GuestStatus at.
const GuestStatusPort = 0x501

// GuestStatus is a one-byte port the guest writes a status code to; the VMM
// makes the last value written its exit status after power-off. Reads
// return the last value (0 before any write).
type GuestStatus struct {
	mu      sync.Mutex
	code    byte
	written bool
}

// NewGuestStatus returns a guest status port with nothing written.
func NewGuestStatus() *GuestStatus { return &GuestStatus{} }

// Last returns the last code written and whether any was.
func (g *GuestStatus) Last() (code byte, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.code, g.written
}

// Read implements bus.Device.
func (g *GuestStatus) Read(offset uint64, data []byte) {
	g.mu.Lock()
	v := g.code
	g.mu.Unlock()
	readRegister(uint64(v), 1, offset, data)
}

// Write implements bus.Device; only the byte at offset 0 counts.
func (g *GuestStatus) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.code = data[0]
	g.written = true
}
