package blk_test

import (
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/internal/tokenbucket/fakeclock"
	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/blk"
	vt "rainforest/vmm/virtio/virtiotest"
)

// flood keeps the 16-entry queue full of reads of size bytes (one
// indirect descriptor each) for the given fake time, notifying and
// advancing the clock in steps, and returns the requests completed.
func flood(t *testing.T, r *rig, clk *fakeclock.Clock, size uint32, d, step time.Duration) (completed int) {
	t.Helper()
	outstanding := 0
	r.header(blk.TypeIn, 0)
	for slot := 0; clk.Now().Sub(t0) < d; {
		for outstanding < 16 {
			r.drv.AddIndirect(0x70000+uint64(slot%16)*0x100, hdr,
				vt.Buf{Addr: dataAddr, Len: size, Write: true}, status)
			slot++
			outstanding++
		}
		r.dev.QueueNotify(0)
		for {
			_, n, ok := r.drv.TakeUsed()
			if !ok {
				break
			}
			if n != size+1 {
				t.Fatalf("read returned %d bytes, want %d", n, size+1)
			}
			completed++
			outstanding--
		}
		clk.Advance(step)
	}
	return completed
}

var t0 = time.Unix(5000, 0)

func TestIOPSLimit(t *testing.T) {
	clk := fakeclock.New(t0)
	r := newRig(t, 64, blk.Options{IOPS: tokenbucket.Limit{Rate: 100, Burst: 10}, Clock: clk})
	got := flood(t, r, clk, 512, 2*time.Second, 7*time.Millisecond)
	// 10 at once, then 100/s for 2 s.
	if got < 200 || got > 211 {
		t.Fatalf("%d requests in 2s at 100/s burst 10, want 200..211", got)
	}
	if s := r.dev.Stats(); s.Throttled == 0 {
		t.Fatal("no request counted as throttled")
	}
}

func TestBandwidthLimit(t *testing.T) {
	clk := fakeclock.New(t0)
	const bw = 64 << 10
	r := newRig(t, 64, blk.Options{Bandwidth: tokenbucket.Limit{Rate: bw, Burst: 16 << 10}, Clock: clk})
	got := flood(t, r, clk, 4096, 3*time.Second, 13*time.Millisecond)
	bytes := got * 4096
	if bytes < 3*bw || bytes > 3*bw+16<<10+4096 {
		t.Fatalf("%d bytes in 3s at %d B/s burst 16K", bytes, bw)
	}
}

func TestThrottledRequestIsServedByTheTimer(t *testing.T) {
	clk := fakeclock.New(t0)
	r := newRig(t, 64, blk.Options{IOPS: tokenbucket.Limit{Rate: 1, Burst: 1}, Clock: clk})
	r.header(blk.TypeIn, 0)
	read := vt.Buf{Addr: dataAddr, Len: 512, Write: true}
	r.drv.AddIndirect(0x70000, hdr, read, status)
	r.drv.AddIndirect(0x70100, hdr, read, status)
	r.dev.QueueNotify(0)
	if _, _, ok := r.drv.TakeUsed(); !ok {
		t.Fatal("first request not served")
	}
	if _, _, ok := r.drv.TakeUsed(); ok || !r.dev.Throttled() || clk.Pending() != 1 {
		t.Fatalf("second request: served %v, throttled %v, timers %d", ok, r.dev.Throttled(), clk.Pending())
	}
	r.dev.QueueNotify(0) // the guest kicks again: still held, no second timer
	if clk.Pending() != 1 {
		t.Fatalf("%d timers after a second kick", clk.Pending())
	}
	r.irq.TakeUsed()
	clk.Advance(time.Second) // no notify from the guest: the timer serves it
	if _, _, ok := r.drv.TakeUsed(); !ok {
		t.Fatal("held request not served when tokens returned")
	}
	if u := r.irq.TakeUsed(); len(u) == 0 {
		t.Fatal("no interrupt for the request served by the timer")
	}
	if r.dev.Throttled() || clk.Pending() != 0 || r.dev.Stats().Throttled != 1 {
		t.Fatalf("after: throttled %v, timers %d, stats %+v", r.dev.Throttled(), clk.Pending(), r.dev.Stats())
	}
}

func TestResetAndCloseDropTheTimer(t *testing.T) {
	for _, how := range []string{"reset", "close", "quiesce"} {
		clk := fakeclock.New(t0)
		r := newRig(t, 64, blk.Options{IOPS: tokenbucket.Limit{Rate: 1, Burst: 1}, Clock: clk})
		r.header(blk.TypeIn, 0)
		read := vt.Buf{Addr: dataAddr, Len: 512, Write: true}
		r.drv.AddIndirect(0x70000, hdr, read, status)
		r.drv.AddIndirect(0x70100, hdr, read, status)
		r.dev.QueueNotify(0)
		if clk.Pending() != 1 {
			t.Fatalf("%s: no timer armed", how)
		}
		switch how {
		case "reset":
			r.dev.Reset()
		case "quiesce":
			r.dev.Quiesce()
		default:
			if err := r.dev.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if clk.Pending() != 0 || r.dev.Throttled() {
			t.Fatalf("%s: timer or held request left", how)
		}
		r.drv.TakeUsed()
		clk.Advance(time.Hour)
		if _, _, ok := r.drv.TakeUsed(); ok {
			t.Fatalf("%s: request served after teardown", how)
		}
	}
}

func TestOversizedRequestIsDelayedNotRefused(t *testing.T) {
	clk := fakeclock.New(t0)
	r := newRig(t, 64, blk.Options{Bandwidth: tokenbucket.Limit{Rate: 1024, Burst: 1024}, Clock: clk})
	r.header(blk.TypeIn, 0)
	big := vt.Buf{Addr: dataAddr, Len: 8192, Write: true}
	r.drv.AddIndirect(0x70000, hdr, big, status)
	r.drv.AddIndirect(0x70100, hdr, big, status)
	r.dev.QueueNotify(0)
	if _, _, ok := r.drv.TakeUsed(); !ok {
		t.Fatal("oversized request on a full bucket not served")
	}
	clk.Advance(8*time.Second - time.Millisecond) // the debt (7 KiB) plus a full bucket (1 KiB) takes 8 s
	if _, _, ok := r.drv.TakeUsed(); ok {
		t.Fatal("second request served before the debt was paid")
	}
	clk.Advance(time.Millisecond)
	if _, _, ok := r.drv.TakeUsed(); !ok {
		t.Fatal("second request not served once the bucket was full")
	}
}

// unstoppableClock is a fake clock whose timers cannot be stopped, as a
// system timer that has already fired and waits for the device's mutex.
type unstoppableClock struct{ *fakeclock.Clock }

func (c unstoppableClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.Clock.AfterFunc(d, f)
	return func() bool { return false }
}

// A reset racing a timer that can no longer be stopped keeps the limit:
// the stale wake-up serves nothing early, and the requests of the new
// queue are served by their own timers.
func TestStaleWakeUpIgnored(t *testing.T) {
	clk := unstoppableClock{fakeclock.New(t0)}
	r := newRig(t, 64, blk.Options{IOPS: tokenbucket.Limit{Rate: 10, Burst: 1}, Clock: clk})
	r.header(blk.TypeIn, 0)
	read := vt.Buf{Addr: dataAddr, Len: 512, Write: true}
	r.drv.AddIndirect(0x70000, hdr, read, status)
	r.drv.AddIndirect(0x70100, hdr, read, status)
	r.dev.QueueNotify(0) // one served, one held: timer 1 due at +100ms
	clk.Advance(50 * time.Millisecond)
	// The driver resets the device and sets it up again with a new queue.
	r.dev.Reset()
	drv := vt.NewDriver(r.drv.Mem, 16, 0x8000)
	q, err := virtio.NewQueue(drv.Mem, drv.Config(), virtio.FeatureIndirectDesc)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dev.Activate(virtio.Activation{Mem: drv.Mem, Features: virtio.FeatureVersion1 | blk.FeatureFlush, Queues: []*virtio.Queue{q}, IRQ: r.irq}); err != nil {
		t.Fatal(err)
	}
	drv.AddIndirect(0x70200, hdr, read, status)
	drv.AddIndirect(0x70300, hdr, read, status)
	r.dev.QueueNotify(0) // no token yet: held, timer 2 due at +100ms
	if _, _, ok := drv.TakeUsed(); ok {
		t.Fatal("served without a token")
	}
	clk.Advance(60 * time.Millisecond) // timer 1 fires: stale
	if _, _, ok := drv.TakeUsed(); !ok {
		t.Fatal("first request after the reset not served by its own timer")
	}
	if _, _, ok := drv.TakeUsed(); ok {
		t.Fatal("stale wake-up served a request over the limit")
	}
	clk.Advance(100 * time.Millisecond)
	if _, _, ok := drv.TakeUsed(); !ok {
		t.Fatal("second request not served by its timer")
	}
}
