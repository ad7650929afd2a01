package pci

import (
	"errors"
	"fmt"
	"sync"
)

// Interrupt Pin register values.
const (
	PinNone = 0
	PinA    = 1 // INTA#
	PinB    = 2
	PinC    = 3
	PinD    = 4
)

// StatusInterrupt is the Status register's Interrupt Status bit: set while
// the function's INTx condition is pending (whatever the INTx-disable bit).
const StatusInterrupt = 1 << 3

// ErrBadPin reports an Interrupt Pin value outside PinNone..PinD.
var ErrBadPin = errors.New("pci: invalid interrupt pin")

// INTx is a legacy PCI interrupt line (INTA#..INTD#) as the VMM wires it to
// the interrupt controller. SetLevel(true) asserts the line, SetLevel(false)
// deasserts it; the line is level-triggered, so it stays asserted until the
// device lowers it. Implementations must tolerate repeated calls with the
// same level.
type INTx interface {
	SetLevel(high bool)
}

// INTxDevice is a Device with a legacy interrupt pin. Bus.Add connects it to
// the line its INTxRouter names for the slot and the function's Interrupt
// Pin register, and writes the router's IRQ number into the Interrupt Line
// register, as firmware would.
type INTxDevice interface {
	Device
	ConnectINTx(line INTx)
}

// INTxRouter returns the line that pin (PinA..PinD) of slot is wired to and
// the IRQ number firmware writes into the function's Interrupt Line
// register. It runs with config accesses serialized and must not call back
// into the Bus.
type INTxRouter func(slot, pin int) (INTx, uint8, error)

// SetInterruptPin sets the read-only Interrupt Pin register (PinNone..PinD).
func (c *ConfigSpace) SetInterruptPin(pin int) error {
	if pin < PinNone || pin > PinD {
		return fmt.Errorf("%w: %d", ErrBadPin, pin)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data[RegInterruptPin] = byte(pin)
	return nil
}

// InterruptPin returns the Interrupt Pin register.
func (c *ConfigSpace) InterruptPin() int {
	var b [1]byte
	c.Read(RegInterruptPin, b[:])
	return int(b[0])
}

// InterruptLine returns the Interrupt Line register.
func (c *ConfigSpace) InterruptLine() uint8 {
	var b [1]byte
	c.Read(RegInterruptLine, b[:])
	return b[0]
}

// INTxDisabled reports the Command register's INTx-disable bit.
func (c *ConfigSpace) INTxDisabled() bool { return c.Command()&CommandINTxDisable != 0 }

// SetInterruptStatus sets or clears the Status register's Interrupt
// Status bit, for a function that computes its INTx condition itself
// rather than through an INTxSource.
func (c *ConfigSpace) SetInterruptStatus(on bool) { c.setStatusBits(StatusInterrupt, on) }

// setStatusBits sets (on) or clears bits of the Status register, which the
// guest cannot write.
func (c *ConfigSpace) setStatusBits(bits uint16, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := uint16(c.data[RegStatus]) | uint16(c.data[RegStatus+1])<<8
	if on {
		st |= bits
	} else {
		st &^= bits
	}
	c.data[RegStatus], c.data[RegStatus+1] = byte(st), byte(st>>8)
}

// INTxSource is a function's INTA# output. The device model says whether
// its interrupt condition is pending (SetPending); INTxSource asserts the
// line the VMM connected while the condition is pending, MSI-X (when the
// function has it) is disabled and the Command register's INTx-disable bit
// is clear, and keeps the Status register's Interrupt Status bit equal to
// "pending and MSI-X disabled". The device calls Update after every
// config-space write (the INTx-disable and MSI-X enable bits live there).
// It is safe for concurrent use; the line's SetLevel is called with the
// source locked and must not call back into the device.
type INTxSource struct {
	mu       sync.Mutex
	cfg      *ConfigSpace
	msix     *MSIX // nil: the function has no MSI-X
	line     INTx  // nil until connected
	pending  bool
	asserted bool
}

// NewINTxSource sets cfg's Interrupt Pin register to INTA# and returns the
// source driving it. msix is the function's MSI-X capability, or nil.
func NewINTxSource(cfg *ConfigSpace, msix *MSIX) *INTxSource {
	_ = cfg.SetInterruptPin(PinA) // PinA is always valid
	return &INTxSource{cfg: cfg, msix: msix}
}

// Connect wires the source to line (the VMM's side of INTA#) and drives it
// to the current level. A nil line disconnects.
func (s *INTxSource) Connect(line INTx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.line != nil && s.asserted {
		s.line.SetLevel(false)
	}
	s.line = line
	s.asserted = false
	s.updateLocked()
}

// SetPending sets the device's interrupt condition and updates the line.
func (s *INTxSource) SetPending(pending bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = pending
	s.updateLocked()
}

// Update re-evaluates the line after a config-space write.
func (s *INTxSource) Update() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updateLocked()
}

// Pending reports the device's interrupt condition.
func (s *INTxSource) Pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending
}

// Asserted reports whether the line is driven high.
func (s *INTxSource) Asserted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asserted
}

// Active reports whether the function signals interrupts through INTx
// rather than MSI-X (MSI-X absent or disabled), whatever the INTx-disable
// bit says.
func (s *INTxSource) Active() bool {
	return s.msix == nil || !s.msix.Enabled()
}

func (s *INTxSource) updateLocked() {
	cond := s.pending && s.Active()
	s.cfg.setStatusBits(StatusInterrupt, cond)
	want := cond && !s.cfg.INTxDisabled()
	if s.line == nil {
		s.asserted = false
		return
	}
	if want != s.asserted {
		s.asserted = want
		s.line.SetLevel(want)
	}
}
