package fdwait

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newEventFD(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func newWaiter(t *testing.T) *Waiter {
	t.Helper()
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// read runs w.Read on fd in a goroutine.
func read(w *Waiter, ctx context.Context, fd int) <-chan error {
	errc := make(chan error, 1)
	go func() {
		var buf [8]byte
		_, err := w.Read(ctx, fd, buf[:])
		errc <- err
	}()
	return errc
}

// waitPolls waits until w has made n poll calls (the reader is blocked).
func waitPolls(t *testing.T, w *Waiter, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.Polls() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d polls, want %d", w.Polls(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func receive(t *testing.T, errc <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(within):
		t.Fatalf("Read did not return within %v", within)
		return nil
	}
}

func TestReadsWhenReadable(t *testing.T) {
	w, fd := newWaiter(t), newEventFD(t)
	signal(fd)
	signal(fd)
	var buf [8]byte
	n, err := w.Read(context.Background(), fd, buf[:])
	if err != nil || n != 8 || binary.NativeEndian.Uint64(buf[:]) != 2 {
		t.Fatalf("Read = %d %x, %v", n, buf, err)
	}
	// A signal while blocked wakes the reader.
	errc := read(w, context.Background(), fd)
	waitPolls(t, w, 2)
	signal(fd)
	if err := receive(t, errc, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// A blocked reader makes one poll call however long it waits, and the end
// of its context still wakes it at once.
func TestIdleReaderDoesNotWake(t *testing.T) {
	w, fd := newWaiter(t), newEventFD(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := read(w, ctx, fd)
	waitPolls(t, w, 1)
	time.Sleep(300 * time.Millisecond)
	if n := w.Polls(); n != 1 {
		t.Errorf("%d poll calls in 300 ms of waiting, want 1", n)
	}
	start := time.Now()
	cancel()
	if err := receive(t, errc, 2*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel = %v", err)
	}
	t.Logf("cancellation noticed in %v", time.Since(start))
	if n := w.Polls(); n != 1 {
		t.Errorf("%d poll calls, want 1", n)
	}
	// The cancellation signal was taken back: the next Read waits.
	dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer dcancel()
	start = time.Now()
	var buf [8]byte
	if _, err := w.Read(dctx, fd, buf[:]); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("Read after a cancelled one = %v after %v", err, time.Since(start))
	}
	if n := w.Polls(); n != 2 {
		t.Errorf("%d poll calls after the deadline, want 2", n)
	}
	// A context already done does not poll.
	if _, err := w.Read(ctx, fd, buf[:]); !errors.Is(err, context.Canceled) || w.Polls() != 2 {
		t.Fatalf("Read with a done context = %v (%d polls)", err, w.Polls())
	}
}

func TestCloseWakesReader(t *testing.T) {
	w, fd := newWaiter(t), newEventFD(t)
	errc := read(w, context.Background(), fd)
	waitPolls(t, w, 1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, errc, 2*time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	var buf [8]byte
	if _, err := w.Read(context.Background(), fd, buf[:]); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read on a closed Waiter = %v", err)
	}
	if err := w.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
}

// Cancellations racing with signals leave no stray wake-up behind.
func TestCancelRaces(t *testing.T) {
	w, fd := newWaiter(t), newEventFD(t)
	var buf [8]byte
	for i := range 300 {
		ctx, cancel := context.WithCancel(context.Background())
		if i%3 == 0 {
			signal(fd)
		}
		go cancel()
		_, err := w.Read(ctx, fd, buf[:])
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		cancel()
	}
	// Drain what is left, then a short Read must time out, not wake.
	_, _ = unix.Read(fd, buf[:])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := w.Read(ctx, fd, buf[:]); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read after the races = %v", err)
	}
}

func TestReadErrors(t *testing.T) {
	w := newWaiter(t)
	var buf [8]byte
	if _, err := w.Read(context.Background(), 1<<20, buf[:]); err == nil {
		t.Fatal("Read of a descriptor that is not open succeeded")
	}
}
