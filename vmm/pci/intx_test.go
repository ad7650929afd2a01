package pci

import (
	"errors"
	"sync"
	"testing"
)

type recLine struct {
	mu     sync.Mutex
	levels []bool
}

func (l *recLine) SetLevel(high bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.levels = append(l.levels, high)
}

func (l *recLine) take() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.levels
	l.levels = nil
	return v
}

// intxDev is testDev with an INTx source.
type intxDev struct {
	*testDev
	intx *INTxSource
}

func newINTxDev(t *testing.T) *intxDev {
	d := newTestDev(t, &fakeRouter{}, 2)
	return &intxDev{testDev: d, intx: NewINTxSource(d.cfg, d.msix)}
}

func (d *intxDev) WriteConfig(off int, data []byte) {
	d.testDev.WriteConfig(off, data)
	d.intx.Update()
}

func (d *intxDev) ConnectINTx(line INTx) { d.intx.Connect(line) }

func statusInt(d Device) bool { return cfgRead32(d, RegCommand)>>16&StatusInterrupt != 0 }

func equalLevels(a []bool, b ...bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestInterruptPinAndLine(t *testing.T) {
	d := newTestDev(t, &fakeRouter{}, 2)
	if got := cfgRead32(d, RegInterruptLine); got&0xFFFF != 0 {
		t.Fatalf("pin/line of a device without INTx = %#x", got)
	}
	cfgWrite32(d, RegInterruptLine, 0xFFFF_FF0B)
	if got := cfgRead32(d, RegInterruptLine) & 0xFFFF; got != 0x000B {
		t.Fatalf("line/pin after write = %#x, want line writable and pin 0", got)
	}
	i := newINTxDev(t)
	if i.cfg.InterruptPin() != PinA {
		t.Fatalf("pin %d, want INTA", i.cfg.InterruptPin())
	}
	var b [1]byte = [1]byte{3}
	i.WriteConfig(RegInterruptPin, b[:])
	if i.cfg.InterruptPin() != PinA {
		t.Fatal("interrupt pin writable")
	}
	i.WriteConfig(RegInterruptLine, []byte{42})
	if i.cfg.InterruptLine() != 42 {
		t.Fatal("interrupt line not writable")
	}
	if err := i.cfg.SetInterruptPin(5); !errors.Is(err, ErrBadPin) {
		t.Fatalf("SetInterruptPin(5) = %v", err)
	}
}

func TestINTxSource(t *testing.T) {
	d := newINTxDev(t)
	line := &recLine{}
	// Pending before connection: the level is driven on Connect.
	d.intx.SetPending(true)
	if !statusInt(d) {
		t.Fatal("status Interrupt bit clear while pending")
	}
	d.intx.Connect(line)
	if got := line.take(); !equalLevels(got, true) || !d.intx.Asserted() {
		t.Fatalf("connect with pending: levels %v", got)
	}
	d.intx.SetPending(true)
	if got := line.take(); len(got) != 0 {
		t.Fatalf("repeated pending drove the line: %v", got)
	}
	// INTx-disable masks the line, not the status bit.
	cfgWrite32(d, RegCommand, CommandMemory|CommandINTxDisable)
	if got := line.take(); !equalLevels(got, false) || !statusInt(d) || !d.cfg.INTxDisabled() {
		t.Fatalf("INTx disable: levels %v status %v", got, statusInt(d))
	}
	d.intx.SetPending(false)
	d.intx.SetPending(true)
	if got := line.take(); len(got) != 0 {
		t.Fatalf("line driven while INTx disabled: %v", got)
	}
	cfgWrite32(d, RegCommand, CommandMemory)
	if got := line.take(); !equalLevels(got, true) {
		t.Fatalf("INTx enable with pending: levels %v", got)
	}
	d.intx.SetPending(false)
	if got := line.take(); !equalLevels(got, false) || statusInt(d) || d.intx.Pending() {
		t.Fatalf("clear pending: levels %v status %v", got, statusInt(d))
	}
	// With MSI-X enabled INTx is not used.
	d.intx.SetPending(true)
	line.take()
	cfgWrite32(d, d.msix.CapOffset(), msixCtrlEnable<<16)
	if got := line.take(); !equalLevels(got, false) || statusInt(d) || d.intx.Active() {
		t.Fatalf("MSI-X enabled: levels %v status %v", got, statusInt(d))
	}
	d.intx.SetPending(true)
	if got := line.take(); len(got) != 0 {
		t.Fatalf("line driven with MSI-X enabled: %v", got)
	}
	cfgWrite32(d, d.msix.CapOffset(), 0)
	if got := line.take(); !equalLevels(got, true) {
		t.Fatalf("MSI-X disabled with pending: levels %v", got)
	}
	// Disconnect lowers the old line.
	d.intx.Connect(nil)
	if got := line.take(); !equalLevels(got, false) {
		t.Fatalf("disconnect: levels %v", got)
	}
	d.intx.SetPending(false)
}

func TestBusConnectsINTx(t *testing.T) {
	b := NewBus()
	lines := map[int]*recLine{}
	b.SetINTxRouter(func(slot, pin int) (INTx, uint8, error) {
		if slot == 5 {
			return nil, 0, errors.New("no route")
		}
		l := &recLine{}
		lines[slot*10+pin] = l
		return l, uint8(16 + slot%8), nil
	})
	d := newINTxDev(t)
	slot, _, err := b.Add(3, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lines[31] == nil || d.cfg.InterruptLine() != 19 {
		t.Fatalf("slot %d: routes %v, line %d", slot, lines, d.cfg.InterruptLine())
	}
	d.intx.SetPending(true)
	if got := lines[31].take(); !equalLevels(got, true) {
		t.Fatalf("levels %v", got)
	}
	// A device without an interrupt pin is not routed.
	plain := newTestDev(t, &fakeRouter{}, 1)
	if _, _, err := b.Add(4, &intxDev{testDev: plain, intx: &INTxSource{cfg: plain.cfg}}, nil); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 {
		t.Fatalf("pinless device routed: %v", lines)
	}
	// A routing failure fails Add and leaves the slot free.
	if _, _, err := b.Add(5, newINTxDev(t), nil); err == nil {
		t.Fatal("Add succeeded without an INTx route")
	}
	if b.Device(5) != nil {
		t.Fatal("slot 5 taken after a failed Add")
	}
}
