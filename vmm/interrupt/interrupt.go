// Package interrupt is the VMM's interrupt layer, used by every device:
//
//   - MSIXGroup: a function's MSI-X vectors. Each vector has an eventfd and
//     a GSI from the start (so that other VMs' doorbells can be wired to it
//     before the guest programs anything); the eventfd is an irqfd for the
//     vector's message while the guest has the vector unmasked, and is
//     detached otherwise, so signals wait in its counter and KVM injects
//     them when it is attached again. Closing the group frees the routes,
//     the GSIs and the eventfds.
//   - Line: one input of the in-kernel IOAPIC (a PCI INTx pin, the SCI, a
//     legacy ISA line). Device models drive it with SetLevel (the level is
//     the wired OR of every model on it); eventfds can drive it too, as
//     level-triggered irqfds with resampling (KVM asserts the line when the
//     eventfd is signalled and lowers it at the guest's EOI), so that a
//     signal from another VM raises this guest's INTx with no VMM thread on
//     the path.
//
// The layer talks to KVM only through Chip (the VM layer implements it),
// so it can be tested on a fake.
package interrupt

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/pci"
)

// ErrClosed is returned by a closed group.
var ErrClosed = errors.New("interrupt: closed")

// Chip is what the interrupt layer needs of the VM: GSIs, MSI routes,
// irqfds and the irqchip's input lines.
type Chip interface {
	AllocGSI() (uint32, error)
	FreeGSI(gsi uint32) error
	SetMSIRoute(gsi uint32, addr uint64, data uint32) error
	AttachIRQFD(fd int, gsi uint32) error
	AttachResampleIRQFD(fd, resampleFD int, gsi uint32) error
	DetachIRQFD(fd int, gsi uint32) error
	SetLevel(gsi uint32, high bool) error
	Asserted(gsi uint32) (bool, error)
}

// where a vector's eventfd is attached.
type attachment int

const (
	detached attachment = iota
	asMSI
	asINTx
)

type vector struct {
	ev       *eventfd.EventFD
	gsi      uint32
	msg      pci.MSIMessage
	unmasked bool
	at       attachment
	line     *Line // the line it drives while at == asINTx
}

// MSIXGroup is one PCI function's MSI-X vectors; it implements
// pci.MSIRouter. It is safe for concurrent use.
type MSIXGroup struct {
	chip    Chip
	mu      sync.Mutex
	closed  bool
	vectors []*vector
	intx    *Line // unrouted vectors drive it while set
}

var _ pci.MSIRouter = (*MSIXGroup)(nil)

// NewMSIXGroup makes n vectors, each with a GSI and an eventfd: its own, or
// a duplicate of incoming[v] when incoming is given (one per vector, e.g.
// made by a supervisor before this VM existed). Nothing is attached until
// the guest unmasks a vector. On error nothing is left allocated.
func NewMSIXGroup(chip Chip, n int, incoming []*eventfd.EventFD) (*MSIXGroup, error) {
	if n < 1 || n > pci.MSIXMaxVectors {
		return nil, fmt.Errorf("interrupt: %d MSI-X vectors", n)
	}
	if len(incoming) != 0 && len(incoming) != n {
		return nil, fmt.Errorf("interrupt: %d incoming eventfds for %d vectors", len(incoming), n)
	}
	g := &MSIXGroup{chip: chip}
	for i := range n {
		var ev *eventfd.EventFD
		var err error
		if len(incoming) != 0 {
			ev, err = incoming[i].Dup()
		} else {
			ev, err = eventfd.New()
		}
		if err != nil {
			g.Close()
			return nil, err
		}
		gsi, err := chip.AllocGSI()
		if err != nil {
			ev.Close()
			g.Close()
			return nil, err
		}
		g.vectors = append(g.vectors, &vector{ev: ev, gsi: gsi})
	}
	return g, nil
}

// Len returns the number of vectors.
func (g *MSIXGroup) Len() int { return len(g.vectors) }

// EventFD returns vector v's eventfd (nil if out of range): signalling it
// raises the vector, whichever way the guest takes it.
func (g *MSIXGroup) EventFD(v int) *eventfd.EventFD {
	if v < 0 || v >= len(g.vectors) {
		return nil
	}
	return g.vectors[v].ev
}

// GSI returns vector v's GSI.
func (g *MSIXGroup) GSI(v int) uint32 { return g.vectors[v].gsi }

// Route implements pci.MSIRouter: an unmasked vector's eventfd becomes an
// irqfd for msg; a masked one is detached (or handed to the INTx line).
func (g *MSIXGroup) Route(v int, msg pci.MSIMessage, masked bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if v < 0 || v >= len(g.vectors) {
		return fmt.Errorf("%w: %d", pci.ErrBadVector, v)
	}
	vec := g.vectors[v]
	if !masked {
		if err := g.chip.SetMSIRoute(vec.gsi, msg.Addr, msg.Data); err != nil {
			return err
		}
		vec.msg = msg
	}
	vec.unmasked = !masked
	return g.applyLocked(vec)
}

// Fire implements pci.MSIRouter: it signals vector v's eventfd.
func (g *MSIXGroup) Fire(v int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if v < 0 || v >= len(g.vectors) {
		return fmt.Errorf("%w: %d", pci.ErrBadVector, v)
	}
	return g.vectors[v].ev.Signal()
}

// SetINTx makes the vectors the guest has not unmasked drive line (nil:
// none) through resampling irqfds: while set, a signal on any of them
// asserts line until the guest's EOI. A device sets it while the guest
// takes its interrupts through INTx (MSI-X disabled, INTx not disabled).
func (g *MSIXGroup) SetINTx(line *Line) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.intx = line
	var errs []error
	for _, vec := range g.vectors {
		errs = append(errs, g.applyLocked(vec))
	}
	return errors.Join(errs...)
}

// Pending reports whether a signal waits in a detached vector's eventfd
// (one the guest will get once it takes interrupts again).
func (g *MSIXGroup) Pending() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, vec := range g.vectors {
		if vec.at == detached && vec.ev.Pending() {
			return true
		}
	}
	return false
}

// applyLocked attaches vec's eventfd where it belongs now.
func (g *MSIXGroup) applyLocked(vec *vector) error {
	want := detached
	switch {
	case vec.unmasked:
		want = asMSI
	case g.intx != nil:
		want = asINTx
	}
	if want == vec.at && (want != asINTx || vec.line == g.intx) {
		return nil
	}
	if err := g.detachLocked(vec); err != nil {
		return err
	}
	var err error
	switch want {
	case asMSI:
		err = g.chip.AttachIRQFD(vec.ev.Fd(), vec.gsi)
	case asINTx:
		err = g.intx.attach(vec.ev)
		vec.line = g.intx
	}
	if err != nil {
		return err
	}
	vec.at = want
	return nil
}

func (g *MSIXGroup) detachLocked(vec *vector) error {
	var err error
	switch vec.at {
	case asMSI:
		err = g.chip.DetachIRQFD(vec.ev.Fd(), vec.gsi)
	case asINTx:
		err = vec.line.detach(vec.ev)
	}
	if err == nil {
		vec.at, vec.line = detached, nil
	}
	return err
}

// Close detaches every vector, frees its GSI and route and closes its
// eventfd. Later calls to the group fail with ErrClosed.
func (g *MSIXGroup) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	var errs []error
	for _, vec := range g.vectors {
		errs = append(errs, g.detachLocked(vec), g.chip.FreeGSI(vec.gsi), vec.ev.Close())
	}
	g.vectors = nil
	return errors.Join(errs...)
}

// Lines are the in-kernel IOAPIC's inputs as devices drive them. It is safe
// for concurrent use.
type Lines struct {
	chip Chip
	log  *slog.Logger
	mu   sync.Mutex
	// levels counts, per GSI, the Lines whose model drives it high.
	levels map[uint32]int
	// kernel holds, per GSI, the resampling eventfd shared by its irqfds
	// and how many are attached.
	kernel map[uint32]*resampler
}

type resampler struct {
	ev    *eventfd.EventFD
	users int
}

// NewLines returns the lines of chip; log gets the errors SetLevel cannot
// return.
func NewLines(chip Chip, log *slog.Logger) *Lines {
	if log == nil {
		log = slog.Default()
	}
	return &Lines{chip: chip, log: log, levels: map[uint32]int{}, kernel: map[uint32]*resampler{}}
}

// Line returns a new handle on input gsi. Several handles on one GSI share
// it (the level is the OR of theirs): give each device its own.
func (l *Lines) Line(gsi uint32) *Line { return &Line{lines: l, gsi: gsi} }

// Line is one device's connection to an irqchip input. It implements
// pci.INTx.
type Line struct {
	lines *Lines
	gsi   uint32
	high  bool // guarded by lines.mu
}

var _ pci.INTx = (*Line)(nil)

// GSI returns the input's number.
func (x *Line) GSI() uint32 { return x.gsi }

// SetLevel drives the line from a device model: the input is asserted while
// any model on it drives it high (KVM_IRQ_LINE keeps the level in the
// kernel, so a level-triggered input is delivered again after EOI while
// still high).
func (x *Line) SetLevel(high bool) {
	l := x.lines
	l.mu.Lock()
	defer l.mu.Unlock()
	if x.high == high {
		return
	}
	x.high = high
	n := l.levels[x.gsi]
	if high {
		n++
	} else {
		n--
	}
	l.levels[x.gsi] = n
	if (high && n == 1) || (!high && n == 0) {
		if err := l.chip.SetLevel(x.gsi, high); err != nil {
			l.log.Warn("interrupt line", "gsi", x.gsi, "err", err)
		}
	}
}

// Asserted reports whether the input is asserted now, by any source.
func (x *Line) Asserted() bool {
	on, err := x.lines.chip.Asserted(x.gsi)
	if err != nil {
		x.lines.log.Warn("interrupt line state", "gsi", x.gsi, "err", err)
	}
	return on
}

// attach makes ev a level-triggered source of the input.
func (x *Line) attach(ev *eventfd.EventFD) error {
	l := x.lines
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.kernel[x.gsi]
	if r == nil {
		rev, err := eventfd.New()
		if err != nil {
			return err
		}
		r = &resampler{ev: rev}
	}
	if err := l.chip.AttachResampleIRQFD(ev.Fd(), r.ev.Fd(), x.gsi); err != nil {
		if r.users == 0 {
			r.ev.Close()
		}
		return err
	}
	r.users++
	l.kernel[x.gsi] = r
	return nil
}

// detach undoes attach; the input is lowered when ev was its last
// eventfd source.
func (x *Line) detach(ev *eventfd.EventFD) error {
	l := x.lines
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.kernel[x.gsi]
	if r == nil {
		return fmt.Errorf("interrupt: GSI %d has no eventfd sources", x.gsi)
	}
	if err := l.chip.DetachIRQFD(ev.Fd(), x.gsi); err != nil {
		return err
	}
	r.users--
	if r.users == 0 {
		delete(l.kernel, x.gsi)
		return r.ev.Close()
	}
	return nil
}
