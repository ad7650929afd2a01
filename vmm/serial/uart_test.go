package serial

import (
	"bytes"
	"sync"
	"testing"
)

// fakeIRQ records levels set on it.
type fakeIRQ struct {
	mu     sync.Mutex
	high   bool
	raises int
}

func (f *fakeIRQ) SetLevel(high bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if high && !f.high {
		f.raises++
	}
	f.high = high
}

func (f *fakeIRQ) level() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.high
}

func newTest(t *testing.T, capacity int) (*UART, *fakeIRQ, *bytes.Buffer) {
	t.Helper()
	irq := &fakeIRQ{}
	out := &bytes.Buffer{}
	return New(out, irq, capacity), irq, out
}

func rd(u *UART, off uint64) byte {
	b := []byte{0}
	u.Read(off, b)
	return b[0]
}

func wr(u *UART, off uint64, v byte) { u.Write(off, []byte{v}) }

func TestTransmit(t *testing.T) {
	u, irq, out := newTest(t, 0)
	for _, c := range []byte("hi\n") {
		if rd(u, RegLSR)&(LSRTHRE|LSRTEMT) != LSRTHRE|LSRTEMT {
			t.Fatal("THR not empty")
		}
		wr(u, RegTHR, c)
	}
	if out.String() != "hi\n" {
		t.Errorf("output %q", out.String())
	}
	if irq.level() {
		t.Error("IRQ raised with interrupts disabled")
	}
}

func TestTHREInterrupt(t *testing.T) {
	u, irq, _ := newTest(t, 0)
	if got := rd(u, RegIIR); got != IIRNoInt {
		t.Fatalf("idle IIR %#x", got)
	}
	wr(u, RegIER, IERTHRE)
	if !irq.level() {
		t.Fatal("enabling THRE did not raise IRQ")
	}
	if got := rd(u, RegIIR); got != IIRTHRE {
		t.Fatalf("IIR %#x, want THRE", got)
	}
	// Reading IIR acknowledged THRE.
	if irq.level() {
		t.Error("IRQ still high after IIR read")
	}
	if got := rd(u, RegIIR); got != IIRNoInt {
		t.Errorf("second IIR %#x, want no interrupt", got)
	}
	// Writing THR makes THR empty again: THRE pending again.
	wr(u, RegTHR, 'x')
	if !irq.level() || rd(u, RegIIR) != IIRTHRE {
		t.Error("no THRE interrupt after transmit")
	}
	// Toggling IER THRE off and on re-raises it (Linux's THRE test).
	wr(u, RegIER, 0)
	if irq.level() {
		t.Error("IRQ high with IER 0")
	}
	wr(u, RegIER, IERTHRE)
	if !irq.level() {
		t.Error("re-enabling THRE did not raise IRQ")
	}
	// Re-writing IER with THRE already on does not re-raise after ack.
	rd(u, RegIIR)
	wr(u, RegIER, IERTHRE|IERRxData)
	if irq.level() {
		t.Error("IER rewrite without THRE edge raised IRQ")
	}
}

func TestRxInterrupt(t *testing.T) {
	u, irq, _ := newTest(t, 0)
	wr(u, RegIER, IERRxData)
	if irq.level() {
		t.Fatal("IRQ with empty FIFO")
	}
	if n := u.Enqueue([]byte("ab")); n != 2 {
		t.Fatalf("Enqueue accepted %d", n)
	}
	if !irq.level() {
		t.Fatal("no IRQ on input")
	}
	if got := rd(u, RegIIR); got != IIRRxData {
		t.Errorf("IIR %#x, want RX data", got)
	}
	if rd(u, RegLSR)&LSRDataReady == 0 {
		t.Error("LSR DR clear")
	}
	if a, b := rd(u, RegRBR), rd(u, RegRBR); a != 'a' || b != 'b' {
		t.Errorf("read %q %q", a, b)
	}
	if irq.level() || rd(u, RegLSR)&LSRDataReady != 0 {
		t.Error("IRQ or DR still set after draining")
	}
	if got := rd(u, RegRBR); got != 0 {
		t.Errorf("empty RBR read %#x", got)
	}
}

func TestRxPriorityOverTHRE(t *testing.T) {
	u, irq, _ := newTest(t, 0)
	wr(u, RegIER, IERRxData|IERTHRE)
	u.Enqueue([]byte{'z'})
	if got := rd(u, RegIIR); got != IIRRxData {
		t.Fatalf("IIR %#x, want RX first", got)
	}
	rd(u, RegRBR)
	if !irq.level() {
		t.Fatal("THRE still pending but IRQ low")
	}
	if got := rd(u, RegIIR); got != IIRTHRE {
		t.Errorf("IIR %#x, want THRE", got)
	}
}

func TestOverflowDrops(t *testing.T) {
	u, _, _ := newTest(t, 4)
	if n := u.Enqueue([]byte("123456")); n != 4 {
		t.Errorf("accepted %d, want 4", n)
	}
	if d := u.Dropped(); d != 2 {
		t.Errorf("dropped %d, want 2", d)
	}
	rd(u, RegRBR)
	u.Enqueue([]byte("78"))
	if d := u.Dropped(); d != 3 {
		t.Errorf("dropped %d, want 3", d)
	}
	var got []byte
	for rd(u, RegLSR)&LSRDataReady != 0 {
		got = append(got, rd(u, RegRBR))
	}
	if string(got) != "2347" {
		t.Errorf("read %q, want 2347", got)
	}
}

func TestLoopback(t *testing.T) {
	u, irq, out := newTest(t, 0)
	// Linux's autoconfig check: MCR = LOOP|OUT2|RTS gives MSR 0x90.
	wr(u, RegMCR, MCRLoop|MCROUT2|MCRRTS)
	if got := rd(u, RegMSR) & 0xF0; got != 0x90 {
		t.Errorf("loopback MSR %#x, want 0x90", got)
	}
	wr(u, RegIER, IERRxData)
	wr(u, RegTHR, 'Q')
	if out.Len() != 0 {
		t.Errorf("loopback byte leaked to output: %q", out.String())
	}
	if !irq.level() || rd(u, RegRBR) != 'Q' {
		t.Error("loopback byte not received")
	}
	// Modem status interrupt from a loopback line change.
	wr(u, RegIER, IERModem)
	wr(u, RegMCR, MCRLoop|MCROUT2|MCRRTS|MCRDTR)
	if !irq.level() || rd(u, RegIIR) != IIRModemStatus {
		t.Error("no modem status interrupt")
	}
	if got := rd(u, RegMSR); got != MSRDSR|MSRCTS|MSRDCD|MSRDeltaDSR {
		t.Errorf("MSR %#x", got)
	}
	if irq.level() {
		t.Error("reading MSR did not clear the modem interrupt")
	}
	wr(u, RegIER, 0)
	wr(u, RegMCR, MCROUT2)
	if got := rd(u, RegMSR) & 0xF0; got != MSRCTS|MSRDSR|MSRDCD {
		t.Errorf("MSR after loopback %#x", got)
	}
	wr(u, RegTHR, 'o')
	if out.String() != "o" {
		t.Errorf("output %q", out.String())
	}
}

func TestDivisorLatch(t *testing.T) {
	u, _, out := newTest(t, 0)
	wr(u, RegIER, IERRxData)
	wr(u, RegLCR, LCRDLAB|0x03)
	wr(u, RegDLL, 0x01)
	wr(u, RegDLM, 0x00)
	if rd(u, RegDLL) != 0x01 || rd(u, RegDLM) != 0x00 {
		t.Error("divisor latch not stored")
	}
	if out.Len() != 0 {
		t.Error("DLL write transmitted")
	}
	wr(u, RegLCR, 0x03)
	if got := rd(u, RegIER); got != IERRxData {
		t.Errorf("IER %#x after DLAB, want %#x", got, IERRxData)
	}
	if rd(u, RegLCR) != 0x03 {
		t.Error("LCR")
	}
}

func TestFIFOControlAndScratch(t *testing.T) {
	u, _, _ := newTest(t, 0)
	wr(u, RegFCR, FCREnable)
	if got := rd(u, RegIIR); got>>6 != 3 {
		t.Errorf("IIR %#x: FIFO bits not set (Linux would not see a 16550A)", got)
	}
	u.Enqueue([]byte("abc"))
	wr(u, RegFCR, FCREnable|FCRClearRx)
	if rd(u, RegLSR)&LSRDataReady != 0 {
		t.Error("FCR clear RX left data")
	}
	wr(u, RegSCR, 0x5A)
	if rd(u, RegSCR) != 0x5A {
		t.Error("scratch")
	}
}

func TestGarbageAccesses(t *testing.T) {
	u, irq, out := newTest(t, 0)
	u.Enqueue([]byte("k"))
	for _, off := range []uint64{8, 100, 1 << 63, ^uint64(0)} {
		b := []byte{0}
		u.Read(off, b)
		if b[0] != 0xFF {
			t.Errorf("read at %#x = %#x", off, b[0])
		}
		u.Write(off, []byte{0xFF})
	}
	for _, n := range []int{0, 2, 4, 8} {
		b := make([]byte, n)
		u.Read(RegRBR, b)
		for _, x := range b {
			if x != 0xFF {
				t.Errorf("width %d read % x", n, b)
			}
		}
		u.Write(RegTHR, make([]byte, n))
		u.Write(RegIER, bytes.Repeat([]byte{0xFF}, n))
	}
	if out.Len() != 0 || irq.level() {
		t.Error("garbage accesses had effects")
	}
	if rd(u, RegRBR) != 'k' {
		t.Error("wide read consumed input")
	}
	wr(u, RegLSR, 0)
	wr(u, RegMSR, 0)
}

func TestConcurrent(t *testing.T) {
	u, _, out := newTest(t, 64)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for i := 0; i < 1000; i++ {
			u.Enqueue([]byte("xy"))
		}
	}()
	for w := 0; w < 2; w++ {
		go func() {
			defer wg.Done()
			wr(u, RegIER, IERRxData|IERTHRE)
			for i := 0; i < 1000; i++ {
				rd(u, RegIIR)
				rd(u, RegRBR)
				wr(u, RegTHR, '.')
			}
		}()
	}
	wg.Wait()
	if out.Len() != 2000 {
		t.Errorf("output %d bytes", out.Len())
	}
}
