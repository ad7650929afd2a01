package platform

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"rainforest/vmm/bus"
)

// The devices must satisfy bus.Device.
var (
	_ bus.Device = (*PM1Event)(nil)
	_ bus.Device = (*PM1Control)(nil)
	_ bus.Device = (*PMTimer)(nil)
	_ bus.Device = (*ResetRegister)(nil)
	_ bus.Device = (*GuestStatus)(nil)
)

func read16(d bus.Device, off uint64) uint16 {
	b := make([]byte, 2)
	d.Read(off, b)
	return binary.LittleEndian.Uint16(b)
}

func write16(d bus.Device, off uint64, v uint16) {
	d.Write(off, binary.LittleEndian.AppendUint16(nil, v))
}

func TestPM1Event(t *testing.T) {
	e := NewPM1Event(nil)
	if read16(e, 0) != 0 || read16(e, 2) != 0 {
		t.Fatal("not clear at start")
	}
	e.SetStatus(PM1PowerButtonStatus | PM1WakeStatus | PM1TimerStatus)
	// Writing 0 clears nothing; writing 1 clears just that bit.
	write16(e, 0, 0)
	if got := read16(e, 0); got != PM1PowerButtonStatus|PM1WakeStatus|PM1TimerStatus {
		t.Errorf("status %#x after writing 0", got)
	}
	write16(e, 0, PM1WakeStatus)
	if got := read16(e, 0); got != PM1PowerButtonStatus|PM1TimerStatus {
		t.Errorf("status %#x after W1C", got)
	}
	// Byte write to the high status byte clears the power button bit.
	e.Write(1, []byte{PM1PowerButtonStatus >> 8})
	if got := read16(e, 0); got != PM1TimerStatus {
		t.Errorf("status %#x after byte W1C", got)
	}
	// Enable is a plain register, writable alone or with a 32-bit access.
	write16(e, 2, PM1PowerButtonStatus)
	if got := read16(e, 2); got != PM1PowerButtonStatus {
		t.Errorf("enable %#x", got)
	}
	e.Write(0, []byte{0x01, 0x00, 0x20, 0x00}) // clear TMR_STS, enable GBL_EN
	b := make([]byte, 4)
	e.Read(0, b)
	if got := binary.LittleEndian.Uint32(b); got != PM1GlobalStatus<<16 {
		t.Errorf("32-bit read %#x", got)
	}
	// Out-of-range parts read as 0xFF and are ignored on write.
	b = make([]byte, 4)
	e.Read(2, b)
	if b[2] != 0xFF || b[3] != 0xFF || b[0] != 0x20 {
		t.Errorf("straddling read % x", b)
	}
	e.Write(1<<63, []byte{0xFF})
	e.Write(^uint64(0), []byte{0xFF, 0xFF})
	e.Read(^uint64(0), b)
	if read16(e, 2) != PM1GlobalStatus {
		t.Error("garbage write changed enable")
	}
}

func TestPM1ControlPowerOff(t *testing.T) {
	var offs atomic.Int32
	c := NewPM1Control(func() { offs.Add(1) })
	if read16(c, 0)&PM1SCIEnable == 0 {
		t.Fatal("SCI_EN reads 0")
	}
	// ACPICA's sequence: SLP_TYP first, then SLP_TYP|SLP_EN.
	typ := uint16(SleepTypeSoftOff << 10)
	write16(c, 0, typ)
	if offs.Load() != 0 {
		t.Fatal("powered off without SLP_EN")
	}
	if got := read16(c, 0); got != typ|PM1SCIEnable {
		t.Errorf("control %#x", got)
	}
	write16(c, 0, typ|PM1SleepEn)
	if offs.Load() != 1 {
		t.Fatalf("power-off callback ran %d times", offs.Load())
	}
	if read16(c, 0)&PM1SleepEn != 0 {
		t.Error("SLP_EN reads back")
	}
	// Writing SCI_EN 0 does not disable it.
	write16(c, 0, 0)
	if read16(c, 0) != PM1SCIEnable {
		t.Error("SCI_EN cleared")
	}
	// Other sleep types are ignored.
	for _, st := range []uint16{0, 1, 3, 4, 7} {
		write16(c, 0, st<<10|PM1SleepEn)
	}
	if offs.Load() != 1 {
		t.Errorf("non-S5 sleep powered off")
	}
	// A byte write to the high byte alone also works.
	c.Write(1, []byte{byte((typ | PM1SleepEn) >> 8)})
	if offs.Load() != 2 {
		t.Errorf("byte write did not power off")
	}
	// Garbage: no panic, no effect.
	c.Write(2, []byte{0xFF, 0xFF})
	c.Write(^uint64(0), []byte{0xFF})
	c.Read(^uint64(0), make([]byte, 8))
	if offs.Load() != 2 {
		t.Error("garbage write powered off")
	}
	NewPM1Control(nil).Write(0, []byte{0x00, 0x34}) // nil callback is fine
}

func TestPMTimer(t *testing.T) {
	var now time.Duration
	tm := NewPMTimer(func() time.Duration { return now })
	read32 := func() uint32 {
		b := make([]byte, 4)
		tm.Read(0, b)
		return binary.LittleEndian.Uint32(b)
	}
	if read32() != 0 {
		t.Fatal("timer not 0 at start")
	}
	now = time.Second
	if got := read32(); got != PMTimerHz {
		t.Errorf("after 1 s: %d", got)
	}
	now = time.Millisecond
	if got := read32(); got != PMTimerHz/1000 {
		t.Errorf("after 1 ms: %d", got)
	}
	// Wraps at 2^32 (about 1200 s) without overflowing the arithmetic.
	now = 10000 * time.Hour
	secs := uint64(10000 * 3600)
	want := uint32(secs * PMTimerHz)
	if got := read32(); got != want {
		t.Errorf("after 10000 h: %d, want %d", got, want)
	}
	now = -time.Second
	if got := read32(); got != 0 {
		t.Errorf("negative clock: %d", got)
	}
	now = time.Second
	if got := read16(tm, 2); got != uint16(PMTimerHz>>16) {
		t.Errorf("high half %#x", got)
	}
	tm.Write(0, []byte{1, 2, 3, 4})
	if read32() != PMTimerHz {
		t.Error("write changed the timer")
	}

	wall := NewPMTimer(nil)
	a := wall.Count()
	time.Sleep(2 * time.Millisecond)
	if b := wall.Count(); b-a < PMTimerHz/1000 {
		t.Errorf("real timer advanced %d ticks in 2 ms", b-a)
	}
}

func TestResetRegister(t *testing.T) {
	var resets atomic.Int32
	r := NewResetRegister(func() { resets.Add(1) })
	for _, v := range []byte{0x00, 0x02, 0x04, 0x08, 0xFF} {
		r.Write(0, []byte{v})
	}
	if resets.Load() != 0 {
		t.Fatal("reset on a non-reset value")
	}
	r.Write(0, []byte{ResetHard})
	r.Write(0, []byte{ResetFull})
	if resets.Load() != 2 {
		t.Errorf("resets %d, want 2", resets.Load())
	}
	b := []byte{0}
	r.Read(0, b)
	if b[0] != ResetFull&^0x04 {
		t.Errorf("read back %#x", b[0])
	}
	r.Write(1, []byte{ResetHard})
	r.Write(0, nil)
	if resets.Load() != 2 {
		t.Error("reset from a bad offset")
	}
	NewResetRegister(nil).Write(0, []byte{ResetHard})
}

func TestGuestStatus(t *testing.T) {
	g := NewGuestStatus()
	if _, ok := g.Last(); ok {
		t.Fatal("status written at start")
	}
	g.Write(0, []byte{3})
	g.Write(0, []byte{42})
	g.Write(1, []byte{7})
	g.Write(0, nil)
	if code, ok := g.Last(); !ok || code != 42 {
		t.Errorf("Last() = %d, %v", code, ok)
	}
	b := []byte{0, 0}
	g.Read(0, b)
	if b[0] != 42 || b[1] != 0xFF {
		t.Errorf("read % x", b)
	}
}

func TestConcurrentAccess(t *testing.T) {
	e := NewPM1Event(nil)
	c := NewPM1Control(func() {})
	g := NewGuestStatus()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				e.SetStatus(1)
				write16(e, 0, 1)
				write16(c, 0, uint16(i))
				read16(c, 0)
				g.Write(0, []byte{byte(i)})
				g.Last()
			}
		}()
	}
	wg.Wait()
}
