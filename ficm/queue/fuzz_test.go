package queue

import (
	"encoding/binary"
	"errors"
	"testing"

	"rainforest/ficm/ring"
)

// FuzzReceiveGarbage fills a queue's shared memory (indices, armed word and
// slots) with arbitrary bytes and checks that receiving and sending never
// panic, that every received message has a valid length, and that the only
// errors are ring.ErrCorrupt and ErrBadFrame.
func FuzzReceiveGarbage(f *testing.F) {
	f.Add(uint32(3), uint32(0), []byte{1, 5, 'h', 'e', 'l', 'l', 'o'})
	f.Add(uint32(1<<32-1), uint32(1<<32-3), []byte{0, 200})
	f.Add(uint32(9), uint32(0), []byte{})
	f.Fuzz(func(t *testing.T, prod, cons uint32, garbage []byte) {
		const slots = 8
		tx := ring.AlignedBytes(TxSize(slots))
		rx := ring.AlignedBytes(RxSize)
		if len(garbage) > 0 {
			for i := range tx {
				tx[i] = garbage[i%len(garbage)]
			}
			for i := range rx {
				rx[i] = garbage[(i*3)%len(garbage)]
			}
		}
		binary.NativeEndian.PutUint32(tx, prod)
		binary.NativeEndian.PutUint32(rx, cons)
		s, err := NewSender(tx, rx, slots)
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewReceiver(tx, rx, slots)
		if err != nil {
			t.Fatal(err)
		}
		ok := func(err error) bool {
			return err == nil || errors.Is(err, ring.ErrCorrupt) || errors.Is(err, ErrBadFrame)
		}
		dst := make([]Message, 3)
		for range 2 * slots {
			n, err := r.PopBatch(dst)
			if !ok(err) {
				t.Fatalf("PopBatch: %v", err)
			}
			for _, m := range dst[:n] {
				if m.Len > MaxPayload {
					t.Fatalf("received length %d", m.Len)
				}
			}
			if _, err := r.Poll(2, func(m Message) {
				if m.Len > MaxPayload {
					t.Fatalf("polled length %d", m.Len)
				}
			}); !ok(err) {
				t.Fatalf("Poll: %v", err)
			}
			if _, err := r.Arm(); !ok(err) {
				t.Fatalf("Arm: %v", err)
			}
			r.Disarm()
			if _, _, err := s.PushBatch(dst[:1]); !ok(err) {
				t.Fatalf("PushBatch: %v", err)
			}
		}
	})
}
