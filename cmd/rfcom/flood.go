package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"rainforest/rfcom"
	"rainforest/rfcom/device"
	"rainforest/vmm/shmem/abi"
)

// The flood commands do what a malicious guest would: ring a peer's
// doorbell, or fill a ring, as fast as the device takes it, so that tests
// can check that the receiver stays responsive and the VMM rate-limits.

// defaultFloodDuration is how long a flood runs without --duration or
// --count.
const defaultFloodDuration = 10 * time.Second

// floodDatagram is the datagram type flood msg sends (after bench's).
const floodDatagram uint8 = 0x86

// floodCheckEvery is how many operations a flood does between looks at the
// clock and the context.
const floodCheckEvery = 16

// floodLimit ends a flood: after count operations, else after duration.
type floodLimit struct {
	duration time.Duration
	count    int
}

func (l *floodLimit) register(fs *flag.FlagSet) {
	fs.DurationVar(&l.duration, "duration", 0, "flood for this long (default 10s)")
	fs.IntVar(&l.count, "count", 0, "stop after this many operations instead")
}

// check validates the flags and fills in the default duration.
func (l *floodLimit) check(fs *flag.FlagSet) error {
	switch {
	case flagSet(fs, "duration") && flagSet(fs, "count"):
		return usagef("--duration and --count are exclusive")
	case l.count < 0:
		return usagef("--count %d is negative", l.count)
	case l.duration < 0:
		return usagef("--duration %v is negative", l.duration)
	case flagSet(fs, "count") && l.count == 0:
		return usagef("--count 0 floods nothing")
	case flagSet(fs, "duration") && l.duration == 0:
		return usagef("--duration 0 floods nothing")
	}
	if l.count == 0 && l.duration == 0 {
		l.duration = defaultFloodDuration
	}
	return nil
}

// floodResult is what a flood did.
type floodResult struct {
	done    uint64 // operations that went through
	refused uint64 // attempts the device refused (a full ring)
	elapsed time.Duration
}

// rate returns the operations per second.
func (r floodResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

// runFlood calls try until lim is reached, ctx ends or try fails. try
// reports whether its operation went through; a refused one is counted and
// retried after a yield.
func runFlood(ctx context.Context, lim floodLimit, try func() (bool, error)) (floodResult, error) {
	start := time.Now()
	var deadline time.Time
	if lim.count == 0 {
		deadline = start.Add(lim.duration)
	}
	var (
		r   floodResult
		err error
	)
	for i := 0; lim.count == 0 || r.done < uint64(lim.count); i++ {
		if i%floodCheckEvery == 0 {
			if ctx.Err() != nil || (!deadline.IsZero() && !time.Now().Before(deadline)) {
				break
			}
		}
		var ok bool
		if ok, err = try(); err != nil {
			break
		}
		if ok {
			r.done++
		} else {
			r.refused++
			runtime.Gosched()
		}
	}
	r.elapsed = time.Since(start)
	return r, err
}

func (e *env) flood(args []string) error {
	if len(args) == 0 {
		return usagef("flood takes doorbell or msg")
	}
	switch args[0] {
	case "doorbell":
		return e.floodDoorbell(args[1:])
	case "msg":
		return e.floodMsg(args[1:])
	case "-h", "-help", "--help":
		return flag.ErrHelp
	}
	return usagef("flood %q: want doorbell or msg", args[0])
}

// signalContext is e.ctx ended also by SIGTERM or SIGINT: an interrupted
// flood or disk benchmark still reports what it did.
func (e *env) signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(e.ctx, syscall.SIGTERM, syscall.SIGINT)
}

// openFICMRegisters opens the FICM device without interrupts (no uio, and
// INT_CONTROL left alone, so that a daemon or node using the device keeps
// its interrupts): its doorbell register is all the doorbell flood needs.
func (e *env) openFICMRegisters(ctx context.Context) (*device.Device, error) {
	o := e.options()
	sys, dev := o.Roots()
	infos, err := device.Find(sys)
	if err != nil {
		return nil, err
	}
	for _, info := range infos {
		if info.Protocol() == abi.ProtocolFICM {
			return device.Open(ctx, sys, dev, info, device.WithoutInterrupts())
		}
	}
	return nil, fmt.Errorf("%w under %s", rfcom.ErrNoDevice, sys)
}

func (e *env) floodDoorbell(args []string) error {
	fs := newFlags("flood doorbell")
	peer := fs.Int("peer", -1, "peer whose doorbell to ring")
	vector := fs.Int("vector", rfcom.Vector, "doorbell vector")
	var lim floodLimit
	lim.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if *peer < 0 {
		return usagef("--peer N is required")
	}
	if *peer > abi.MaxPeers-1 {
		return usagef("--peer %d outside 0..%d", *peer, abi.MaxPeers-1)
	}
	if *vector < 0 || *vector > abi.MaxVector {
		return usagef("--vector %d outside 0..%d", *vector, abi.MaxVector)
	}
	if err := lim.check(fs); err != nil {
		return err
	}
	oc, ocancel := context.WithTimeout(e.ctx, openTimeout)
	defer ocancel()
	d, err := e.openFICMRegisters(oc)
	if err != nil {
		return err
	}
	defer d.Close()
	if *peer >= d.Peers() {
		return fmt.Errorf("peer %d outside the %d peers of the group", *peer, d.Peers())
	}
	ctx, cancel := e.signalContext()
	defer cancel()
	r, err := runFlood(ctx, lim, func() (bool, error) { return true, d.Ring(*peer, *vector) })
	fmt.Fprintf(e.stdout, "RF-FLOOD doorbells=%d seconds=%.3f rate=%.0f\n", r.done, r.elapsed.Seconds(), r.rate())
	return err
}

// floodPeer resolves flood msg's --to: "supervisor", a peer id or a name
// on the board.
func floodPeer(n *rfcom.Node, to string) (int, error) {
	if to == "supervisor" {
		return rfcom.SupervisorPeer, nil
	}
	if p, err := strconv.Atoi(to); err == nil {
		return p, nil
	}
	return n.Lookup(to)
}

func (e *env) floodMsg(args []string) error {
	fs := newFlags("flood msg")
	to := fs.String("to", "supervisor", "destination: supervisor, a peer id or a subOS name")
	var lim floodLimit
	lim.register(fs)
	sock := registerSocket(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if *to == "" {
		return usagef("--to is empty")
	}
	if err := lim.check(fs); err != nil {
		return err
	}
	oc, ocancel := context.WithTimeout(e.ctx, openTimeout)
	defer ocancel()
	if err := refuseBesideDaemon(oc, e.socketPath(*sock), "flood msg"); err != nil {
		return err
	}
	n, err := rfcom.Open(oc, e.options())
	if err != nil {
		return err
	}
	defer n.Close()
	peer, err := floodPeer(n, *to)
	if err != nil {
		return err
	}
	if peer < 0 || peer >= n.Peers() || peer == n.Self() {
		return fmt.Errorf("%w: %d (this is peer %d of %d)", rfcom.ErrNoPeer, peer, n.Self(), n.Peers())
	}
	ctx, cancel := e.signalContext()
	defer cancel()
	payload := make([]byte, rfcom.MaxDatagram)
	var seq uint64
	r, err := runFlood(ctx, lim, func() (bool, error) {
		binary.LittleEndian.PutUint64(payload, seq)
		ok, err := n.TrySend(peer, floodDatagram, payload)
		if ok {
			seq++
		}
		return ok, err
	})
	fmt.Fprintf(e.stdout, "RF-FLOOD messages=%d refused=%d seconds=%.3f\n", r.done, r.refused, r.elapsed.Seconds())
	return withStats(n, err)
}
