package ring

import (
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
)

// runPinned runs timed and helper on two fresh goroutines, each locked to
// its own OS thread and pinned (best effort) to a different CPU; only the
// run of timed is measured. Neither goroutine unlocks its thread, so the
// pinned threads exit with them instead of returning to the scheduler.
// helper must return once stop is closed (or once its work is done).
func runPinned(b *testing.B, timed func(), helper func(stop <-chan struct{})) {
	ready := make(chan struct{}, 2)
	start, stop := make(chan struct{}), make(chan struct{})
	timedDone, helperDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(helperDone)
		runtime.LockOSThread()
		pinToCPU(1)
		ready <- struct{}{}
		<-start
		helper(stop)
	}()
	go func() {
		defer close(timedDone)
		runtime.LockOSThread()
		pinToCPU(0)
		ready <- struct{}{}
		<-start
		timed()
	}()
	<-ready
	<-ready
	b.ResetTimer()
	close(start)
	<-timedDone
	b.StopTimer()
	close(stop)
	<-helperDone
}

// BenchmarkRingPingPong measures the round trip of one 64-byte message over
// two rings between two pinned threads. ns/op is the round trip.
func BenchmarkRingPingPong(b *testing.B) {
	ping, pingC, _, _ := newPair(b, 64, 0)
	pongP, pong, _, _ := newPair(b, 64, 0)
	var failure atomic.Value
	total := b.N
	runPinned(b, func() {
		var m [SlotSize]byte
		for i := 0; i < total; i++ {
			m[0] = byte(i)
			if ok, err := ping.TryPush(m[:]); !ok || err != nil {
				failure.Store(errors.Join(errors.New("ping push failed"), err))
				return
			}
			for {
				ok, err := pong.TryPop(&m)
				if err != nil {
					failure.Store(err)
					return
				}
				if ok {
					break
				}
			}
		}
	}, func(stop <-chan struct{}) {
		var m [SlotSize]byte
		for {
			ok, err := pingC.TryPop(&m)
			if err != nil {
				failure.Store(err)
				return
			}
			if !ok {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			if ok, err := pongP.TryPush(m[:]); !ok || err != nil {
				failure.Store(errors.Join(errors.New("pong push failed"), err))
				return
			}
		}
	})
	if err, _ := failure.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/2, "ns/one-way")
}

// BenchmarkCacheLinePingPong is the floor for BenchmarkRingPingPong: two
// pinned threads bouncing one counter in a cache line. ns/op is a round trip.
func BenchmarkCacheLinePingPong(b *testing.B) {
	var line struct {
		v atomic.Uint64
		_ [SlotSize - 8]byte
	}
	total := uint64(b.N)
	runPinned(b, func() {
		for i := uint64(0); i < total; i++ {
			line.v.Store(2*i + 1)
			for line.v.Load() != 2*i+2 {
			}
		}
	}, func(<-chan struct{}) {
		for want := uint64(1); want < 2*total; want += 2 {
			for line.v.Load() != want {
			}
			line.v.Store(want + 1)
		}
	})
}

// BenchmarkRingThroughput streams 64-byte messages in batches of up to 32
// from one pinned thread to another; ns/op is per message.
func BenchmarkRingThroughput(b *testing.B) {
	p, c, _, _ := newPair(b, 1024, 0)
	total := b.N
	var failure atomic.Value
	runPinned(b, func() {
		var m [SlotSize]byte
		for got := 0; got < total; {
			n, err := c.Peek(32)
			if err != nil {
				failure.Store(err)
				return
			}
			for i := range n {
				m = *c.Slot(i)
			}
			c.Release(n)
			got += n
		}
		_ = m
	}, func(<-chan struct{}) {
		for sent := 0; sent < total; {
			n, err := p.Reserve(min(32, total-sent))
			if err != nil {
				failure.Store(err)
				return
			}
			for i := range n {
				p.Slot(i)[0] = byte(sent + i)
			}
			p.Commit(n)
			sent += n
		}
	})
	if err, _ := failure.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds()/1e6, "Mmsgs/s")
}
