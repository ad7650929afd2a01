package virtio_test

import (
	"sync"
	"testing"

	"rainforest/vmm/pci"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
)

// fakeLine records the levels an INTx line is driven to.
type fakeLine struct {
	mu     sync.Mutex
	high   bool
	levels []bool
}

func (l *fakeLine) SetLevel(high bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.high = high
	l.levels = append(l.levels, high)
}

func (l *fakeLine) level() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.high
}

func TestPCIINTx(t *testing.T) {
	m := newMachine(t)
	line := &fakeLine{}
	var routedSlot, routedPin int
	m.pb.SetINTxRouter(func(slot, pin int) (pci.INTx, uint8, error) {
		routedSlot, routedPin = slot, pin
		return line, 17, nil
	})
	model := &echoModel{}
	r := &router{}
	dev, err := virtio.NewPCIDevice(model, m.mem, r)
	if err != nil {
		t.Fatal(err)
	}
	slot := m.add(dev)
	if routedSlot != slot || routedPin != pci.PinA {
		t.Fatalf("router asked for slot %d pin %d, want %d, INTA", routedSlot, routedPin, slot)
	}
	if pin := m.cfgRead(slot, pci.RegInterruptPin, 1); pin != 1 {
		t.Fatalf("interrupt pin %d, want 1 (INTA#)", pin)
	}
	if l := m.cfgRead(slot, pci.RegInterruptLine, 1); l != 17 {
		t.Fatalf("interrupt line %d, want 17 from the router", l)
	}
	status := func() uint32 { return m.cfgRead(slot, pci.RegStatus, 2) & pci.StatusInterrupt }
	d := probe(t, m, slot)
	// A driver without MSI-X (pci=nomsi): vectors stay NO_VECTOR.
	if !d.negotiate(t, virtio.FeatureVersion1) {
		t.Fatal("FEATURES_OK refused")
	}
	drv0 := vt.NewDriver(m.mem, 8, 0x10000)
	d.setupQueue(t, 0, 8, virtio.NoVector, drv0)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if line.level() || status() != 0 {
		t.Fatal("INTx asserted before any interrupt")
	}
	request := func() {
		t.Helper()
		drv0.AddChain(vt.Buf{Addr: 0x40000, Len: 4}, vt.Buf{Addr: 0x41000, Len: 16, Write: true})
		m.wr(d.notify, 2, 0)
		if _, _, ok := drv0.TakeUsed(); !ok {
			t.Fatal("request not served")
		}
	}
	request()
	if !line.level() {
		t.Fatal("used buffer did not assert INTA#")
	}
	if status() == 0 {
		t.Fatal("status Interrupt Status bit clear while INTx pending")
	}
	if f := r.takeFired(); len(f) != 0 {
		t.Fatalf("MSI-X fired %v with MSI-X disabled", f)
	}
	// A second interrupt while asserted changes nothing; the line stays high.
	request()
	if n := len(line.levels); n != 1 {
		t.Fatalf("line driven %d times, want 1: %v", n, line.levels)
	}
	// INTx-disable lowers the line but the status bit stays.
	m.cfgWrite(slot, pci.RegCommand, 2, m.cfgRead(slot, pci.RegCommand, 2)|pci.CommandINTxDisable)
	if line.level() || status() == 0 {
		t.Fatalf("INTx disabled: line %v status %#x", line.level(), status())
	}
	m.cfgWrite(slot, pci.RegCommand, 2, m.cfgRead(slot, pci.RegCommand, 2)&^pci.CommandINTxDisable)
	if !line.level() {
		t.Fatal("INTx re-enabled with interrupt pending: line low")
	}
	// Reading the ISR returns and clears it and deasserts the line.
	if isr := m.rd(d.isr, 1); isr != 1 {
		t.Fatalf("ISR %#x, want 1", isr)
	}
	if line.level() || status() != 0 || dev.INTxAsserted() {
		t.Fatalf("after ISR read: line %v status %#x", line.level(), status())
	}
	if isr := m.rd(d.isr, 1); isr != 0 {
		t.Fatalf("second ISR read %#x", isr)
	}
	// A configuration change asserts with ISR bit 1.
	if err := model.act.IRQ.ConfigChanged(); err != nil {
		t.Fatal(err)
	}
	if !line.level() {
		t.Fatal("config change did not assert INTA#")
	}
	if isr := m.rd(d.isr, 1); isr != 2 || line.level() {
		t.Fatalf("ISR %#x line %v after config change", isr, line.level())
	}
	// Device reset lowers a pending line.
	request()
	d.setStatus(0)
	if line.level() || status() != 0 {
		t.Fatal("reset left INTA# asserted")
	}
}

func TestPCIINTxNotUsedWithMSIX(t *testing.T) {
	m := newMachine(t)
	line := &fakeLine{}
	m.pb.SetINTxRouter(func(slot, pin int) (pci.INTx, uint8, error) { return line, 18, nil })
	model := &echoModel{}
	r := &router{}
	dev, err := virtio.NewPCIDevice(model, m.mem, r)
	if err != nil {
		t.Fatal(err)
	}
	slot := m.add(dev)
	d := probe(t, m, slot)
	bar0 := dev.BARs()[0].Addr
	d.enableMSIX(bar0, 3)
	if !d.negotiate(t, virtio.FeatureVersion1) {
		t.Fatal("FEATURES_OK refused")
	}
	drv0 := vt.NewDriver(m.mem, 8, 0x10000)
	drv1 := vt.NewDriver(m.mem, 8, 0x20000)
	d.setupQueue(t, 0, 8, 1, drv0)
	d.setupQueue(t, 1, 8, virtio.NoVector, drv1)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	drv0.AddChain(vt.Buf{Addr: 0x40000, Len: 4}, vt.Buf{Addr: 0x41000, Len: 16, Write: true})
	m.wr(d.notify, 2, 0)
	if f := r.takeFired(); len(f) != 1 || f[0] != 1 {
		t.Fatalf("MSI-X fired %v, want [1]", f)
	}
	// NO_VECTOR with MSI-X on: no interrupt at all.
	drv1.AddChain(vt.Buf{Addr: 0x40000, Len: 4}, vt.Buf{Addr: 0x42000, Len: 16, Write: true})
	m.wr(d.notify+uint64(d.notifyMul), 2, 0)
	if f := r.takeFired(); len(f) != 0 {
		t.Fatalf("MSI-X fired %v for a NO_VECTOR queue", f)
	}
	if len(line.levels) != 0 || m.cfgRead(slot, pci.RegStatus, 2)&pci.StatusInterrupt != 0 {
		t.Fatalf("INTx used while MSI-X enabled: %v", line.levels)
	}
}
