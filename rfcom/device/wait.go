package device

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/shmem/abi"
)

// pollSlice is how long one poll(2) on the uio device lasts before ctx is
// checked again.
const pollSlice = 20 * time.Millisecond

var (
	// ErrClosed is returned by Wait on a closed Device.
	ErrClosed = errors.New("device: closed")
	// ErrNoInterrupts is returned by Wait on a Device opened
	// WithoutInterrupts.
	ErrNoInterrupts = errors.New("device: opened without interrupts")
)

// Wait blocks until the device interrupts (spurious returns are possible)
// or ctx is done, in which case it returns ctx's error. It implements
// ficm/endpoint.Waiter.
func (d *Device) Wait(ctx context.Context) error {
	_, err := d.WaitStatus(ctx)
	return err
}

// WaitStatus is Wait returning the acknowledged INT_STATUS bits (bit v for
// vector v, bit 31 for vectors >= 31). After the interrupt it reads
// INT_STATUS, which lowers INTx, and clears the INTx-disable bit that
// uio_pci_generic set, so that the next interrupt can be delivered.
func (d *Device) WaitStatus(ctx context.Context) (uint32, error) {
	if d.closed.Load() {
		return 0, ErrClosed
	}
	if d.uioFD < 0 {
		return 0, ErrNoInterrupts
	}
	if err := WaitUIO(ctx, d.uioFD, d.uio); err != nil {
		return 0, err
	}
	status := load32(d.regs, abi.RegIntStatus)
	if err := UnmaskINTx(d.config); err != nil {
		return status, err
	}
	return status, nil
}

// WaitUIO blocks until the uio device open (non-blocking) as fd counts an
// interrupt, or ctx is done, in which case it returns ctx's error. It polls
// fd in slices of 20 ms and consumes the 4-byte interrupt count; name
// ("uio0") is used in errors. The caller acknowledges the interrupt in the
// device and re-enables INTx (see UnmaskINTx).
func WaitUIO(ctx context.Context, fd int, name string) error {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		slice := pollSlice
		if dl, ok := ctx.Deadline(); ok {
			slice = min(slice, max(time.Until(dl), time.Millisecond))
		}
		fds[0].Revents = 0
		n, err := unix.Poll(fds, int(slice.Milliseconds()))
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll %s: %w", name, err)
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("poll %s: revents %#x", name, fds[0].Revents)
		}
		var buf [4]byte
		m, err := unix.Read(fd, buf[:])
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		if m != len(buf) {
			return fmt.Errorf("read %s: %d bytes, want 4", name, m)
		}
		return nil
	}
}
