package console_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/console"
	vt "rainforest/vmm/virtio/virtiotest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type rig struct {
	dev    *console.Device
	rx, tx *vt.Driver
	irq    *vt.IRQ
	out    *syncBuffer
}

func newRig(t *testing.T, opts console.Options) *rig {
	t.Helper()
	mem := vt.NewMemory(1 << 20)
	r := &rig{out: &syncBuffer{}, irq: &vt.IRQ{}}
	r.dev = console.New(r.out, opts)
	r.rx = vt.NewDriver(mem, 8, 0x1000)
	r.tx = vt.NewDriver(mem, 8, 0x4000)
	var qs []*virtio.Queue
	for _, d := range []*vt.Driver{r.rx, r.tx} {
		q, err := virtio.NewQueue(mem, d.Config(), 0)
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	if err := r.dev.Activate(virtio.Activation{Mem: mem, Queues: qs, IRQ: r.irq}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTransmit(t *testing.T) {
	r := newRig(t, console.Options{})
	_ = r.tx.Mem.WriteAt([]byte("hello, "), 0x40000)
	_ = r.tx.Mem.WriteAt([]byte("world\n"), 0x41000)
	r.tx.AddChain(vt.Buf{Addr: 0x40000, Len: 7})
	r.tx.AddChain(vt.Buf{Addr: 0x41000, Len: 6})
	r.dev.QueueNotify(console.TransmitQueue)
	if got := r.out.String(); got != "hello, world\n" {
		t.Fatalf("output %q", got)
	}
	for i := 0; i < 2; i++ {
		if _, n, ok := r.tx.TakeUsed(); !ok || n != 0 {
			t.Fatalf("tx used %d %v", n, ok)
		}
	}
	if u := r.irq.TakeUsed(); len(u) != 1 || u[0] != console.TransmitQueue {
		t.Fatalf("interrupts %v", u)
	}
	if r.dev.OutputError() != nil {
		t.Fatal(r.dev.OutputError())
	}
}

func TestReceive(t *testing.T) {
	r := newRig(t, console.Options{InputBuffer: 16})
	// Input before the guest posts buffers is held.
	if n, err := r.dev.Enqueue([]byte("abc")); n != 3 || err != nil {
		t.Fatal(n, err)
	}
	if _, _, ok := r.rx.TakeUsed(); ok {
		t.Fatal("used without buffers")
	}
	// Bounded: the overflow is dropped.
	n, err := r.dev.Enqueue(bytes.Repeat([]byte("x"), 20))
	if n != 13 || !errors.Is(err, console.ErrInputFull) {
		t.Fatalf("Enqueue overflow = %d %v", n, err)
	}
	r.rx.AddChain(vt.Buf{Addr: 0x50000, Len: 10, Write: true})
	r.rx.AddChain(vt.Buf{Addr: 0x51000, Len: 10, Write: true})
	r.dev.QueueNotify(console.ReceiveQueue)
	_, n1, ok1 := r.rx.TakeUsed()
	_, n2, ok2 := r.rx.TakeUsed()
	b1, _ := r.rx.Mem.Slice(0x50000, 10)
	b2, _ := r.rx.Mem.Slice(0x51000, 6)
	if !ok1 || !ok2 || n1 != 10 || n2 != 6 || string(b1)+string(b2) != "abcxxxxxxxxxxxxx" {
		t.Fatalf("rx: %d %d %q %q", n1, n2, b1, b2)
	}
	if u := r.irq.TakeUsed(); len(u) != 1 || u[0] != console.ReceiveQueue {
		t.Fatalf("interrupts %v", u)
	}
	// With a buffer posted, input goes straight in.
	r.rx.AddChain(vt.Buf{Addr: 0x52000, Len: 10, Write: true})
	r.dev.QueueNotify(console.ReceiveQueue)
	if _, err := r.dev.Enqueue([]byte("ls\n")); err != nil {
		t.Fatal(err)
	}
	if _, n, ok := r.rx.TakeUsed(); !ok || n != 3 {
		t.Fatalf("direct rx %d %v", n, ok)
	}
}

func TestMalformedAndReset(t *testing.T) {
	r := newRig(t, console.Options{})
	r.tx.SetDesc(r.tx.Desc, 0, 0x40000, 1, virtio.DescFlagNext, 0)
	r.tx.Publish(0)
	r.dev.QueueNotify(console.TransmitQueue)
	if r.irq.NeedsResetCount() != 1 {
		t.Fatal("loop in tx chain did not request reset")
	}
	r.rx.Publish(99)
	if _, err := r.dev.Enqueue([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if r.irq.NeedsResetCount() != 2 {
		t.Fatal("bad rx head did not request reset")
	}
	r.dev.QueueNotify(console.TransmitQueue)
	r.dev.QueueNotify(5)
	r.dev.Reset()
	if _, err := r.dev.Enqueue([]byte("kept")); err != nil {
		t.Fatal(err)
	}
	if r.dev.Type() != virtio.TypeConsole || r.dev.NumQueues() != 2 || r.dev.Features() != 0 {
		t.Fatal("identity")
	}
	var c [12]byte
	r.dev.ReadConfig(0, c[:])
	r.dev.WriteConfig(0, c[:])
}

// TestConcurrentInput feeds input from a "terminal" goroutine while the
// guest side posts buffers; run with -race.
func TestConcurrentInput(t *testing.T) {
	r := newRig(t, console.Options{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100; i++ {
			_, _ = r.dev.Enqueue([]byte("k"))
		}
	}()
	for i := 0; i < 100; i++ {
		r.dev.QueueNotify(console.ReceiveQueue)
	}
	wg.Wait()
}
