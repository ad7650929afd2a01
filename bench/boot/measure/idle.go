package measure

import (
	"context"
	"errors"
	"fmt"
	"time"

	"rainforest/bench/boot/wakeups"
)

// idleWatch counts a VMM's idle wake-ups in a goroutine that start
// begins and result waits for (its owner is Measure).
type idleWatch struct {
	ctx    context.Context
	cancel context.CancelFunc
	pid    int
	spec   IdleSpec
	done   chan struct{}
	// window and err are set by the goroutine before done is closed.
	window wakeups.Window
	err    error
}

// newIdleWatch returns nil when spec asks for no idle window.
func newIdleWatch(ctx context.Context, pid int, spec IdleSpec) *idleWatch {
	if spec.Window <= 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	return &idleWatch{ctx: ctx, cancel: cancel, pid: pid, spec: spec, done: make(chan struct{})}
}

// start begins the count: after spec.Delay, over spec.Window.
func (w *idleWatch) start() {
	go func() {
		defer close(w.done)
		t := time.NewTimer(w.spec.Delay)
		defer t.Stop()
		select {
		case <-w.ctx.Done():
			w.err = w.ctx.Err()
			return
		case <-t.C:
		}
		w.window, w.err = wakeups.Watch(w.ctx, "/proc", w.pid, w.spec.Window, w.spec.Every)
	}()
}

// result ends the count (the VMM has exited) and returns it; started
// tells whether start was called.
func (w *idleWatch) result(started bool) (*wakeups.Window, error) {
	w.cancel()
	if !started {
		return nil, fmt.Errorf("idle marker %q not seen", w.spec.After)
	}
	<-w.done
	switch {
	case w.err == nil:
		return &w.window, nil
	case errors.Is(w.err, context.Canceled) || errors.Is(w.err, wakeups.ErrExited):
		return nil, fmt.Errorf("the VMM exited before the idle window (%v after %q, %v long) ended", w.spec.Delay, w.spec.After, w.spec.Window)
	}
	return nil, fmt.Errorf("idle wake-ups: %w", w.err)
}
