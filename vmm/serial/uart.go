// Package serial models a 16550A UART, the guest's serial console.
//
// A UART is a bus.Device for the 8-register I/O window (COM1 is 0x3F8,
// IRQ 4). Bytes the guest transmits go to an io.Writer (the console log);
// bytes from an attached terminal come in through Enqueue into a bounded
// receive FIFO. Transmission is instantaneous: THR is always empty. The
// interrupt output is an IRQLine held high while an enabled interrupt is
// pending and low otherwise.
package serial

import (
	"io"
	"sync"
)

// IRQLine is the UART's interrupt output. The VMM implements it with
// KVM_IRQ_LINE. SetLevel is called with the UART's lock held, only when the
// level changes; it must not call back into the UART.
type IRQLine interface {
	SetLevel(high bool)
}

// Register offsets.
const (
	RegRBR = 0 // read, DLAB=0: receiver buffer
	RegTHR = 0 // write, DLAB=0: transmitter holding
	RegDLL = 0 // DLAB=1: divisor latch low
	RegIER = 1 // DLAB=0: interrupt enable
	RegDLM = 1 // DLAB=1: divisor latch high
	RegIIR = 2 // read: interrupt identification
	RegFCR = 2 // write: FIFO control
	RegLCR = 3 // line control
	RegMCR = 4 // modem control
	RegLSR = 5 // line status
	RegMSR = 6 // modem status
	RegSCR = 7 // scratch
	// NumRegs is the size of the UART's I/O window.
	NumRegs = 8
)

// Register bits.
const (
	IERRxData     = 0x01 // received data available
	IERTHRE       = 0x02 // transmitter holding register empty
	IERLineStatus = 0x04
	IERModem      = 0x08

	IIRNoInt       = 0x01
	IIRModemStatus = 0x00
	IIRTHRE        = 0x02
	IIRRxData      = 0x04
	IIRLineStatus  = 0x06
	IIRFIFOEnabled = 0xC0

	FCREnable  = 0x01
	FCRClearRx = 0x02
	FCRClearTx = 0x04

	LCRDLAB = 0x80

	MCRDTR  = 0x01
	MCRRTS  = 0x02
	MCROUT1 = 0x04
	MCROUT2 = 0x08
	MCRLoop = 0x10

	LSRDataReady = 0x01
	LSROverrun   = 0x02
	LSRTHRE      = 0x20
	LSRTEMT      = 0x40

	MSRDeltaCTS = 0x01
	MSRDeltaDSR = 0x02
	MSRTERI     = 0x04
	MSRDeltaDCD = 0x08
	MSRCTS      = 0x10
	MSRDSR      = 0x20
	MSRRI       = 0x40
	MSRDCD      = 0x80
)

// DefaultInputCapacity is the receive FIFO size New uses when given 0.
const DefaultInputCapacity = 4096

// msrIdle is what the modem status lines read outside loopback: a terminal
// is present and ready (CTS, DSR, DCD).
const msrIdle = MSRCTS | MSRDSR | MSRDCD

// UART is a 16550A. It is safe for concurrent use by vCPU threads and the
// goroutine feeding terminal input.
type UART struct {
	mu  sync.Mutex
	out io.Writer
	irq IRQLine

	ier, lcr, mcr, scr, fcr byte
	msr                     byte // status bits 4-7 and delta bits 0-3
	dll, dlm                byte
	lsrErr                  byte // sticky LSR error bits, cleared by reading LSR
	thrPending              bool // THRE interrupt pending
	level                   bool // last level given to irq

	rx      []byte // ring buffer
	rxHead  int
	rxLen   int
	dropped uint64
	outErrs uint64
}

// New returns a UART writing guest output to out (nil discards it) and
// signalling irq (nil: no interrupt line). inputCapacity bounds the receive
// FIFO; 0 or less means DefaultInputCapacity.
func New(out io.Writer, irq IRQLine, inputCapacity int) *UART {
	if out == nil {
		out = io.Discard
	}
	if inputCapacity <= 0 {
		inputCapacity = DefaultInputCapacity
	}
	return &UART{
		out: out,
		irq: irq,
		msr: msrIdle,
		dll: 0x0C, // 9600 baud, as firmware leaves it
		rx:  make([]byte, inputCapacity),
	}
}

// Enqueue adds terminal input for the guest to read. Bytes that do not fit
// in the receive FIFO are dropped and counted; it returns how many were
// accepted. In loopback mode the external input is still queued (real
// hardware would lose it; keeping it is kinder to a user typing early).
func (u *UART) Enqueue(b []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := u.push(b)
	u.update()
	return n
}

// Dropped returns how many input bytes were dropped because the receive FIFO
// was full.
func (u *UART) Dropped() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dropped
}

// OutputErrors returns how many transmitted bytes the output writer failed
// to take.
func (u *UART) OutputErrors() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.outErrs
}

func (u *UART) push(b []byte) int {
	n := 0
	for _, c := range b {
		if u.rxLen == len(u.rx) {
			u.dropped += uint64(len(b) - n)
			break
		}
		u.rx[(u.rxHead+u.rxLen)%len(u.rx)] = c
		u.rxLen++
		n++
	}
	return n
}

func (u *UART) pop() byte {
	if u.rxLen == 0 {
		return 0
	}
	c := u.rx[u.rxHead]
	u.rxHead = (u.rxHead + 1) % len(u.rx)
	u.rxLen--
	return c
}

func (u *UART) clearRx() {
	u.rxHead, u.rxLen = 0, 0
}

// iir computes the interrupt identification, highest priority first.
func (u *UART) iir() byte {
	var id byte = IIRNoInt
	switch {
	case u.ier&IERLineStatus != 0 && u.lsrErr != 0:
		id = IIRLineStatus
	case u.ier&IERRxData != 0 && u.rxLen > 0:
		id = IIRRxData
	case u.ier&IERTHRE != 0 && u.thrPending:
		id = IIRTHRE
	case u.ier&IERModem != 0 && u.msr&0x0F != 0:
		id = IIRModemStatus
	}
	if u.fcr&FCREnable != 0 {
		id |= IIRFIFOEnabled
	}
	return id
}

// update drives the interrupt line from the current state.
func (u *UART) update() {
	high := u.iir()&IIRNoInt == 0
	if high != u.level {
		u.level = high
		if u.irq != nil {
			u.irq.SetLevel(high)
		}
	}
}

// loopMSR returns the modem status lines as MCR drives them in loopback.
func loopMSR(mcr byte) byte {
	var s byte
	if mcr&MCRDTR != 0 {
		s |= MSRDSR
	}
	if mcr&MCRRTS != 0 {
		s |= MSRCTS
	}
	if mcr&MCROUT1 != 0 {
		s |= MSRRI
	}
	if mcr&MCROUT2 != 0 {
		s |= MSRDCD
	}
	return s
}

// setMSRLines changes the status lines (bits 4-7) and latches the deltas.
func (u *UART) setMSRLines(lines byte) {
	old := u.msr & 0xF0
	changed := old ^ lines
	delta := u.msr & 0x0F
	if changed&MSRCTS != 0 {
		delta |= MSRDeltaCTS
	}
	if changed&MSRDSR != 0 {
		delta |= MSRDeltaDSR
	}
	if old&MSRRI != 0 && lines&MSRRI == 0 { // trailing edge of RI
		delta |= MSRTERI
	}
	if changed&MSRDCD != 0 {
		delta |= MSRDeltaDCD
	}
	u.msr = lines | delta
}

// Read implements bus.Device. Only single-byte accesses inside the window
// are decoded; anything else reads as 0xFF.
func (u *UART) Read(offset uint64, data []byte) {
	if len(data) != 1 || offset >= NumRegs {
		for i := range data {
			data[i] = 0xFF
		}
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	data[0] = u.readReg(offset)
	u.update()
}

func (u *UART) readReg(offset uint64) byte {
	dlab := u.lcr&LCRDLAB != 0
	switch offset {
	case RegRBR:
		if dlab {
			return u.dll
		}
		return u.pop()
	case RegIER:
		if dlab {
			return u.dlm
		}
		return u.ier
	case RegIIR:
		id := u.iir()
		if id&0x0F == IIRTHRE {
			u.thrPending = false // reading IIR acknowledges THRE
		}
		return id
	case RegLCR:
		return u.lcr
	case RegMCR:
		return u.mcr
	case RegLSR:
		v := byte(LSRTHRE|LSRTEMT) | u.lsrErr
		if u.rxLen > 0 {
			v |= LSRDataReady
		}
		u.lsrErr = 0
		return v
	case RegMSR:
		v := u.msr
		u.msr &= 0xF0
		return v
	default: // RegSCR
		return u.scr
	}
}

// Write implements bus.Device. Only single-byte accesses inside the window
// are decoded; anything else is ignored.
func (u *UART) Write(offset uint64, data []byte) {
	if len(data) != 1 || offset >= NumRegs {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.writeReg(offset, data[0])
	u.update()
}

func (u *UART) writeReg(offset uint64, v byte) {
	dlab := u.lcr&LCRDLAB != 0
	switch offset {
	case RegTHR:
		if dlab {
			u.dll = v
			return
		}
		if u.mcr&MCRLoop != 0 {
			// A looped-back byte that finds the FIFO full is an
			// overrun the guest sees, not lost terminal input
			// (Dropped).
			if u.rxLen == len(u.rx) {
				u.lsrErr |= LSROverrun
			} else {
				u.push([]byte{v})
			}
		} else if _, err := u.out.Write([]byte{v}); err != nil {
			u.outErrs++
		}
		// The byte left THR at once: THR is empty again.
		u.thrPending = true
	case RegIER:
		if dlab {
			u.dlm = v
			return
		}
		old := u.ier
		u.ier = v & 0x0F
		// Turning THRE on while THR is empty raises the interrupt, even
		// if reading IIR had acknowledged it before (the Linux 8250
		// driver's THRE test relies on this); turning it off drops it.
		if (old^u.ier)&IERTHRE != 0 {
			u.thrPending = u.ier&IERTHRE != 0
		}
	case RegFCR:
		if v&FCRClearRx != 0 {
			u.clearRx()
		}
		u.fcr = v &^ (FCRClearRx | FCRClearTx)
	case RegLCR:
		u.lcr = v
	case RegMCR:
		old := u.mcr
		u.mcr = v & 0x1F
		switch {
		case u.mcr&MCRLoop != 0:
			u.setMSRLines(loopMSR(u.mcr))
		case old&MCRLoop != 0:
			u.setMSRLines(msrIdle)
		}
	case RegLSR, RegMSR:
		// Read-only on a 16550A; factory test writes are ignored.
	default: // RegSCR
		u.scr = v
	}
}
