package ring

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

// newPair returns a producer and consumer over fresh aligned memory, both
// indices starting at start.
func newPair(t testing.TB, slots int, start uint32) (*Producer, *Consumer, []byte, []byte) {
	t.Helper()
	tx := AlignedBytes(TxSize(slots))
	rx := AlignedBytes(RxSize)
	binary.NativeEndian.PutUint32(tx[prodOffset:], start)
	binary.NativeEndian.PutUint32(rx[consOffset:], start)
	p, err := NewProducer(tx, rx, slots)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(tx, rx, slots)
	if err != nil {
		t.Fatal(err)
	}
	return p, c, tx, rx
}

func msgOf(seq uint64) []byte {
	var m [SlotSize]byte
	binary.LittleEndian.PutUint64(m[:], seq)
	binary.LittleEndian.PutUint64(m[SlotSize-8:], ^seq)
	return m[:]
}

func TestPushPopFullEmpty(t *testing.T) {
	for _, start := range []uint32{0, 1<<32 - 3} { // also across index wrap-around
		p, c, _, _ := newPair(t, 4, start)
		var dst [SlotSize]byte
		if ok, err := c.TryPop(&dst); ok || err != nil {
			t.Fatalf("pop from empty ring = %v, %v", ok, err)
		}
		for round := range 3 {
			for i := range 4 {
				if ok, err := p.TryPush(msgOf(uint64(round*10 + i))); !ok || err != nil {
					t.Fatalf("push %d = %v, %v", i, ok, err)
				}
			}
			if ok, err := p.TryPush([]byte{1}); ok || err != nil {
				t.Fatalf("push to full ring = %v, %v", ok, err)
			}
			if n, err := c.Pending(); n != 4 || err != nil {
				t.Fatalf("Pending = %d, %v", n, err)
			}
			for i := range 4 {
				if ok, err := c.TryPop(&dst); !ok || err != nil {
					t.Fatalf("pop %d = %v, %v", i, ok, err)
				}
				if got := binary.LittleEndian.Uint64(dst[:]); got != uint64(round*10+i) {
					t.Fatalf("pop %d got seq %d", i, got)
				}
			}
			if ok, err := c.TryPop(&dst); ok || err != nil {
				t.Fatalf("pop from drained ring = %v, %v", ok, err)
			}
			if n, err := p.Free(); n != 4 || err != nil {
				t.Fatalf("Free = %d, %v", n, err)
			}
		}
	}
}

func TestShortMessageIsZeroPadded(t *testing.T) {
	p, c, _, _ := newPair(t, 1, 0)
	full := make([]byte, SlotSize)
	for i := range full {
		full[i] = 0xFF
	}
	var dst [SlotSize]byte
	if ok, _ := p.TryPush(full); !ok {
		t.Fatal("push failed")
	}
	c.TryPop(&dst)
	if ok, _ := p.TryPush([]byte{7, 8}); !ok {
		t.Fatal("push failed")
	}
	c.TryPop(&dst)
	want := [SlotSize]byte{7, 8}
	if dst != want {
		t.Fatalf("got %x, want %x", dst, want)
	}
	if _, err := p.TryPush(make([]byte, SlotSize+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("oversized push error = %v", err)
	}
}

func TestBatchReserveCommitPeekRelease(t *testing.T) {
	p, c, _, _ := newPair(t, 8, 1<<32-5)
	n, err := p.Reserve(100)
	if n != 8 || err != nil {
		t.Fatalf("Reserve(100) = %d, %v", n, err)
	}
	for i := range 5 {
		p.Slot(i)[0] = byte(i + 1)
	}
	p.Commit(5)
	if n, _ := p.Reserve(8); n != 3 {
		t.Fatalf("Reserve after commit of 5 = %d, want 3", n)
	}
	p.Commit(0)
	n, err = c.Peek(3)
	if n != 3 || err != nil {
		t.Fatalf("Peek(3) = %d, %v", n, err)
	}
	for i := range 3 {
		if c.Slot(i)[0] != byte(i+1) {
			t.Fatalf("slot %d = %d", i, c.Slot(i)[0])
		}
	}
	c.Release(2)
	if n, _ := c.Peek(10); n != 3 || c.Slot(0)[0] != 3 {
		t.Fatalf("Peek after release = %d, first %d", n, c.Slot(0)[0])
	}
	c.Release(3)
	if n, _ := p.Reserve(8); n != 8 {
		t.Fatalf("Reserve on drained ring = %d", n)
	}
	mustPanic(t, func() { p.Slot(8) })
	mustPanic(t, func() { p.Commit(9) })
	mustPanic(t, func() { c.Slot(0) })
	mustPanic(t, func() { c.Release(1) })
}

// TestSpan: a reservation or peek that wraps around the ring's memory
// comes as two spans, each the slots Slot gives, and nothing beyond the
// reservation or peek.
func TestSpan(t *testing.T) {
	p, c, _, _ := newPair(t, 8, 5) // slot 5 of 8: the next 8 wrap after 3
	if n, err := p.Reserve(6); n != 6 || err != nil {
		t.Fatalf("Reserve(6) = %d, %v", n, err)
	}
	first := p.Span(0)
	if len(first) != 3*SlotSize || cap(first) != len(first) || &first[0] != &p.Slot(0)[0] {
		t.Fatalf("first span: %d bytes (cap %d)", len(first), cap(first))
	}
	if second := p.Span(3); len(second) != 3*SlotSize || &second[0] != &p.Slot(3)[0] {
		t.Fatalf("span after the wrap: %d bytes", len(second))
	}
	if s := p.Span(4); len(s) != 2*SlotSize || &s[0] != &p.Slot(4)[0] {
		t.Fatalf("span from slot 4: %d bytes", len(s))
	}
	for i := range 6 {
		p.Slot(i)[0] = byte(10 + i)
	}
	p.Commit(6)
	if n, err := c.Peek(2); n != 2 || err != nil {
		t.Fatalf("Peek(2) = %d, %v", n, err)
	}
	if s := c.Span(0); len(s) != 2*SlotSize || s[0] != 10 || s[SlotSize] != 11 {
		t.Fatalf("peeked span: %d bytes", len(s))
	}
	if n, _ := c.Peek(6); n != 6 {
		t.Fatalf("Peek(6) = %d", n)
	}
	if s := c.Span(1); len(s) != 2*SlotSize || s[0] != 11 {
		t.Fatalf("consumer span before the wrap: %d bytes", len(s))
	}
	if s := c.Span(3); len(s) != 3*SlotSize || s[0] != 13 || s[2*SlotSize] != 15 {
		t.Fatalf("consumer span after the wrap: %d bytes", len(s))
	}
	mustPanic(t, func() { c.Span(6) })
	mustPanic(t, func() { c.Span(-1) })
	mustPanic(t, func() { p.Span(0) }) // committed: no reservation
}

func mustPanic(t *testing.T, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	f()
}

func TestLayoutErrors(t *testing.T) {
	tx := AlignedBytes(TxSize(8))
	rx := AlignedBytes(RxSize)
	for _, slots := range []int{0, -1, 3, 12, MaxSlots * 2} {
		if _, err := NewProducer(tx, rx, slots); !errors.Is(err, ErrLayout) {
			t.Errorf("slots %d: error %v", slots, err)
		}
	}
	if _, err := NewProducer(tx[:TxSize(8)-1], rx, 8); !errors.Is(err, ErrLayout) {
		t.Errorf("short tx: %v", err)
	}
	if _, err := NewConsumer(tx, rx[:RxSize-1], 8); !errors.Is(err, ErrLayout) {
		t.Errorf("short rx: %v", err)
	}
	big := AlignedBytes(TxSize(8) + 8)
	if _, err := NewConsumer(big[2:], rx, 8); !errors.Is(err, ErrMisaligned) {
		t.Errorf("misaligned tx: %v", err)
	}
	if _, err := Uint64At(big, 4); !errors.Is(err, ErrMisaligned) {
		t.Errorf("misaligned uint64: %v", err)
	}
	if _, err := Uint64At(big, len(big)-7); !errors.Is(err, ErrLayout) {
		t.Errorf("uint64 past end: %v", err)
	}
	if _, err := Uint32At(big, -1); !errors.Is(err, ErrLayout) {
		t.Errorf("uint32 before start: %v", err)
	}
	w, err := Uint64At(big, 8)
	if err != nil {
		t.Fatal(err)
	}
	w.Store(0x0102030405060708)
	if binary.NativeEndian.Uint64(big[8:]) != 0x0102030405060708 {
		t.Error("Uint64At does not alias the slice")
	}
	if a := AlignedBytes(100); len(a) != 100 || cap(a) != 100 {
		t.Errorf("AlignedBytes len %d cap %d", len(a), cap(a))
	}
}

func TestCorruptIndices(t *testing.T) {
	p, c, tx, rx := newPair(t, 8, 100)
	var dst [SlotSize]byte
	// Producer index beyond cons+slots, and behind cons.
	for _, bad := range []uint32{100 + 9, 99, 0, 1<<32 - 1} {
		binary.NativeEndian.PutUint32(tx[prodOffset:], bad)
		if _, err := c.TryPop(&dst); !errors.Is(err, ErrCorrupt) {
			t.Errorf("prod %d: TryPop error %v", bad, err)
		}
		if _, err := c.Pending(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("prod %d: Pending error %v", bad, err)
		}
	}
	binary.NativeEndian.PutUint32(tx[prodOffset:], 100+8)
	if n, err := c.Pending(); n != 8 || err != nil {
		t.Errorf("prod at cons+slots: Pending = %d, %v", n, err)
	}
	binary.NativeEndian.PutUint32(tx[prodOffset:], 100)
	// Consumer index ahead of prod, or more than slots behind.
	for _, bad := range []uint32{101, 100 - 9, 1<<32 - 1} {
		binary.NativeEndian.PutUint32(rx[consOffset:], bad)
		if _, err := p.Free(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("cons %d: Free error %v", bad, err)
		}
		p.cons = p.prod - p.count // force a re-read on the next push
		if _, err := p.TryPush([]byte{1}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("cons %d: TryPush error %v", bad, err)
		}
	}
	binary.NativeEndian.PutUint32(rx[consOffset:], 100-8)
	if ok, err := p.TryPush([]byte{1}); ok || err != nil {
		t.Errorf("cons at prod-slots (full): TryPush = %v, %v", ok, err)
	}
}

// TestConcurrentSPSC passes sequenced messages from a producer goroutine to
// a consumer goroutine and checks none is lost, duplicated or torn.
func TestConcurrentSPSC(t *testing.T) {
	total := uint64(10_000_000)
	switch {
	case testing.Short():
		total = 200_000
	case raceEnabled:
		total = 1_000_000
	}
	p, c, _, _ := newPair(t, 256, 1<<32-1000)
	done := make(chan error, 1)
	go func() {
		for seq := uint64(0); seq < total; {
			n, err := p.Reserve(int(min(16, total-seq)))
			if err != nil {
				done <- err
				return
			}
			if n == 0 {
				runtime.Gosched()
				continue
			}
			for i := range n {
				s := p.Slot(i)
				binary.LittleEndian.PutUint64(s[:], seq)
				binary.LittleEndian.PutUint64(s[SlotSize-8:], ^seq)
				seq++
			}
			p.Commit(n)
		}
		done <- nil
	}()
	var dst [SlotSize]byte
	for want := uint64(0); want < total; {
		ok, err := c.TryPop(&dst)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			runtime.Gosched()
			continue
		}
		got, check := binary.LittleEndian.Uint64(dst[:]), binary.LittleEndian.Uint64(dst[SlotSize-8:])
		if got != want || check != ^want {
			t.Fatalf("message %d: got seq %d check %x", want, got, check)
		}
		want++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ok, err := c.TryPop(&dst); ok || err != nil {
		t.Fatalf("extra message after %d: %v, %v", total, ok, err)
	}
}
