package device

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"rainforest/internal/fdwait"
	"rainforest/vmm/shmem/abi"
)

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
// uio_pci_generic set, so that the next interrupt can be delivered. It
// sleeps without a timeout (see UIO.Wait); Close wakes it with ErrClosed.
func (d *Device) WaitStatus(ctx context.Context) (uint32, error) {
	d.waitMu.Lock()
	defer d.waitMu.Unlock()
	if d.closed.Load() {
		return 0, ErrClosed
	}
	if d.uioDev == nil {
		return 0, ErrNoInterrupts
	}
	if err := d.uioDev.Wait(ctx); err != nil {
		return 0, err
	}
	status := load32(d.regs, abi.RegIntStatus)
	if err := UnmaskINTx(d.config); err != nil {
		return status, err
	}
	return status, nil
}

// UIO is an open uio device (/dev/uioN) of a function that
// uio_pci_generic drives: it becomes readable, with the count of
// interrupts so far, when the function interrupts. Wait is for one
// goroutine at a time; Close may run while it blocks.
type UIO struct {
	name string
	fd   int // non-blocking
	w    *fdwait.Waiter
}

// OpenUIO opens <devRoot>/<name> ("uio0") for Wait.
func OpenUIO(devRoot, name string) (*UIO, error) {
	path := filepath.Join(devRoot, name)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrDriver, path, err)
	}
	w, err := fdwait.New()
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &UIO{name: name, fd: fd, w: w}, nil
}

// Name returns the uio device's name ("uio0").
func (u *UIO) Name() string { return u.name }

// Wait blocks until the device counts an interrupt and consumes the count,
// or until ctx is done (ctx's error) or u is closed (ErrClosed). It sleeps
// in one poll(2) call without a timeout: nothing but an interrupt, ctx or
// Close wakes it. The caller acknowledges the interrupt in the device and
// re-enables INTx (see UnmaskINTx).
func (u *UIO) Wait(ctx context.Context) error {
	var count [4]byte
	n, err := u.w.Read(ctx, u.fd, count[:])
	switch {
	case errors.Is(err, fdwait.ErrClosed):
		return ErrClosed
	case err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return err
	case err != nil:
		return fmt.Errorf("wait on %s: %w", u.name, err)
	case n != len(count):
		return fmt.Errorf("read %s: %d bytes, want %d", u.name, n, len(count))
	}
	return nil
}

// Close wakes a blocked Wait, which returns ErrClosed, and closes the
// device once it has returned. A second Close does nothing.
func (u *UIO) Close() error {
	if err := u.w.Close(); err != nil {
		if errors.Is(err, fdwait.ErrClosed) {
			return nil
		}
		return errors.Join(err, unix.Close(u.fd))
	}
	return unix.Close(u.fd)
}
