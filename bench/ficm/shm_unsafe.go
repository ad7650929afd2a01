package main

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations on a word in a MAP_SHARED mapping (not private: the
// waiter and the waker are different processes).
const (
	futexWaitOp = 0 // FUTEX_WAIT
	futexWakeOp = 1 // FUTEX_WAKE
)

// u32At returns the 4-byte aligned word at b[off:] for atomic access.
func u32At(b []byte, off int) (*atomic.Uint32, error) {
	if off < 0 || off%4 != 0 || off+4 > len(b) {
		return nil, fmt.Errorf("word at %d outside %d-byte mapping", off, len(b))
	}
	return (*atomic.Uint32)(unsafe.Pointer(&b[off])), nil
}

// futexWait sleeps while *w == val, until woken, interrupted or timeout.
func futexWait(w *atomic.Uint32, val uint32, timeout time.Duration) error {
	ts := unix.NsecToTimespec(timeout.Nanoseconds())
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWaitOp, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
	if e != 0 && e != unix.EAGAIN && e != unix.EINTR && e != unix.ETIMEDOUT {
		return fmt.Errorf("futex wait: %w", e)
	}
	return nil
}

// futexWake wakes one waiter on w.
func futexWake(w *atomic.Uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWakeOp, 1, 0, 0, 0)
	if e != 0 {
		return fmt.Errorf("futex wake: %w", e)
	}
	return nil
}
