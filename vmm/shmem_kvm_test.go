package vmm

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/pci"
	"rainforest/vmm/ram"
	"rainforest/vmm/shmem/abi"
	"rainforest/vmm/testguest"
)

// Shared-memory device tests: two test-guest VMs, each with a shmem PCI
// function over one memfd, ring each other through the DOORBELL register
// (ioeventfd in the sender wired to the receiver's irqfd).

const shmemTestVector = 0x42

// pciConfigWrite writes data at reg of slot's config space through the
// configuration ports, as a guest would.
func pciConfigWrite(m *Machine, slot, reg int, data []byte) {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(slot)<<11|uint32(reg&^3))
	m.PIO.Write(pci.ConfigPortBase, a[:])
	m.PIO.Write(pci.ConfigPortBase+4+uint64(reg&3), data)
}

func pciConfigRead(m *Machine, slot, reg int, data []byte) {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(slot)<<11|uint32(reg&^3))
	m.PIO.Write(pci.ConfigPortBase, a[:])
	m.PIO.Read(pci.ConfigPortBase+4+uint64(reg&3), data)
}

// programMSIX points MSI-X entry 0 of sm at the boot CPU's local APIC with
// vector, unmasks it and enables MSI-X, as a driver would.
func programMSIX(t *testing.T, m *Machine, sm *shmemdev.Device, vector uint32) {
	t.Helper()
	table := sm.BARAddr(abi.MSIXBAR)
	put := func(off uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		if !m.MMIO.Write(table+off, b[:]) {
			t.Fatalf("MSI-X table write at %#x reached nothing", table+off)
		}
	}
	put(0, 0xFEE00000)
	put(4, 0)
	put(8, vector)
	put(12, 0) // unmasked
	var p [1]byte
	pciConfigRead(m, sm.Slot(), pci.RegCapPointer, p[:])
	for off := int(p[0]); off != 0; {
		var hdr [2]byte
		pciConfigRead(m, sm.Slot(), off, hdr[:])
		if hdr[0] == pci.CapIDMSIX {
			var ctrl [2]byte
			pciConfigRead(m, sm.Slot(), off+2, ctrl[:])
			ctrl[1] |= 0x80 // MSI-X Enable
			pciConfigWrite(m, sm.Slot(), off+2, ctrl[:])
			return
		}
		off = int(hdr[1])
	}
	t.Fatal("no MSI-X capability")
}

// shmemPair makes machines A (peer 0) and B (peer 1), each with a shared
// memory function over one region and connected to the other.
func shmemPair(t *testing.T, l abi.Layout) (a, b *Machine, sa, sb *shmemdev.Device, region []byte) {
	t.Helper()
	return shmemPairLimited(t, l, tokenbucket.Limit{})
}

// shmemPairLimited is shmemPair with each side's doorbells held to limit.
func shmemPairLimited(t *testing.T, l abi.Layout, limit tokenbucket.Limit) (a, b *Machine, sa, sb *shmemdev.Device, region []byte) {
	t.Helper()
	needKVM(t)
	cores := onlineCores(t, 2)
	region = sharedPage(t, int(l.Size()))
	b = newTestMachine(t, cores[1:2], ram.Page4K, testguest.MinMemory)
	a = newTestMachine(t, cores[:1], ram.Page4K, testguest.MinMemory)
	var err error
	if sa, err = a.AddSharedMemory(shmemdev.Config{ID: 0, Layout: l, Region: region, Vectors: 1, DoorbellLimit: limit}); err != nil {
		t.Fatal(err)
	}
	if sb, err = b.AddSharedMemory(shmemdev.Config{ID: 1, Layout: l, Region: region, Vectors: 1, DoorbellLimit: limit}); err != nil {
		t.Fatal(err)
	}
	if err := sa.ConnectPeer(shmemdev.PeerDoorbells{Peer: 1, Vectors: []*eventfd.EventFD{sb.Vector(0)}}); err != nil {
		t.Fatal(err)
	}
	if err := sb.ConnectPeer(shmemdev.PeerDoorbells{Peer: 0, Vectors: []*eventfd.EventFD{sa.Vector(0)}}); err != nil {
		t.Fatal(err)
	}
	return a, b, sa, sb, region
}

// A writes a message into its output section and rings peer 1 vector 0
// through its DOORBELL register: B takes interrupt 0x42 with no exit to A's
// VMM, and reads the message from A's section (mapped read-only in B). B's
// write into A's section traps, is dropped and counted. Doorbells to a peer
// or vector that does not exist are dropped and counted in A.
func TestKVMSharedMemoryDevice(t *testing.T) {
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	a, b, sa, sb, region := shmemPair(t, l)
	if err := sa.ConnectPeer(shmemdev.PeerDoorbells{Peer: 1, Vectors: []*eventfd.EventFD{sb.Vector(0)}}); !errors.Is(err, shmemdev.ErrConfig) {
		t.Errorf("second connection of peer 1: %v", err)
	}
	if err := sa.ConnectPeer(shmemdev.PeerDoorbells{Peer: 2, Vectors: []*eventfd.EventFD{sb.Vector(0)}}); !errors.Is(err, shmemdev.ErrConfig) {
		t.Errorf("connection of peer 2 of 2: %v", err)
	}
	programMSIX(t, b, sb, shmemTestVector)

	const msg = 0x1122334455667788
	aBell := sa.BARAddr(abi.RegBAR) + abi.RegDoorbell
	aOut := sa.BARAddr(abi.MemBAR) + l.OutputOffset(0)
	bAOut := sb.BARAddr(abi.MemBAR) + l.OutputOffset(0) // A's section as B sees it
	if aBell == abi.RegDoorbell || aOut == l.OutputOffset(0) || bAOut == l.OutputOffset(0) {
		t.Fatalf("BARs not assigned: A %#x/%#x B %#x", aBell, aOut, bAOut)
	}

	var cb testguest.Code
	cb.MovRBX(1).Report(0) // ready
	cb.WaitNonZero(testguest.CounterFor(shmemTestVector))
	cb.MovRAX(bAOut).Load64() // A's message
	cb.MovRAX(testguest.DataAddr).Store64()
	cb.MovRBX(2).Report(0)
	cb.MovRAX(bAOut + 8).MovRBX(0xBAD).Store64() // read-only: traps
	cb.MovRBX(3).Report(0).Spin()

	var ca testguest.Code
	ca.MovRAX(aOut).MovRBX(msg).Store64()
	ca.MovRAX(aBell).MovRBX(1 << 16).Store32() // peer 1, vector 0
	ca.MovRBX(1).Report(0)
	ca.WaitNonZero(testguest.DataAddr)
	ca.MovRAX(aBell).MovRBX(7 << 16).Store32()   // no such peer
	ca.MovRAX(aBell).MovRBX(1<<16 | 5).Store32() // no such vector
	ca.MovRBX(2).Report(0).Spin()

	recB, _ := startGuest(t, b, cb.Bytes())
	recB.wait(t, 1)
	recA, _ := startGuest(t, a, ca.Bytes())
	recA.wait(t, 1)
	ws := recB.wait(t, 3)
	if ws[1].value != 2 || ws[2].value != 3 {
		t.Fatalf("B reported %+v", ws)
	}
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Errorf("B handled vector %#x %d times, want 1", shmemTestVector, n)
	}
	if got, _ := b.Mem.Uint64(testguest.DataAddr); got != msg {
		t.Errorf("B read %#x from A's output section, want %#x", got, msg)
	}
	if st := sa.Stats(); st != (shmemdev.Stats{}) {
		t.Errorf("A's doorbell reached A's VMM: %+v", st)
	}
	off := l.OutputOffset(0)
	if got := binary.LittleEndian.Uint64(region[off:]); got != msg {
		t.Errorf("A's output section holds %#x", got)
	}
	if got := binary.LittleEndian.Uint64(region[off+8:]); got != 0 {
		t.Errorf("B's write into A's read-only section landed: %#x", got)
	}
	if st := sb.Stats(); st.ROWrites != 1 || st.Dropped != 0 {
		t.Errorf("B's stats %+v, want one trapped read-only write", st)
	}

	if err := a.Mem.PutUint64(testguest.DataAddr, 1); err != nil {
		t.Fatal(err)
	}
	recA.wait(t, 2)
	time.Sleep(100 * time.Millisecond)
	if st := sa.Stats(); st.Dropped != 2 || st.Fallback != 0 {
		t.Errorf("A's stats %+v, want 2 dropped doorbells", st)
	}
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Errorf("dropped doorbells raised vector %#x in B: %d times", shmemTestVector, n)
	}
}

// A signal of a vector while the guest has it masked is kept and
// delivered when the guest unmasks it.
func TestKVMSharedMemoryPendingUntilUnmasked(t *testing.T) {
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	_, b, _, sb, _ := shmemPair(t, l)
	var cb testguest.Code
	cb.MovRBX(1).Report(0)
	cb.WaitNonZero(testguest.CounterFor(shmemTestVector))
	cb.MovRBX(2).Report(0).Spin()
	recB, _ := startGuest(t, b, cb.Bytes())
	recB.wait(t, 1)
	if err := sb.Vector(0).Signal(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 0 {
		t.Fatalf("masked vector delivered %d times", n)
	}
	programMSIX(t, b, sb, shmemTestVector)
	recB.wait(t, 2)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Errorf("vector delivered %d times after unmask, want 1", n)
	}
}

// The guest moves A's register and memory BARs: the doorbell ioeventfds
// and the memory slots follow, so the same exchange works at the new
// addresses.
func TestKVMSharedMemoryBARMove(t *testing.T) {
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	a, b, sa, sb, region := shmemPair(t, l)
	programMSIX(t, b, sb, shmemTestVector)
	const newReg, newMem = 0xC100_0000, 0xC200_0000
	var v [4]byte
	binary.LittleEndian.PutUint32(v[:], newReg)
	pciConfigWrite(a, sa.Slot(), pci.RegBAR0+4*abi.RegBAR, v[:])
	binary.LittleEndian.PutUint32(v[:], newMem|0xC) // flags are read-only
	pciConfigWrite(a, sa.Slot(), pci.RegBAR0+4*abi.MemBAR, v[:])
	if got := sa.BARAddr(abi.RegBAR); got != newReg {
		t.Fatalf("register BAR at %#x after move", got)
	}
	if got := sa.BARAddr(abi.MemBAR); got != newMem {
		t.Fatalf("memory BAR at %#x after move", got)
	}
	const msg = 0x5555AAAA
	var cb testguest.Code
	cb.MovRBX(1).Report(0)
	cb.WaitNonZero(testguest.CounterFor(shmemTestVector))
	cb.MovRBX(2).Report(0).Spin()
	var ca testguest.Code
	ca.MovRAX(newMem + l.OutputOffset(0)).MovRBX(msg).Store64()
	ca.MovRAX(newReg + abi.RegDoorbell).MovRBX(1 << 16).Store32()
	ca.MovRBX(1).Report(0).Spin()
	recB, _ := startGuest(t, b, cb.Bytes())
	recB.wait(t, 1)
	recA, _ := startGuest(t, a, ca.Bytes())
	recA.wait(t, 1)
	recB.wait(t, 2)
	if got := binary.LittleEndian.Uint64(region[l.OutputOffset(0):]); got != msg {
		t.Errorf("store at the moved memory BAR: section holds %#x", got)
	}
	if st := sa.Stats(); st != (shmemdev.Stats{}) {
		t.Errorf("A's stats %+v after the moved doorbell", st)
	}
}

// A doorbell to the guest's own peer id exits to the VMM (no ioeventfd is
// registered for it) and is delivered through the vector's eventfd when
// INT_CONTROL is on.
func TestKVMSharedMemorySelfDoorbell(t *testing.T) {
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	_, b, _, sb, _ := shmemPair(t, l)
	programMSIX(t, b, sb, shmemTestVector)
	regs := sb.BARAddr(abi.RegBAR)
	var cb testguest.Code
	cb.MovRAX(regs + abi.RegDoorbell).MovRBX(1 << 16).Store32() // interrupts off: nothing
	cb.MovRAX(regs + abi.RegIntControl).MovRBX(1).Store32()
	cb.MovRAX(regs + abi.RegDoorbell).MovRBX(1 << 16).Store32()
	cb.WaitNonZero(testguest.CounterFor(shmemTestVector))
	cb.MovRBX(1).Report(0).Spin()
	recB, _ := startGuest(t, b, cb.Bytes())
	recB.wait(t, 1)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Errorf("self doorbell delivered %d times, want 1", n)
	}
	if st := sb.Stats(); st.Fallback != 2 || st.Dropped != 0 {
		t.Errorf("stats %+v, want two doorbells handled by the VMM", st)
	}
}

// Bad configurations are refused with shmemdev.ErrConfig.
func TestKVMSharedMemoryConfigErrors(t *testing.T) {
	needKVM(t)
	m := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	region := make([]byte, l.Size())
	for _, c := range []shmemdev.Config{
		{ID: 0, Layout: abi.Layout{Peers: 0, OutputSize: 4096}, Region: region, Vectors: 1},
		{ID: 0, Layout: l, Region: region[:4096], Vectors: 1},
		{ID: 0, Layout: l, Region: region, Vectors: 0},
		{ID: 0, Layout: l, Region: region, Vectors: 65},
		{ID: 2, Layout: l, Region: region, Vectors: 1},
		{ID: 0, Layout: l, Region: region, Vectors: 1, Peers: []shmemdev.PeerDoorbells{{Peer: 1, Vectors: []*eventfd.EventFD{nil}}}},
	} {
		if _, err := m.AddSharedMemory(c); !errors.Is(err, shmemdev.ErrConfig) {
			t.Errorf("%+v: %v, want shmemdev.ErrConfig", c.Layout, err)
		}
	}
}

// A channel's eventfds can be made before any peer's VMM (as a supervisor
// would) and handed to the device as its incoming vectors: signalling the
// original eventfd interrupts the guest.
func TestKVMSharedMemoryIncomingEventFDs(t *testing.T) {
	needKVM(t)
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	ev, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	region := sharedPage(t, int(l.Size())) // unmapped after the machine is closed
	b := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	if _, err := b.AddSharedMemory(shmemdev.Config{ID: 1, Layout: l, Region: region, Vectors: 2, Incoming: []*eventfd.EventFD{ev}}); !errors.Is(err, shmemdev.ErrConfig) {
		t.Errorf("one eventfd for two vectors: %v", err)
	}
	sb, err := b.AddSharedMemory(shmemdev.Config{ID: 1, Layout: l, Region: region, Vectors: 1, Incoming: []*eventfd.EventFD{ev}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.Vector(0).Fd() == ev.Fd() {
		t.Error("incoming eventfd not duplicated")
	}
	var cb testguest.Code
	cb.MovRBX(1).Report(0)
	cb.WaitNonZero(testguest.CounterFor(shmemTestVector))
	cb.MovRBX(2).Report(0).Spin()
	recB, _ := startGuest(t, b, cb.Bytes())
	recB.wait(t, 1)
	programMSIX(t, b, sb, shmemTestVector)
	if err := ev.Signal(); err != nil {
		t.Fatal(err)
	}
	recB.wait(t, 2)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Errorf("vector delivered %d times, want 1", n)
	}
}

// ioapicRoute is test guest code that routes IOAPIC input pin to vector
// (level-triggered, active high, to APIC 0) through the IOAPIC's MMIO
// window, as a guest kernel would.
func ioapicRoute(c *testguest.Code, pin uint32, vector uint32) {
	const regsel, win = 0xFEC0_0000, 0xFEC0_0010
	c.MovRAX(regsel).MovRBX(uint64(0x11 + 2*pin)).Store32()
	c.MovRAX(win).MovRBX(0).Store32()
	c.MovRAX(regsel).MovRBX(uint64(0x10 + 2*pin)).Store32()
	c.MovRAX(win).MovRBX(uint64(vector) | 1<<15).Store32()
}

// With MSI-X off (a guest using uio_pci_generic), a peer's doorbell
// raises INTA# straight from its eventfd (a resampling irqfd: no VMM thread
// on the path) and the guest takes it as a level interrupt. While the
// guest has INTx disabled (uio's acknowledgement) a doorbell is held, and
// the PCI Status register and INT_STATUS show it pending; re-enabling INTx
// delivers it. With MSI-X on, INTx is left alone.
func TestKVMSharedMemoryINTx(t *testing.T) {
	needKVM(t)
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	ev, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	region := sharedPage(t, int(l.Size())) // unmapped after the machine is closed
	b := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	sb, err := b.AddSharedMemory(shmemdev.Config{ID: 1, Layout: l, Region: region, Vectors: 1, Incoming: []*eventfd.EventFD{ev}})
	if err != nil {
		t.Fatal(err)
	}
	var pin [1]byte
	pciConfigRead(b, sb.Slot(), pci.RegInterruptLine, pin[:])
	gsi := uint32(pin[0])
	if gsi < 16 || gsi > 23 {
		t.Fatalf("interrupt line %d, want a PCI INTx input 16..23", gsi)
	}
	status := func() bool {
		var st [4]byte
		pciConfigRead(b, sb.Slot(), pci.RegCommand, st[:])
		return st[2]&pci.StatusInterrupt != 0
	}
	setINTxDisable := func(on bool) {
		var cmd [2]byte
		pciConfigRead(b, sb.Slot(), pci.RegCommand, cmd[:])
		if on {
			cmd[1] |= pci.CommandINTxDisable >> 8
		} else {
			cmd[1] &^= pci.CommandINTxDisable >> 8
		}
		pciConfigWrite(b, sb.Slot(), pci.RegCommand, cmd[:])
	}
	regs := sb.BARAddr(abi.RegBAR)
	var w [4]byte
	binary.LittleEndian.PutUint32(w[:], 1)
	b.MMIO.Write(regs+abi.RegIntControl, w[:])

	var cb testguest.Code
	ioapicRoute(&cb, gsi, shmemTestVector)
	cb.MovRBX(1).Report(0)
	cb.WaitNonZero(testguest.CounterFor(shmemTestVector))
	cb.MovRBX(2).Report(0)
	cb.MovRAX(testguest.DataAddr).MovRBX(0).Store64()
	cb.WaitNonZero(testguest.DataAddr) // the host says: the second one is on its way
	start := cb.Len()
	cb.MovImm(testguest.RAX, testguest.CounterFor(shmemTestVector)).Load(testguest.RBX, testguest.RAX, 0)
	cb.CmpImm(testguest.RBX, 2)
	cb.JumpIf(testguest.Below, start)
	cb.MovRBX(3).Report(0).Spin()
	rec, _ := startGuest(t, b, cb.Bytes())
	rec.wait(t, 1)
	if status() {
		t.Error("Interrupt Status set with nothing pending")
	}
	if err := ev.Signal(); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, 2)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Fatalf("INTx delivered %d times, want 1", n)
	}
	// The guest's handler signalled EOI, so KVM lowered the line.
	if on, err := b.VM().Asserted(gsi); err != nil || on {
		t.Errorf("GSI %d asserted after EOI: %v %v", gsi, on, err)
	}

	// uio_pci_generic's acknowledgement: INTx disabled. A doorbell now
	// waits, visible as pending.
	setINTxDisable(true)
	if err := ev.Signal(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector)); n != 1 {
		t.Fatalf("doorbell delivered while INTx is disabled (%d interrupts)", n)
	}
	if !status() {
		t.Error("Interrupt Status clear with a doorbell held")
	}
	var r [4]byte
	b.MMIO.Read(regs+abi.RegIntStatus, r[:])
	if binary.LittleEndian.Uint32(r[:]) != 1 {
		t.Errorf("INT_STATUS %#x with a doorbell held, want 1", r)
	}
	if err := b.Mem.PutUint64(testguest.DataAddr, 1); err != nil {
		t.Fatal(err)
	}
	setINTxDisable(false)
	rec.wait(t, 3)
	if st := sb.Stats(); st.Fallback != 0 || st.Dropped != 0 {
		t.Errorf("doorbells reached the VMM: %+v", st)
	}

	// With MSI-X on, the vector is an MSI again and INTx stays low.
	programMSIX(t, b, sb, shmemTestVector+1)
	if err := ev.Signal(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if on, _ := b.VM().Asserted(gsi); on {
		t.Error("INTx asserted while MSI-X is on")
	}
	if n, _ := b.Mem.Uint64(testguest.CounterFor(shmemTestVector + 1)); n != 1 {
		t.Errorf("MSI delivered %d times, want 1", n)
	}
}
