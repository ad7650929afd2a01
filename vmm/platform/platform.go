// Package platform models the small legacy devices of a RainForest guest:
// the ACPI fixed-hardware PM registers (PM1a event and control blocks and
// the PM timer), the reset control register at port 0xCF9, and a one-byte
// guest status port the guest writes its exit code to.
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

// PM1 event block layout: status at offset 0, enable at offset 2.
const PM1EventLen = 4

// PM1 status and enable bits (ACPI 6.x, 4.8.3.1).
const (
	PM1TimerStatus       = 1 << 0
	PM1BusMasterStatus   = 1 << 4
	PM1GlobalStatus      = 1 << 5
	PM1PowerButtonStatus = 1 << 8
	PM1SleepButtonStatus = 1 << 9
	PM1RTCStatus         = 1 << 10
	PM1WakeStatus        = 1 << 15
)

// PM1Event is the PM1a event block: a 16-bit status register whose bits are
// cleared by writing 1 to them, and a 16-bit enable register. This platform
// has no fixed-feature events, so status bits are only ever set through
// SetStatus; no SCI is raised.
type PM1Event struct {
	mu     sync.Mutex
	status uint16
	enable uint16
}

// NewPM1Event returns a PM1a event block with all bits clear.
func NewPM1Event() *PM1Event { return &PM1Event{} }

// SetStatus sets status bits, as hardware would on an event.
func (e *PM1Event) SetStatus(bits uint16) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status |= bits
}

// Read implements bus.Device.
func (e *PM1Event) Read(offset uint64, data []byte) {
	e.mu.Lock()
	v := uint64(e.status) | uint64(e.enable)<<16
	e.mu.Unlock()
	readRegister(v, PM1EventLen, offset, data)
}

// Write implements bus.Device: written status bits that are 1 clear the
// status bit; enable bytes are stored.
func (e *PM1Event) Write(offset uint64, data []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, written := mergeRegister(0, PM1EventLen, offset, data)
	e.status &^= uint16(v & written)
	mask := uint16(written >> 16)
	e.enable = e.enable&^mask | uint16(v>>16)&mask
}

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
