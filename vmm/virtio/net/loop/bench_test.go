package loop

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"rainforest/ficm/ring"
	"rainforest/vmm/eventfd"
	vnet "rainforest/vmm/virtio/net"
)

// sinkPort is a guest that takes every frame at once.
type sinkPort struct{ frames, bytes atomic.Uint64 }

func (p *sinkPort) Receive(frame []byte) error {
	p.frames.Add(1)
	p.bytes.Add(uint64(len(frame)))
	return nil
}

func (p *sinkPort) WaitRx(context.Context) error { return nil }

// BenchmarkStream is one member streaming frames of a size to another
// through its ring, the receiver's goroutine (with its doorbell) handing
// them to a guest that takes them at once: the loop's own cost, no guest
// or KVM (the sender retries a full ring, yielding).
func BenchmarkStream(b *testing.B) {
	for _, size := range []int{64, 1514, 9014, vnet.MaxFrame} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			ms := members(2)
			l, err := LaneLayout(2, DefaultSlots)
			if err != nil {
				b.Fatal(err)
			}
			lanes := [][]byte{ring.AlignedBytes(l.SectionSize()), ring.AlignedBytes(l.SectionSize())}
			var bells []*eventfd.EventFD
			for range 2 {
				ev, err := eventfd.New()
				if err != nil {
					b.Fatal(err)
				}
				defer ev.Close()
				bells = append(bells, ev)
			}
			var be [2]*Backend
			for i := range 2 {
				if be[i], err = New(Config{Network: "bench", Self: i, Members: ms}, lanes, bells); err != nil {
					b.Fatal(err)
				}
				defer be[i].Close()
				be[i].Configure(allFeatures)
			}
			pkt := udp(0, 1, size-14-20-8)
			frame := [][]byte{pkt[:minPacket], pkt[minPacket:]}
			sink := &sinkPort{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { // owner: this benchmark; stopped below
				defer close(done)
				be[1].Run(ctx, sink)
			}()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for range b.N {
				for {
					err := be[0].Send(frame)
					if err == nil {
						break
					}
					if !errors.Is(err, ErrRingFull) {
						b.Fatal(err)
					}
					runtime.Gosched()
				}
			}
			for sink.frames.Load() < uint64(b.N) {
				runtime.Gosched()
			}
			b.StopTimer()
			cancel()
			<-done
			s := be[0].Stats()
			b.ReportMetric(float64(s.Doorbells)/float64(b.N), "doorbells/frame")
			b.ReportMetric(float64(s.TxRingFull)/float64(b.N), "full/frame")
		})
	}
}
