package platform

import (
	"encoding/binary"
	"sync"
	"testing"

	"rainforest/vmm/bus"
)

var _ bus.Device = (*GPEBlock)(nil)

// levelLine records the levels set on it.
type levelLine struct {
	mu    sync.Mutex
	level bool
	sets  int
}

func (l *levelLine) SetLevel(high bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.level = high
	l.sets++
}

func (l *levelLine) get() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level, l.sets
}

func TestSCIOrsInputs(t *testing.T) {
	var line levelLine
	sci := NewSCI(&line)
	a, b := sci.Input(), sci.Input()
	check := func(want bool, wantSets int) {
		t.Helper()
		got, sets := line.get()
		if got != want || sets != wantSets || sci.Level() != want {
			t.Fatalf("line %v after %d sets (Level %v), want %v after %d", got, sets, sci.Level(), want, wantSets)
		}
	}
	a.SetLevel(false)
	check(false, 0)
	a.SetLevel(true)
	check(true, 1)
	a.SetLevel(true) // repeated: no change, counted once
	b.SetLevel(true)
	check(true, 1)
	a.SetLevel(false)
	check(true, 1)
	b.SetLevel(false)
	check(false, 2)
	b.SetLevel(false)
	check(false, 2)
	NewSCI(nil).Input().SetLevel(true) // no line: no panic
}

func TestGPEBlock(t *testing.T) {
	var line levelLine
	g := NewGPEBlock(&line)
	high := func() bool { l, _ := line.get(); return l }
	g.SetStatus(1 << 1)
	if st, en := g.Registers(); st != 2 || en != 0 || high() {
		t.Fatalf("status %#x enable %#x line %v after SetStatus with GPE disabled", st, en, high())
	}
	// The OS enables GPE 1 with a byte write to the first enable byte:
	// the pending status raises the SCI at once.
	g.Write(2, []byte{0x02})
	if !high() {
		t.Fatal("enabling a pending GPE left the SCI low")
	}
	// Disabling lowers it; the status stays.
	g.Write(2, []byte{0x00})
	if st, _ := g.Registers(); high() || st != 2 {
		t.Fatalf("line %v status %#x after disable", high(), st)
	}
	g.Write(2, []byte{0x02})
	// Writing 0 to the status clears nothing; 1 clears the bit and the SCI.
	g.Write(0, []byte{0x00})
	if !high() {
		t.Fatal("writing 0 to status cleared it")
	}
	g.Write(0, []byte{0x02})
	if st, _ := g.Registers(); high() || st != 0 {
		t.Fatalf("line %v status %#x after W1C", high(), st)
	}
	// GPE 9 lives in the second bytes.
	g.Write(3, []byte{0x02})
	g.SetStatus(1 << 9)
	b := make([]byte, 4)
	g.Read(0, b)
	if got := binary.LittleEndian.Uint32(b); got != 0x0202_0200 || !high() {
		t.Fatalf("registers %#x line %v", got, high())
	}
	g.Write(0, []byte{0xFF, 0xFF, 0x02, 0x00}) // 32-bit: clear all, enable only GPE 1
	if st, en := g.Registers(); st != 0 || en != 2 || high() {
		t.Fatalf("status %#x enable %#x line %v after 32-bit write", st, en, high())
	}
	// Accesses past the block read 0xFF and change nothing.
	g.SetStatus(1)
	g.Write(4, []byte{0xFF})
	g.Write(^uint64(0), []byte{0xFF, 0xFF})
	g.Read(3, b)
	if b[0] != 0 || b[1] != 0xFF || b[3] != 0xFF {
		t.Errorf("straddling read % x", b)
	}
	if st, en := g.Registers(); st != 1 || en != 2 {
		t.Errorf("status %#x enable %#x after stray writes", st, en)
	}
}

func TestPM1EventDrivesSCI(t *testing.T) {
	var line levelLine
	sci := NewSCI(&line)
	pm1 := NewPM1Event(sci.Input())
	gpe := NewGPEBlock(sci.Input())
	high := func() bool { l, _ := line.get(); return l }
	// WAK_STS and BM_STS have no enable bit: they never raise the SCI.
	write16(pm1, 2, 0xFFFF)
	pm1.SetStatus(PM1WakeStatus | PM1BusMasterStatus)
	if high() {
		t.Fatal("WAK_STS/BM_STS raised the SCI")
	}
	pm1.SetStatus(PM1PowerButtonStatus)
	if !high() {
		t.Fatal("enabled PWRBTN_STS left the SCI low")
	}
	// Both sources: the SCI stays up until both are clear.
	gpe.Write(2, []byte{1})
	gpe.SetStatus(1)
	write16(pm1, 0, PM1PowerButtonStatus)
	if !high() {
		t.Fatal("SCI dropped while the GPE is still pending")
	}
	gpe.Write(0, []byte{1})
	if high() {
		t.Fatal("SCI high with both sources clear")
	}
	if st, _ := pm1.Registers(); st != PM1WakeStatus|PM1BusMasterStatus {
		t.Errorf("PM1 status %#x", st)
	}
}
