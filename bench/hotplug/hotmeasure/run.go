package hotmeasure

import (
	"context"
	"fmt"
	"io"
	"rainforest/bench/internal/guestconsole"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultSettle    = time.Second
	DefaultOpTimeout = time.Minute
	DefaultBoot      = 3 * time.Minute
)

// HotID is the id of the hot-added disk (rfm attach --id, QEMU's device
// id) and HotNode the QEMU block node behind it.
const (
	HotID   = "hot"
	HotNode = "hotdisk"
)

// Markers are the lines the guest prints: Ready once it waits for
// /dev/vdb, Added when /dev/vdb appeared, Removed when it went.
type Markers struct {
	Ready, Added, Removed string
}

func (m Markers) list() []string { return []string{m.Ready, m.Added, m.Removed} }

// Config is what a run of either system shares.
type Config struct {
	// System and Run label the samples.
	System string
	Run    int
	// HotDisk is the image hot-added, read-only.
	HotDisk string
	Markers Markers
	// Boot bounds the wait for the guest to be ready (default
	// DefaultBoot); OpTimeout each operation (default DefaultOpTimeout).
	Boot, OpTimeout time.Duration
	// Settle is the pause once the guest is ready and between the add and
	// the remove, so that each request finds an idle guest (default
	// DefaultSettle).
	Settle time.Duration
	// Echo, when not nil, gets the guest console, each line prefixed
	// with "[System#Run] ".
	Echo io.Writer
}

func (c *Config) defaults() {
	if c.Boot <= 0 {
		c.Boot = DefaultBoot
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	if c.Settle <= 0 {
		c.Settle = DefaultSettle
	}
}

func (c *Config) prefix() string { return fmt.Sprintf("[%s#%d] ", c.System, c.Run) }

// ops are one system's ways of changing its running guest.
type ops struct {
	// prepare runs before the add's clock starts (nil: nothing).
	prepare func(ctx context.Context) error
	// baseline, when set, runs before each request's clock starts and
	// returns how long a request that changes nothing takes (Sample.CLI).
	baseline func(ctx context.Context) (time.Duration, error)
	// add and remove issue the request and return once it is answered.
	add, remove func(ctx context.Context) error
	// removed waits for the VMM to say the device is gone (nil: the
	// remove's answer says so).
	removed func(ctx context.Context) (time.Time, error)
}

// failed returns the samples of a run that failed before its
// operations.
func failed(cfg Config, err error) []Sample {
	return []Sample{
		{System: cfg.System, Run: cfg.Run, Op: OpAdd, Error: err.Error()},
		{System: cfg.System, Run: cfg.Run, Op: OpRemove, Error: "not measured: " + err.Error()},
	}
}

// measure waits for the guest to be ready, then times the add and the
// remove.
func measure(ctx context.Context, cfg Config, con *guestconsole.Console, ready func(context.Context) error, o ops) []Sample {
	bootCtx, cancel := context.WithTimeout(ctx, cfg.Boot)
	err := ready(bootCtx)
	cancel()
	if err != nil {
		return failed(cfg, fmt.Errorf("guest not ready: %w", err))
	}
	add := Sample{System: cfg.System, Run: cfg.Run, Op: OpAdd}
	remove := Sample{System: cfg.System, Run: cfg.Run, Op: OpRemove}
	if err := pause(ctx, cfg.Settle); err != nil {
		return failed(cfg, err)
	}
	if o.prepare != nil {
		if err := o.prepare(ctx); err != nil {
			return failed(cfg, fmt.Errorf("prepare the add: %w", err))
		}
	}
	if err := timeOp(ctx, cfg, con, &add, cfg.Markers.Added, o.baseline, o.add, nil); err != nil {
		add.Error = err.Error()
		remove.Error = "not measured: the add failed"
		return []Sample{add, remove}
	}
	if err := pause(ctx, cfg.Settle); err != nil {
		remove.Error = err.Error()
		return []Sample{add, remove}
	}
	if err := timeOp(ctx, cfg, con, &remove, cfg.Markers.Removed, o.baseline, o.remove, o.removed); err != nil {
		remove.Error = err.Error()
	}
	return []Sample{add, remove}
}

// timeOp issues one request and fills s with the times from issuing it
// to its answer, to the guest's marker, and (removed not nil) to the
// VMM's word that the device is gone, else to the answer; and with the
// baseline's time, when there is one (run first).
func timeOp(ctx context.Context, cfg Config, con *guestconsole.Console, s *Sample, marker string, baseline func(context.Context) (time.Duration, error),
	request func(context.Context) error, removed func(context.Context) (time.Time, error)) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	defer cancel()
	if baseline != nil {
		d, err := baseline(ctx)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		s.CLI = d
	}
	t0 := time.Now()
	if err := request(ctx); err != nil {
		return err
	}
	s.Request = time.Since(t0)
	seen, err := con.Wait(ctx, marker, t0)
	if err != nil {
		return err
	}
	s.Guest = seen.Sub(t0)
	if s.Op != OpRemove {
		return nil
	}
	s.Removed = s.Request
	if removed != nil {
		at, err := removed(ctx)
		if err != nil {
			return err
		}
		s.Removed = at.Sub(t0)
	}
	return nil
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
