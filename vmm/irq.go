package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/kvm"
)

func afterMillis(n int) <-chan time.Time { return time.After(time.Duration(n) * time.Millisecond) }

// EventFD is a Linux eventfd, the doorbell between KVM and the VMM.
type EventFD struct{ fd int }

// NewEventFD creates a non-blocking eventfd.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// BorrowEventFD wraps an eventfd descriptor the caller keeps owning (for
// APIs that duplicate what they keep, such as SharedMemoryConfig.Incoming
// and ConnectPeer); do not Close the result.
func BorrowEventFD(fd int) *EventFD { return &EventFD{fd: fd} }

// Fd returns the descriptor.
func (e *EventFD) Fd() int { return e.fd }

// Dup returns a second EventFD for the same counter, closed independently.
func (e *EventFD) Dup() (*EventFD, error) {
	fd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// Signal adds 1 to the counter.
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	_, err := unix.Write(e.fd, b[:])
	if errors.Is(err, unix.EAGAIN) {
		return nil // counter saturated: the reader will see it anyway
	}
	return err
}

// Drain reads and resets the counter; it returns 0 when nothing was pending.
func (e *EventFD) Drain() uint64 {
	var b [8]byte
	n, err := unix.Read(e.fd, b[:])
	if err != nil || n != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

// Close closes the eventfd.
func (e *EventFD) Close() error { return unix.Close(e.fd) }

// MSIVector is one MSI message source wired to the guest through an irqfd:
// signalling its eventfd injects the message without a VMM exit or ioctl.
type MSIVector struct {
	GSI uint32
	ev  *EventFD
}

// Fire injects the vector's current message.
func (v *MSIVector) Fire() error { return v.ev.Signal() }

// EventFD returns the eventfd behind the vector (to hand to another VM's
// ioeventfd for doorbells that never reach userspace).
func (v *MSIVector) EventFD() *EventFD { return v.ev }

// NewMSIVector allocates a GSI, routes it to msg and binds an irqfd to it.
func (m *Machine) NewMSIVector(addr uint64, data uint32) (*MSIVector, error) {
	ev, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	m.routeMu.Lock()
	gsi := m.nextGSI
	if gsi >= maxGSI {
		m.routeMu.Unlock()
		ev.Close()
		return nil, fmt.Errorf("out of GSIs for MSI vectors")
	}
	m.nextGSI++
	m.routes[gsi] = kvm.Route{GSI: gsi, Kind: kvm.RouteMSI, Addr: addr, Data: data}
	err = m.applyRoutesLocked()
	m.routeMu.Unlock()
	if err == nil {
		err = m.vm.IRQFD(ev.Fd(), gsi)
	}
	if err != nil {
		ev.Close()
		return nil, err
	}
	v := &MSIVector{GSI: gsi, ev: ev}
	m.AddCloser(func() error { return errors.Join(m.vm.RemoveIRQFD(ev.Fd(), gsi), ev.Close()) })
	return v, nil
}

// RouteMSI changes the message a vector delivers.
func (m *Machine) RouteMSI(v *MSIVector, addr uint64, data uint32) error {
	m.routeMu.Lock()
	defer m.routeMu.Unlock()
	r := kvm.Route{GSI: v.GSI, Kind: kvm.RouteMSI, Addr: addr, Data: data}
	if m.routes[v.GSI] == r {
		return nil
	}
	m.routes[v.GSI] = r
	return m.applyRoutesLocked()
}

func (m *Machine) applyRoutesLocked() error {
	rs := kvm.DefaultRoutes()
	gsis := make([]uint32, 0, len(m.routes))
	for g := range m.routes {
		gsis = append(gsis, g)
	}
	sort.Slice(gsis, func(i, j int) bool { return gsis[i] < gsis[j] })
	for _, g := range gsis {
		rs = append(rs, m.routes[g])
	}
	return m.vm.SetGSIRouting(rs)
}

// IRQLine drives a legacy interrupt line (ISA IRQ / GSI) of the in-kernel
// irqchip; it implements the serial port's interrupt line.
type IRQLine struct {
	m   *Machine
	gsi uint32
}

// IRQLine returns the line for gsi.
func (m *Machine) IRQLine(gsi uint32) *IRQLine { return &IRQLine{m: m, gsi: gsi} }

// SetLevel raises or lowers the line.
func (l *IRQLine) SetLevel(high bool) {
	if err := l.m.vm.IRQLine(l.gsi, high); err != nil {
		l.m.log.Warn("irq line", "gsi", l.gsi, "err", err)
	}
}

// Doorbell is a guest write address wired to an eventfd by KVM (ioeventfd):
// the write completes in the kernel without a VMM exit.
type Doorbell struct {
	Addr uint64
	PIO  bool
	n    uint32
	ev   *EventFD
}

// EventFD returns the doorbell's eventfd.
func (d *Doorbell) EventFD() *EventFD { return d.ev }

// NewDoorbell registers an ioeventfd for writes of n bytes at addr. When ev is
// nil a new eventfd is created; passing another VM's irqfd eventfd connects
// the write straight to an interrupt in that VM.
func (m *Machine) NewDoorbell(addr uint64, n uint32, pio bool, ev *EventFD) (*Doorbell, error) {
	own := ev == nil
	if own {
		var err error
		if ev, err = NewEventFD(); err != nil {
			return nil, err
		}
	}
	if err := m.vm.IOEventFD(ev.Fd(), addr, n, pio); err != nil {
		if own {
			ev.Close()
		}
		return nil, err
	}
	d := &Doorbell{Addr: addr, PIO: pio, n: n, ev: ev}
	m.AddCloser(func() error {
		err := m.vm.RemoveIOEventFD(ev.Fd(), d.Addr, n, pio)
		if own {
			err = errors.Join(err, ev.Close())
		}
		return err
	})
	return d, nil
}

// WaitEvents blocks until one of evs is signalled, ctx ends, or stop fires,
// and returns the indexes of the signalled ones (drained).
func WaitEvents(ctx context.Context, stop *EventFD, evs []*EventFD) ([]int, error) {
	fds := make([]unix.PollFd, 0, len(evs)+1)
	for _, e := range evs {
		fds = append(fds, unix.PollFd{Fd: int32(e.Fd()), Events: unix.POLLIN})
	}
	fds = append(fds, unix.PollFd{Fd: int32(stop.Fd()), Events: unix.POLLIN})
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := unix.Poll(fds, 100)
		if errors.Is(err, unix.EINTR) || n == 0 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("poll eventfds: %w", err)
		}
		if fds[len(fds)-1].Revents != 0 {
			return nil, context.Canceled
		}
		var ready []int
		for i := range evs {
			if fds[i].Revents != 0 && evs[i].Drain() > 0 {
				ready = append(ready, i)
			}
		}
		if len(ready) > 0 {
			return ready, nil
		}
	}
}

// Move re-registers the doorbell's ioeventfd at a new address (after the
// guest moved the BAR holding it).
func (d *Doorbell) Move(m *Machine, addr uint64) error {
	if addr == d.Addr {
		return nil
	}
	if err := m.vm.RemoveIOEventFD(d.ev.Fd(), d.Addr, d.n, d.PIO); err != nil {
		return err
	}
	if err := m.vm.IOEventFD(d.ev.Fd(), addr, d.n, d.PIO); err != nil {
		return err
	}
	d.Addr = addr
	return nil
}

// NewDoorbellMatch registers an ioeventfd for writes of exactly value (n
// bytes) at addr, signalling ev: a doorbell register shared by several
// targets, each value its own eventfd (typically another VM's irqfd).
func (m *Machine) NewDoorbellMatch(addr uint64, n uint32, value uint64, ev *EventFD) error {
	// Keep our own reference: the eventfd usually belongs to another VM,
	// which may be closed first.
	fd, err := unix.FcntlInt(uintptr(ev.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("dup doorbell eventfd: %w", err)
	}
	if err := m.vm.IOEventFDMatch(fd, addr, n, false, value); err != nil {
		unix.Close(fd)
		return err
	}
	m.AddCloser(func() error {
		return errors.Join(m.vm.RemoveIOEventFDMatch(fd, addr, n, false, value), unix.Close(fd))
	})
	return nil
}
