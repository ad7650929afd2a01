// Package eventfd wraps Linux eventfds, the doorbells between KVM and the
// VMM: KVM signals one when the guest writes a registered address
// (ioeventfd) and injects an interrupt when one is signalled (irqfd), and
// the VMM's own threads sleep on them. Wait blocks in poll(2) with no
// timeout, ended by a stop eventfd: an idle VMM makes no wake-ups of its
// own.
package eventfd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrStopped is returned by Wait when its stop eventfd was signalled.
var ErrStopped = errors.New("eventfd: wait stopped")

// EventFD is a non-blocking eventfd counter.
type EventFD struct{ fd int }

// New creates a non-blocking, close-on-exec eventfd.
func New() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// Borrow wraps an eventfd descriptor that the caller keeps owning (for
// APIs that duplicate what they keep); do not Close the result.
func Borrow(fd int) *EventFD { return &EventFD{fd: fd} }

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
	for {
		_, err := unix.Write(e.fd, b[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil // counter saturated: the reader sees it anyway
		case err != nil:
			return fmt.Errorf("signal eventfd: %w", err)
		}
		return nil
	}
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

// Pending reports whether the counter is non-zero, without consuming it.
func (e *EventFD) Pending() bool {
	fds := []unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
	}
}

// Close closes the eventfd.
func (e *EventFD) Close() error { return unix.Close(e.fd) }

// Wait blocks until one of evs or stop is signalled and returns the
// indexes of the signalled ones (drained), or ErrStopped once stop is
// signalled (stop is not drained: every waiter sees it). It sleeps in
// poll(2) without a timeout, so nothing wakes it periodically.
func Wait(stop *EventFD, evs []*EventFD) ([]int, error) {
	fds := make([]unix.PollFd, 0, len(evs)+1)
	for _, e := range evs {
		fds = append(fds, unix.PollFd{Fd: int32(e.Fd()), Events: unix.POLLIN})
	}
	fds = append(fds, unix.PollFd{Fd: int32(stop.Fd()), Events: unix.POLLIN})
	for {
		for i := range fds {
			fds[i].Revents = 0
		}
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("poll eventfds: %w", err)
		}
		if fds[len(evs)].Revents != 0 {
			return nil, ErrStopped
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
