package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// cacheLine is one 64-byte message line whose first word is the sequence
// number, published last.
type cacheLine struct {
	seq     atomic.Uint64
	payload [7]uint64
}

// pingPongLines is two cache lines with a line of padding either side;
// its 256-byte size class keeps it line-aligned.
type pingPongLines struct {
	_    [64]byte
	ping cacheLine
	pong cacheLine
	_    [64]byte
}

// counterLine is a round-trip counter on its own line.
type counterLine struct {
	_ [64]byte
	n atomic.Uint64
	_ [56]byte
}

// windowSampler reads a monotonically increasing event count every window
// for duration and turns each window into nanoseconds per event.
type windowSampler struct {
	duration, window time.Duration
}

// errNoProgress is returned when the counter did not move at all.
var errNoProgress = errors.New("no progress")

// sample waits (up to 10 s) for the counter to start, then samples it.
// It returns ns-per-event per window and the overall events per second.
func (s windowSampler) sample(ctx context.Context, read func() uint64) ([]float64, float64, error) {
	startBy := time.Now().Add(10 * time.Second)
	for read() == 0 {
		if time.Now().After(startBy) {
			return nil, 0, fmt.Errorf("counter never started: %w", errNoProgress)
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(s.window) // warm-up window, discarded
	var samples []float64
	first, t0 := read(), time.Now()
	prev, tPrev := first, t0
	for time.Since(t0) < s.duration {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		time.Sleep(s.window)
		n, t := read(), time.Now()
		if n > prev {
			samples = append(samples, float64(t.Sub(tPrev).Nanoseconds())/float64(n-prev))
		}
		prev, tPrev = n, t
	}
	if prev == first {
		return nil, 0, fmt.Errorf("counter stuck at %d for %v: %w", prev, s.duration, errNoProgress)
	}
	return samples, float64(prev-first) / tPrev.Sub(t0).Seconds(), nil
}

// runFloor measures two host threads pinned to cores[0] and cores[1]: a
// cache-line ping-pong (round trips counted over windows) and a ring
// stream of 64-byte messages.
func runFloor(ctx context.Context, cores [2]int, s windowSampler) (Row, error) {
	row := Row{Mechanism: "host threads, cache line (floor)", Floor: true,
		Note: fmt.Sprintf("threads pinned to cores %d,%d spinning on atomic loads; RTT = mean per %v window, median/p99 over windows; msgs/s is conservative: Go's atomic stores are XCHG (a full fence) per message, the guests' are plain MOVs", cores[0], cores[1], s.window)}
	lines := new(pingPongLines)
	var count counterLine
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // echo side
		defer wg.Done()
		if err := pinThread(cores[1]); err != nil {
			errs <- err
			stop.Store(true)
			return
		}
		var last, sink uint64
		for !stop.Load() {
			v := lines.ping.seq.Load()
			if v == last {
				continue
			}
			last = v
			for _, w := range lines.ping.payload {
				sink += w
			}
			for i := range lines.pong.payload {
				lines.pong.payload[i] = v
			}
			lines.pong.seq.Store(v)
		}
		_ = sink
	}()
	go func() { // initiating side
		defer wg.Done()
		if err := pinThread(cores[0]); err != nil {
			errs <- err
			stop.Store(true)
			return
		}
		for seq := uint64(1); !stop.Load(); seq++ {
			for i := range lines.ping.payload {
				lines.ping.payload[i] = seq
			}
			lines.ping.seq.Store(seq)
			for lines.pong.seq.Load() != seq {
				if stop.Load() {
					return
				}
			}
			count.n.Store(seq)
		}
	}()
	samples, _, err := s.sample(ctx, count.n.Load)
	stop.Store(true)
	wg.Wait()
	close(errs)
	for e := range errs {
		err = errors.Join(err, e)
	}
	if err != nil {
		return row, fmt.Errorf("floor ping-pong: %w", err)
	}
	row.RTT, row.samples = Summarize(samples), samples
	tput, err := floorStream(ctx, cores, s.duration)
	if err != nil {
		return row, fmt.Errorf("floor stream: %w", err)
	}
	row.Throughput = tput
	return row, nil
}

// floorRing is a single-producer single-consumer ring of 64-byte slots
// between two threads. Large enough to be page-aligned by the allocator.
type floorRing struct {
	_     [64]byte
	head  atomic.Uint64
	_     [56]byte
	tail  atomic.Uint64
	_     [56]byte
	slots [ringSlotCount][8]uint64
	_     [32 << 10]byte
}

// floorStream streams sequenced 64-byte messages for d through a ring
// and returns messages per second.
func floorStream(ctx context.Context, cores [2]int, d time.Duration) (float64, error) {
	r := new(floorRing)
	var end atomic.Uint64 // producer's final head + 1, 0 while streaming
	var bad atomic.Uint64
	errs := make(chan error, 2)
	var start time.Time
	var elapsed time.Duration
	var wg sync.WaitGroup
	ready := make(chan struct{})
	wg.Add(2)
	go func() { // consumer
		defer wg.Done()
		if err := pinThread(cores[1]); err != nil {
			errs <- err
			return
		}
		close(ready)
		var tail, head uint64
		for {
			if tail == head {
				head = r.head.Load()
				if tail == head {
					if e := end.Load(); e != 0 && tail == e-1 {
						return
					}
					continue
				}
			}
			s := &r.slots[tail%ringSlotCount]
			tail++
			if s[0] != tail {
				bad.Add(1)
			}
			r.tail.Store(tail)
		}
	}()
	go func() { // producer
		defer wg.Done()
		if err := pinThread(cores[0]); err != nil {
			errs <- err
			end.Store(1)
			return
		}
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			end.Store(1)
			errs <- errors.New("consumer did not start")
			return
		}
		start = time.Now()
		var head, tail uint64
		for ctx.Err() == nil {
			for i := 0; i < 1<<16; i++ {
				for head-tail >= ringSlotCount {
					tail = r.tail.Load()
				}
				s := &r.slots[head%ringSlotCount]
				head++
				for k := 1; k < 8; k++ {
					s[k] = head
				}
				s[0] = head
				r.head.Store(head)
			}
			if time.Since(start) >= d {
				break
			}
		}
		for r.tail.Load() != head {
		}
		elapsed = time.Since(start)
		end.Store(head + 1)
	}()
	wg.Wait()
	close(errs)
	var err error
	for e := range errs {
		err = errors.Join(err, e)
	}
	if err != nil {
		return 0, err
	}
	if n := bad.Load(); n != 0 {
		return 0, fmt.Errorf("%d messages out of sequence", n)
	}
	return float64(end.Load()-1) / elapsed.Seconds(), nil
}
