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
	mu      sync.Mutex
	peers   int
	rings   [][2]int
	states  []uint32
	modes   int  // InterruptModeChanged calls
	pending bool // what INTxPending answers
}

func (b *fakeBell) InterruptModeChanged() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.modes++
}

func (b *fakeBell) INTxPending() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pending
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
	d, bell, _, table := newTestDevice(t)
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
	writeReg(d, abi.RegState, 0xABCD) // the same value: no state change
	if binary.LittleEndian.Uint32(table[4:]) != 0xABCD || reg(d, abi.RegState) != 0xABCD || len(bell.states) != 1 {
		t.Errorf("state not mirrored once: table %x states %v", table[:12], bell.states)
	}
	writeReg(d, abi.RegID, 9) // read-only
	if reg(d, abi.RegID) != 1 {
		t.Error("ID is writable")
	}
	modes := bell.modes
	writeReg(d, abi.RegIntControl, 1)
	if reg(d, abi.RegIntControl) != 1 || !d.InterruptsEnabled() {
		t.Error("INT_CONTROL not set")
	}
	if bell.modes != modes+1 {
		t.Error("an INT_CONTROL write was not reported as an interrupt mode change")
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

// The INTx condition the VMM reports shows in the PCI Status register and
// INT_STATUS while MSI-X is off, and nowhere once MSI-X is on; config
// writes are reported as interrupt mode changes.
func TestINTxStatus(t *testing.T) {
	d, bell, _, _ := newTestDevice(t)
	var pin [1]byte
	d.ReadConfig(pci.RegInterruptPin, pin[:])
	if pin[0] != pci.PinA {
		t.Fatalf("interrupt pin %d, want INTA#", pin[0])
	}
	status := func() bool {
		var st [2]byte
		d.ReadConfig(pci.RegStatus, st[:])
		return st[0]&pci.StatusInterrupt != 0
	}
	if status() || reg(d, abi.RegIntStatus) != 0 {
		t.Fatal("INTx condition reported with nothing pending")
	}
	bell.mu.Lock()
	bell.pending = true
	bell.mu.Unlock()
	var dw [4]byte // a dword read of Command+Status, as Linux's INTx check does
	d.ReadConfig(pci.RegCommand, dw[:])
	if dw[2]&pci.StatusInterrupt == 0 || !status() || reg(d, abi.RegIntStatus) != 1 {
		t.Error("pending INTx condition not reported")
	}
	writeReg(d, abi.RegIntStatus, 0) // read-only
	if reg(d, abi.RegIntStatus) != 1 {
		t.Error("INT_STATUS writable")
	}
	modes := bell.modes
	var cmd [2]byte
	d.ReadConfig(pci.RegCommand, cmd[:])
	cmd[1] |= pci.CommandINTxDisable >> 8
	d.WriteConfig(pci.RegCommand, cmd[:])
	if !d.INTxDisabled() || bell.modes != modes+1 {
		t.Errorf("INTx disable: disabled %v, mode changes %d", d.INTxDisabled(), bell.modes-modes)
	}
	enableMSIX(t, d)
	if !d.MSIXEnabled() || status() || reg(d, abi.RegIntStatus) != 0 {
		t.Error("INTx condition reported while MSI-X is on")
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
