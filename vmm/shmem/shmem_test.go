package shmem

import (
	"encoding/binary"
	"errors"
	"math/rand"
	"sync"
	"testing"

	"rainforest/vmm/pci"
	"rainforest/vmm/shmem/abi"
)

type fakeBell struct {
	mu     sync.Mutex
	peers  int
	rings  [][2]int
	states []uint32
}

func (b *fakeBell) Ring(peer, vector int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if peer >= b.peers || vector >= 4 {
		return errors.New("no such target")
	}
	b.rings = append(b.rings, [2]int{peer, vector})
	return nil
}

func (b *fakeBell) StateChanged(s uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.states = append(b.states, s)
}

type fakeRouter struct {
	mu    sync.Mutex
	fired []int
}

func (r *fakeRouter) Route(int, pci.MSIMessage, bool) error { return nil }
func (r *fakeRouter) Fire(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, v)
	return nil
}

func newTestDevice(t *testing.T) (*Device, *fakeBell, *fakeRouter, []byte) {
	t.Helper()
	l := abi.Layout{Peers: 3, RWSize: 4096, OutputSize: 8192}
	table := make([]byte, l.StateTableSize())
	bell, router := &fakeBell{peers: 3}, &fakeRouter{}
	d, err := New(1, l, 4, table, router, bell)
	if err != nil {
		t.Fatal(err)
	}
	return d, bell, router, table
}

func reg(d *Device, off uint64) uint32 {
	b := make([]byte, 4)
	d.ReadBAR(abi.RegBAR, off, b)
	return binary.LittleEndian.Uint32(b)
}

func writeReg(d *Device, off uint64, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	d.WriteBAR(abi.RegBAR, off, b)
}

func TestLayout(t *testing.T) {
	l := abi.Layout{Peers: 3, RWSize: 4096, OutputSize: 8192}
	if _, err := New(0, abi.Layout{Peers: 0, OutputSize: 4096}, 4, make([]byte, 4096), &fakeRouter{}, &fakeBell{}); !errors.Is(err, abi.ErrLayout) {
		t.Errorf("invalid layout accepted: %v", err)
	}
	if _, err := New(3, l, 4, make([]byte, 4096), &fakeRouter{}, &fakeBell{}); !errors.Is(err, abi.ErrLayout) {
		t.Errorf("peer id out of range accepted: %v", err)
	}
	if _, err := New(0, l, 4, make([]byte, 4), &fakeRouter{}, &fakeBell{}); !errors.Is(err, abi.ErrLayout) {
		t.Errorf("short state table accepted: %v", err)
	}
}

func TestRegisters(t *testing.T) {
	d, bell, router, table := newTestDevice(t)
	if reg(d, abi.RegID) != 1 || reg(d, abi.RegMaxPeers) != 3 || reg(d, abi.RegIntControl) != 0 {
		t.Errorf("id %d peers %d int %d", reg(d, abi.RegID), reg(d, abi.RegMaxPeers), reg(d, abi.RegIntControl))
	}
	writeReg(d, abi.RegDoorbell, 2<<16|3)
	writeReg(d, abi.RegDoorbell, 7<<16|0) // no such peer: dropped
	writeReg(d, abi.RegDoorbell, 0<<16|9) // no such vector: dropped
	if len(bell.rings) != 1 || bell.rings[0] != [2]int{2, 3} {
		t.Errorf("rings %v", bell.rings)
	}
	if dropped, _ := d.Stats(); dropped != 2 {
		t.Errorf("dropped %d, want 2", dropped)
	}
	writeReg(d, abi.RegState, 0xABCD)
	if binary.LittleEndian.Uint32(table[4:]) != 0xABCD || reg(d, abi.RegState) != 0xABCD || len(bell.states) != 1 {
		t.Errorf("state not mirrored: table %x states %v", table[:12], bell.states)
	}
	writeReg(d, abi.RegID, 9) // read-only
	if reg(d, abi.RegID) != 1 {
		t.Error("ID is writable")
	}
	// Interrupts are delivered only when enabled (and MSI-X is on).
	if err := d.Signal(0); err != nil || len(router.fired) != 0 {
		t.Errorf("signal with interrupts off: %v %v", err, router.fired)
	}
	writeReg(d, abi.RegIntControl, 1)
	if reg(d, abi.RegIntControl) != 1 {
		t.Error("INT_CONTROL not set")
	}
	// Writes to read-only memory that trap are counted and dropped.
	d.WriteBAR(abi.MemBAR, 8192, []byte{1, 2, 3, 4})
	if _, ro := d.Stats(); ro != 1 {
		t.Errorf("read-only writes %d", ro)
	}
}

func TestConfigSpace(t *testing.T) {
	d, _, _, _ := newTestDevice(t)
	b := make([]byte, 4)
	d.ReadConfig(0, b)
	if binary.LittleEndian.Uint16(b) != abi.VendorID || binary.LittleEndian.Uint16(b[2:]) != abi.DeviceID {
		t.Errorf("ids %x", b)
	}
	bars := d.BARs()
	if len(bars) != 3 || bars[2].Index != abi.MemBAR || bars[2].Size != d.Layout().BARSize() || !bars[2].Is64 {
		t.Errorf("BARs %+v", bars)
	}
	// Walk the capability list to the vendor capability with the sizes.
	d.ReadConfig(0x34, b[:1])
	found := false
	for off := int(b[0]); off != 0; {
		hdr := make([]byte, 2)
		d.ReadConfig(off, hdr)
		if hdr[0] == 0x09 {
			body := make([]byte, abi.CapLength)
			d.ReadConfig(off, body)
			st := binary.LittleEndian.Uint32(body[4:])
			rw := binary.LittleEndian.Uint64(body[8:])
			out := binary.LittleEndian.Uint64(body[16:])
			if body[2] != abi.CapLength || st != 4096 || rw != 4096 || out != 8192 {
				t.Errorf("vendor cap: state table %d output %d (%x)", st, out, body)
			}
			found = true
		}
		off = int(hdr[1])
	}
	if !found {
		t.Error("no vendor capability")
	}
}

// Garbage from the guest at any offset and width never panics.
func TestGarbage(t *testing.T) {
	d, _, _, _ := newTestDevice(t)
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		n := []int{1, 2, 4, 8}[r.Intn(4)]
		data := make([]byte, n)
		r.Read(data)
		bar := r.Intn(5)
		off := uint64(r.Intn(1 << 16))
		if r.Intn(2) == 0 {
			d.WriteBAR(bar, off, data)
		} else {
			d.ReadBAR(bar, off, data)
		}
		d.WriteConfig(r.Intn(256), data[:min(n, 4)])
	}
}

type fakeLine struct {
	mu     sync.Mutex
	high   bool
	raises int
}

func (l *fakeLine) SetLevel(high bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if high && !l.high {
		l.raises++
	}
	l.high = high
}

func (l *fakeLine) level() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.high
}

// With MSI-X disabled, Signal sets the vector's INT_STATUS bit and asserts
// INTA#; reading INT_STATUS returns and clears the bits and lowers the line.
func TestINTx(t *testing.T) {
	d, _, router, _ := newTestDevice(t)
	var pin [1]byte
	d.ReadConfig(pci.RegInterruptPin, pin[:])
	if pin[0] != pci.PinA {
		t.Fatalf("interrupt pin %d, want INTA#", pin[0])
	}
	line := &fakeLine{}
	d.ConnectINTx(line)
	if err := d.Signal(1); err != nil || line.level() {
		t.Fatalf("signal with INT_CONTROL off: %v, line %v", err, line.level())
	}
	writeReg(d, abi.RegIntControl, 1)
	if err := d.Signal(1); err != nil {
		t.Fatal(err)
	}
	if err := d.Signal(3); err != nil {
		t.Fatal(err)
	}
	if err := d.Signal(4); !errors.Is(err, pci.ErrBadVector) {
		t.Errorf("signal of vector 4 of 4: %v", err)
	}
	if err := d.Signal(-1); !errors.Is(err, pci.ErrBadVector) {
		t.Errorf("signal of vector -1: %v", err)
	}
	if !line.level() || !d.INTxAsserted() || line.raises != 1 {
		t.Fatalf("line high %v asserted %v raises %d", line.level(), d.INTxAsserted(), line.raises)
	}
	var st [2]byte
	d.ReadConfig(pci.RegStatus, st[:])
	if st[0]&pci.StatusInterrupt == 0 {
		t.Error("Status.Interrupt clear while INTx pending")
	}
	if v := reg(d, abi.RegIntStatus); v != 1<<1|1<<3 {
		t.Errorf("INT_STATUS %#x, want %#x", v, 1<<1|1<<3)
	}
	if line.level() {
		t.Error("line still high after INT_STATUS read")
	}
	if v := reg(d, abi.RegIntStatus); v != 0 {
		t.Errorf("INT_STATUS %#x after read-to-clear", v)
	}
	writeReg(d, abi.RegIntStatus, 0xFFFF) // read-only
	if v := reg(d, abi.RegIntStatus); v != 0 {
		t.Errorf("INT_STATUS writable: %#x", v)
	}
	// INTx-disable in the Command register keeps the line low, though the
	// condition is latched.
	var cmd [2]byte
	d.ReadConfig(pci.RegCommand, cmd[:])
	cmd[1] |= pci.CommandINTxDisable >> 8
	d.WriteConfig(pci.RegCommand, cmd[:])
	_ = d.Signal(0)
	if line.level() {
		t.Error("line high with INTx disabled")
	}
	cmd[1] &^= pci.CommandINTxDisable >> 8
	d.WriteConfig(pci.RegCommand, cmd[:])
	if !line.level() {
		t.Error("line low after INTx re-enabled with a pending condition")
	}
	_ = reg(d, abi.RegIntStatus)
	// With MSI-X enabled the vector goes to MSI-X, not INTx.
	enableMSIX(t, d)
	if err := d.Signal(2); err != nil {
		t.Fatal(err)
	}
	if line.level() || reg(d, abi.RegIntStatus) != 0 {
		t.Error("INTx used while MSI-X is enabled")
	}
	router.mu.Lock()
	defer router.mu.Unlock()
	if len(router.fired) != 1 || router.fired[0] != 2 {
		t.Errorf("MSI-X fired %v, want [2]", router.fired)
	}
}

// enableMSIX unmasks every table entry and sets MSI-X Enable.
func enableMSIX(t *testing.T, d *Device) {
	t.Helper()
	for v := 0; v < 4; v++ {
		d.WriteBAR(abi.MSIXBAR, uint64(v*pci.MSIXEntrySize+12), []byte{0, 0, 0, 0})
	}
	var p [1]byte
	d.ReadConfig(pci.RegCapPointer, p[:])
	for off := int(p[0]); off != 0; {
		var hdr [2]byte
		d.ReadConfig(off, hdr[:])
		if hdr[0] == pci.CapIDMSIX {
			var ctrl [2]byte
			d.ReadConfig(off+2, ctrl[:])
			ctrl[1] |= 0x80
			d.WriteConfig(off+2, ctrl[:])
			return
		}
		off = int(hdr[1])
	}
	t.Fatal("no MSI-X capability")
}
