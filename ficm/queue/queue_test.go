package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"rainforest/ficm/ring"
)

func newQueue(t testing.TB, slots int) (*Sender, *Receiver, []byte, []byte) {
	t.Helper()
	tx := ring.AlignedBytes(TxSize(slots))
	rx := ring.AlignedBytes(RxSize)
	s, err := NewSender(tx, rx, slots)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReceiver(tx, rx, slots)
	if err != nil {
		t.Fatal(err)
	}
	return s, r, tx, rx
}

func mustMessage(t testing.TB, typ uint8, payload string) Message {
	t.Helper()
	m, err := NewMessage(typ, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFraming(t *testing.T) {
	s, r, tx, _ := newQueue(t, 4)
	long := bytes.Repeat([]byte{0xAB}, MaxPayload)
	for _, p := range [][]byte{nil, []byte("hi"), long} {
		m, err := NewMessage(9, p)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _, err := s.TryPush(m); !ok || err != nil {
			t.Fatalf("push: %v %v", ok, err)
		}
		got, ok, err := r.TryPop()
		if !ok || err != nil {
			t.Fatalf("pop: %v %v", ok, err)
		}
		if got.Type != 9 || !bytes.Equal(got.Payload(), p) {
			t.Fatalf("got type %d payload %x, want %x", got.Type, got.Payload(), p)
		}
	}
	// Wire format of a short message in slot 3 (the 4th push): type, len,
	// payload, zeros, even if the Message carries stale bytes past Len.
	m := mustMessage(t, 7, "abc")
	m.Data[10] = 0xEE
	s.TryPush(m)
	want := make([]byte, ring.SlotSize)
	copy(want, []byte{7, 3, 'a', 'b', 'c'})
	off := ring.HeaderSize + 3*ring.SlotSize
	if got := tx[off : off+ring.SlotSize]; !bytes.Equal(got, want) {
		t.Fatalf("slot bytes %x, want %x", got, want)
	}
	if _, err := NewMessage(1, make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("oversized payload: %v", err)
	}
	bad := Message{Len: MaxPayload + 1}
	if n, _, err := s.PushBatch([]Message{m, bad}); n != 0 || !errors.Is(err, ErrTooLong) {
		t.Fatalf("batch with bad length = %d, %v", n, err)
	}
	if len(bad.Payload()) != MaxPayload {
		t.Fatal("Payload does not clamp an invalid length")
	}
}

func TestBadFrameIsConsumed(t *testing.T) {
	s, r, tx, _ := newQueue(t, 4)
	s.TryPush(mustMessage(t, 1, "one"))
	s.TryPush(mustMessage(t, 2, "two"))
	s.TryPush(mustMessage(t, 3, "three"))
	tx[ring.HeaderSize+ring.SlotSize+1] = 200 // corrupt length of message 2
	dst := make([]Message, 4)
	n, err := r.PopBatch(dst)
	if n != 1 || !errors.Is(err, ErrBadFrame) || string(dst[0].Payload()) != "one" {
		t.Fatalf("PopBatch = %d, %v", n, err)
	}
	m, ok, err := r.TryPop()
	if !ok || err != nil || string(m.Payload()) != "three" {
		t.Fatalf("after bad frame: %q %v %v", m.Payload(), ok, err)
	}
	s.TryPush(mustMessage(t, 4, "four"))
	tx[ring.HeaderSize+3*ring.SlotSize+1] = 63
	if _, ok, err := r.TryPop(); ok || !errors.Is(err, ErrBadFrame) {
		t.Fatalf("TryPop of bad frame = %v, %v", ok, err)
	}
	if n, err := r.Pending(); n != 0 || err != nil {
		t.Fatalf("bad frame not consumed: %d %v", n, err)
	}
}

func TestBatchAndPoll(t *testing.T) {
	s, r, _, _ := newQueue(t, 8)
	var ms []Message
	for i := range 12 {
		ms = append(ms, mustMessage(t, uint8(i), fmt.Sprint(i)))
	}
	n, _, err := s.PushBatch(ms)
	if n != 8 || err != nil {
		t.Fatalf("PushBatch = %d, %v", n, err)
	}
	if free, _ := s.Free(); free != 0 {
		t.Fatalf("Free = %d", free)
	}
	var got []uint8
	n, err = r.Poll(3, func(m Message) { got = append(got, m.Type) })
	if n != 3 || err != nil {
		t.Fatalf("Poll = %d, %v", n, err)
	}
	dst := make([]Message, 10)
	n, err = r.PopBatch(dst)
	if n != 5 || err != nil {
		t.Fatalf("PopBatch = %d, %v", n, err)
	}
	for _, m := range dst[:n] {
		got = append(got, m.Type)
	}
	if n, _, _ = s.PushBatch(ms[8:]); n != 4 {
		t.Fatalf("second PushBatch = %d", n)
	}
	r.Poll(100, func(m Message) { got = append(got, m.Type) })
	for i, typ := range got {
		if int(typ) != i || len(got) != 12 {
			t.Fatalf("received types %v", got)
		}
	}
}

func TestDoorbellFlag(t *testing.T) {
	s, r, _, rx := newQueue(t, 4)
	m := mustMessage(t, 1, "x")
	if _, bell, _ := s.TryPush(m); bell {
		t.Fatal("doorbell requested while receiver is polling")
	}
	if idle, err := r.Arm(); idle || err != nil || r.Armed() {
		t.Fatalf("Arm with a message waiting = %v, %v (armed %v)", idle, err, r.Armed())
	}
	r.TryPop()
	if idle, err := r.Arm(); !idle || err != nil {
		t.Fatalf("Arm on empty queue = %v, %v", idle, err)
	}
	if binary.NativeEndian.Uint32(rx[ArmedOffset:]) != 1 {
		t.Fatal("armed word not published")
	}
	for range 2 { // the sender never clears the flag
		if _, bell, _ := s.TryPush(m); !bell {
			t.Fatal("no doorbell requested while receiver is armed")
		}
	}
	r.Disarm()
	r.Poll(10, func(Message) {})
	if _, bell, _ := s.TryPush(m); bell {
		t.Fatal("doorbell requested after disarm")
	}
}

// TestNoLostWakeup runs a sender that sometimes pauses against a receiver
// that sleeps (on a channel standing in for the doorbell interrupt) whenever
// Arm says it may; a lost wake-up shows as a receiver asleep with messages
// waiting.
func TestNoLostWakeup(t *testing.T) {
	total := 200_000
	if testing.Short() || raceEnabled {
		total = 20_000
	}
	s, r, _, _ := newQueue(t, 16)
	doorbell := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		var m Message
		for i := 0; i < total; {
			binary.LittleEndian.PutUint32(m.Data[:], uint32(i))
			m.Len = 4
			ok, bell, err := s.TryPush(m)
			if err != nil {
				done <- err
				return
			}
			if bell {
				select {
				case doorbell <- struct{}{}:
				default:
				}
			}
			if !ok {
				runtime.Gosched()
				continue
			}
			i++
			if i%97 == 0 {
				time.Sleep(time.Microsecond)
			}
		}
		done <- nil
	}()
	next := uint32(0)
	sleeps := 0
	for int(next) < total {
		n, err := r.Poll(8, func(m Message) {
			if got := binary.LittleEndian.Uint32(m.Data[:]); got != next {
				t.Fatalf("got message %d, want %d", got, next)
			}
			next++
		})
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			continue
		}
		idle, err := r.Arm()
		if err != nil {
			t.Fatal(err)
		}
		if !idle {
			continue
		}
		sleeps++
		select {
		case <-doorbell:
		case <-time.After(10 * time.Second):
			p, _ := r.Pending()
			t.Fatalf("lost wake-up: asleep with %d messages waiting after %d", p, next)
		}
		r.Disarm()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages, %d sleeps", total, sleeps)
}

func TestCorruptIndexDisarms(t *testing.T) {
	_, r, tx, rx := newQueue(t, 4)
	binary.NativeEndian.PutUint32(tx[0:], 1000)
	if idle, err := r.Arm(); idle || !errors.Is(err, ring.ErrCorrupt) || r.Armed() {
		t.Fatalf("Arm with corrupt index = %v, %v, armed %v", idle, err, r.Armed())
	}
	if binary.NativeEndian.Uint32(rx[ArmedOffset:]) != 0 {
		t.Fatal("armed word left set")
	}
	if _, _, err := r.TryPop(); !errors.Is(err, ring.ErrCorrupt) {
		t.Fatalf("TryPop: %v", err)
	}
	if _, err := r.Poll(4, func(Message) {}); !errors.Is(err, ring.ErrCorrupt) {
		t.Fatalf("Poll: %v", err)
	}
	if _, err := NewReceiver(tx, rx[:RxSize-1], 4); !errors.Is(err, ring.ErrLayout) {
		t.Fatalf("short rx: %v", err)
	}
	if _, err := NewSender(tx, rx[:RxSize-1], 4); !errors.Is(err, ring.ErrLayout) {
		t.Fatalf("short rx: %v", err)
	}
}

func BenchmarkPushPop(b *testing.B) {
	s, r, _, _ := newQueue(b, 64)
	m := mustMessage(b, 1, "payload")
	b.ReportAllocs()
	for b.Loop() {
		s.TryPush(m)
		r.TryPop()
	}
}
