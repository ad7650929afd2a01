package vmm

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/ram"
	"rainforest/vmm/testguest"
)

// FICM channel tests: two test-guest VMs share one memfd mapped at the same
// guest-physical address, exchange 64-byte messages through it at CPL 3,
// and ring each other through an ioeventfd (sender) wired to an irqfd
// (receiver), with no VMM on the path.

const (
	ficmSharedGPA = 0xE000_0000
	ficmBellGPA   = 0xD000_0000
	ficmVector    = 0x41
)

// sharedPage creates a memfd of n bytes and maps it shared.
func sharedPage(t *testing.T, n int) []byte {
	t.Helper()
	fd, err := unix.MemfdCreate("ficm-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the machines' own cleanups, so it runs after them.
	t.Cleanup(func() { _ = unix.Munmap(mem) })
	return mem
}

// ficmPair makes two one-vCPU machines on different cores that both map
// one shared memfd at ficmSharedGPA.
func ficmPair(t *testing.T) (a, b *Machine, shared []byte) {
	t.Helper()
	needKVM(t)
	cores := onlineCores(t, 2)
	shared = sharedPage(t, 4096)
	// B first: cleanups run in reverse, so A (whose doorbell holds B's
	// irqfd eventfd) is closed before B closes that eventfd.
	b = newTestMachine(t, cores[1:2], ram.Page4K, testguest.MinMemory)
	a = newTestMachine(t, cores[:1], ram.Page4K, testguest.MinMemory)
	for _, m := range []*Machine{a, b} {
		if err := m.AddMemory(ficmSharedGPA, shared, false); err != nil {
			t.Fatal(err)
		}
	}
	return a, b, shared
}

// Mailbox layout in the shared page: one 64-byte message slot (word 0 is
// the sequence number, words 1-7 are seq+k) and the receiver's ack word on
// its own cache line.
const (
	mboxMsg = 0x00
	mboxAck = 0x40
	mboxLog = testguest.DataAddr + 0x100 // receiver's log of sequence numbers
)

// mailboxSender sends messages 1..n, each after the previous one was acked.
func mailboxSender(n int32) []byte {
	var c testguest.Code
	c.MovImm(testguest.RSI, ficmSharedGPA).MovImm(testguest.RCX, 1)
	loop := c.Len()
	wait := c.Len()
	c.Pause().Load(testguest.RAX, testguest.RSI, mboxAck)
	c.MovReg(testguest.RBX, testguest.RCX).AddImm(testguest.RBX, -1)
	c.Cmp(testguest.RAX, testguest.RBX).JumpIf(testguest.NotEqual, wait)
	for k := int32(1); k < 8; k++ {
		c.MovReg(testguest.RBX, testguest.RCX).AddImm(testguest.RBX, k)
		c.Store(testguest.RSI, mboxMsg+8*k, testguest.RBX)
	}
	c.Store(testguest.RSI, mboxMsg, testguest.RCX) // publish last
	c.Inc(testguest.RCX).CmpImm(testguest.RCX, n).JumpIf(testguest.BelowEqual, loop)
	final := c.Len()
	c.Pause().Load(testguest.RAX, testguest.RSI, mboxAck).CmpImm(testguest.RAX, n)
	c.JumpIf(testguest.NotEqual, final)
	c.MovRBX(1).Report(0).Spin()
	return c.Bytes()
}

// mailboxReceiver takes n messages: for each new sequence number it checks
// the payload (counting mismatches at DataAddr), logs the number at
// mboxLog+8*i and acks it.
func mailboxReceiver(n int32) []byte {
	var c testguest.Code
	c.MovImm(testguest.RSI, ficmSharedGPA).MovImm(testguest.RCX, 1)
	c.MovImm(testguest.RDI, mboxLog).MovImm(testguest.RDX, 0).MovImm(testguest.R8, 0)
	loop := c.Len()
	wait := c.Len()
	c.Pause().Load(testguest.RAX, testguest.RSI, mboxMsg)
	c.Cmp(testguest.RAX, testguest.RDX).JumpIf(testguest.Equal, wait)
	c.MovReg(testguest.RDX, testguest.RAX)
	for k := int32(1); k < 8; k++ {
		c.Load(testguest.RBX, testguest.RSI, mboxMsg+8*k).SubReg(testguest.RBX, testguest.RDX).CmpImm(testguest.RBX, k)
		ok := c.JumpIfForward(testguest.Equal)
		c.Inc(testguest.R8)
		c.Land(ok)
	}
	c.Store(testguest.RDI, 0, testguest.RDX).AddImm(testguest.RDI, 8)
	c.Store(testguest.RSI, mboxAck, testguest.RDX)
	c.Inc(testguest.RCX).CmpImm(testguest.RCX, n).JumpIf(testguest.BelowEqual, loop)
	c.MovImm(testguest.RAX, testguest.DataAddr).Store(testguest.RAX, 0, testguest.R8)
	c.MovRBX(1).Report(0).Spin()
	return c.Bytes()
}

// VM A sends N sequenced 64-byte messages through a mailbox in the shared
// page; VM B receives every one, in order and intact, and acks it.
func TestKVMFICMMessages(t *testing.T) {
	a, b, shared := ficmPair(t)
	const n = 2000
	recB, _ := startGuest(t, b, mailboxReceiver(n))
	recA, _ := startGuest(t, a, mailboxSender(n))
	recA.wait(t, 1)
	recB.wait(t, 1)
	if bad, _ := b.Mem.Uint64(testguest.DataAddr); bad != 0 {
		t.Errorf("receiver saw %d corrupt payload words", bad)
	}
	for i := uint64(0); i < n; i++ {
		got, err := b.Mem.Uint64(mboxLog + 8*i)
		if err != nil {
			t.Fatal(err)
		}
		if got != i+1 {
			t.Fatalf("message %d arrived as sequence %d", i+1, got)
		}
	}
	if ack := binary.LittleEndian.Uint64(shared[mboxAck:]); ack != n {
		t.Errorf("last ack in shared page = %d, want %d", ack, n)
	}
}

// VM A's write of 1 to its doorbell register raises vector 0x41 in VM B
// (ioeventfd datamatch -> irqfd) without an exit to A's VMM; a write of 2
// matches nothing, so it rings nobody and exits to A's MMIO bus instead.
func TestKVMFICMDoorbell(t *testing.T) {
	a, b, shared := ficmPair(t)
	vec, err := b.NewMSIVector(0xFEE00000, ficmVector)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.NewDoorbellMatch(ficmBellGPA, 4, 1, vec.EventFD()); err != nil {
		t.Fatal(err)
	}
	bell := newPortRecorder()
	if err := a.MMIO.Insert(bell, ficmBellGPA, 0x1000); err != nil {
		t.Fatal(err)
	}
	const goFlag = 0x80 // host -> A: ring now
	var cb testguest.Code
	cb.MovRBX(1).Report(0)
	cb.WaitNonZero(testguest.CounterFor(ficmVector))
	cb.MovRBX(2).Report(0).Spin()
	var ca testguest.Code
	ca.MovRAX(ficmBellGPA).MovRBX(2).Store32() // no match
	ca.MovRBX(1).Report(0)
	ca.WaitNonZero(ficmSharedGPA + goFlag)
	ca.MovRAX(ficmBellGPA).MovRBX(1).Store32() // rings B
	ca.MovRBX(2).Report(0).Spin()

	recB, _ := startGuest(t, b, cb.Bytes())
	recB.wait(t, 1)
	recA, _ := startGuest(t, a, ca.Bytes())
	recA.wait(t, 1)
	time.Sleep(200 * time.Millisecond)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(ficmVector)); n != 0 {
		t.Fatalf("a non-matching doorbell write raised vector %#x in B %d times", ficmVector, n)
	}
	bell.mu.Lock()
	nonMatch := append([]portWrite(nil), bell.writes...)
	bell.mu.Unlock()
	if len(nonMatch) != 1 || nonMatch[0].value != 2 {
		t.Fatalf("A's MMIO bus saw %+v at the doorbell, want the one non-matching write of 2", nonMatch)
	}

	binary.LittleEndian.PutUint64(shared[goFlag:], 1)
	ws := recB.wait(t, 2)
	if ws[1].value != 2 {
		t.Fatalf("B's second report = %d", ws[1].value)
	}
	recA.wait(t, 2)
	if n, _ := b.Mem.Uint64(testguest.CounterFor(ficmVector)); n != 1 {
		t.Errorf("B handled vector %#x %d times, want 1", ficmVector, n)
	}
	bell.mu.Lock()
	defer bell.mu.Unlock()
	if len(bell.writes) != 1 {
		t.Errorf("the matching doorbell write reached A's VMM: %+v", bell.writes)
	}
}
