// Package fdwait reads a non-blocking file descriptor once it is readable,
// blocking in poll(2) with no timeout: the end of the caller's context and
// Close wake the poll through eventfds of their own (context.AfterFunc
// signals one, Close the other), so a waiter that nothing wakes makes no
// system call at all while it waits, however long.
package fdwait

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Read once Close was called.
var ErrClosed = errors.New("fdwait: closed")

// Waiter reads file descriptors for one goroutine at a time (a second
// Read waits for the first to return). Close may be called from any
// goroutine, also while Read blocks.
type Waiter struct {
	busy     sync.Mutex // held by Read; Close takes it before closing the eventfds
	closing  atomic.Bool
	closeFD  int           // eventfd signalled once by Close, never drained
	cancelFD int           // eventfd signalled when Read's context ends, drained by Read
	fired    chan struct{} // the context.AfterFunc's signal went out
	polls    atomic.Uint64
}

// New returns a Waiter with its two eventfds.
func New() (*Waiter, error) {
	closeFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("fdwait: eventfd: %w", err)
	}
	cancelFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(closeFD)
		return nil, fmt.Errorf("fdwait: eventfd: %w", err)
	}
	return &Waiter{closeFD: closeFD, cancelFD: cancelFD, fired: make(chan struct{}, 1)}, nil
}

// signal adds 1 to an eventfd. A full counter (EAGAIN) is already
// readable, which is all a signal is for.
func signal(fd int) {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for {
		if _, err := unix.Write(fd, one[:]); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// cancelled is the context.AfterFunc of a Read: it wakes the poll.
func (w *Waiter) cancelled() {
	signal(w.cancelFD)
	w.fired <- struct{}{}
}

// drainCancel takes back a cancellation signal, so that the next Read does
// not see it.
func (w *Waiter) drainCancel() {
	var buf [8]byte
	for {
		if _, err := unix.Read(w.cancelFD, buf[:]); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// Read blocks until fd, a non-blocking descriptor, is readable (or reports
// an error or a hang-up), then reads it once into buf and returns the
// count. A read that finds nothing after all (EAGAIN: someone else took
// it) goes back to waiting. It returns ctx's error when ctx ends first and
// ErrClosed after Close. Each wait is one poll(2) call without a timeout:
// nothing but fd, ctx or Close wakes it.
func (w *Waiter) Read(ctx context.Context, fd int, buf []byte) (int, error) {
	w.busy.Lock()
	defer w.busy.Unlock()
	if w.closing.Load() {
		return 0, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	fds := []unix.PollFd{
		{Fd: int32(fd), Events: unix.POLLIN},
		{Fd: int32(w.closeFD), Events: unix.POLLIN},
	}
	if ctx.Done() != nil {
		fds = append(fds, unix.PollFd{Fd: int32(w.cancelFD), Events: unix.POLLIN})
		stop := context.AfterFunc(ctx, w.cancelled)
		defer func() {
			if !stop() {
				// The AfterFunc has started: let its signal land, then
				// take it back.
				<-w.fired
				w.drainCancel()
			}
		}()
	}
	for {
		for i := range fds {
			fds[i].Revents = 0
		}
		w.polls.Add(1) // counted while it waits (tests watch for it)
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			w.polls.Add(^uint64(0)) // a signal (the Go runtime's own): not a wake-up of ours
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("poll: %w", err)
		}
		if fds[1].Revents != 0 {
			return 0, ErrClosed
		}
		if re := fds[0].Revents; re&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return 0, fmt.Errorf("poll: revents %#x", re)
		} else if re != 0 {
			n, err := unix.Read(fd, buf)
			switch {
			case err == nil:
				return n, nil
			case !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR):
				return 0, fmt.Errorf("read: %w", err)
			}
		}
		if len(fds) > 2 && fds[2].Revents != 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			w.drainCancel() // not ours: cannot happen, but must not spin
		}
	}
}

// Polls returns how many poll(2) calls Read has made: one per wait, plus
// one per spurious wake-up (a read that found nothing); calls a signal
// interrupted are not counted. Tests use it to check that an idle waiter does not wake.
func (w *Waiter) Polls() uint64 { return w.polls.Load() }

// Close wakes a blocked Read, which returns ErrClosed, waits for it to
// return and releases the eventfds. Later Reads return ErrClosed; so does
// a second Close.
func (w *Waiter) Close() error {
	if !w.closing.CompareAndSwap(false, true) {
		return ErrClosed
	}
	signal(w.closeFD)
	w.busy.Lock()
	defer w.busy.Unlock()
	return errors.Join(unix.Close(w.closeFD), unix.Close(w.cancelFD))
}
