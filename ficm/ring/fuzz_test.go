package ring

import (
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzRingHeaders puts arbitrary bytes into the index words and slots, and
// drives both sides through a random mix of operations and further index
// corruption. No operation may panic or loop, and every operation that reads
// a peer index must report ErrCorrupt exactly when that index is impossible.
func FuzzRingHeaders(f *testing.F) {
	f.Add(uint8(3), uint32(0), uint32(0), []byte{0, 1, 0, 1, 6, 7}, []byte{1, 2, 3})
	f.Add(uint8(0), uint32(1<<32-1), uint32(1<<32-1), []byte{0, 0, 1, 1, 2, 3, 4, 5}, []byte{})
	f.Add(uint8(4), uint32(5), uint32(1000), []byte{1, 0, 4, 5}, []byte{0xFF})
	f.Add(uint8(20), uint32(17), uint32(9), []byte{2, 1, 3, 0, 6, 7, 4, 5}, make([]byte, 64))
	f.Fuzz(func(t *testing.T, slotsLog uint8, prod, cons uint32, ops, garbage []byte) {
		slots := 1 << (slotsLog % 7) // keep memory small: 1..64 slots
		tx := AlignedBytes(TxSize(slots))
		rx := AlignedBytes(RxSize)
		for i := range tx {
			if len(garbage) > 0 {
				tx[i] = garbage[i%len(garbage)]
			}
		}
		for i := range rx {
			if len(garbage) > 0 {
				rx[i] = garbage[(i*7)%len(garbage)]
			}
		}
		binary.NativeEndian.PutUint32(tx[prodOffset:], prod)
		binary.NativeEndian.PutUint32(rx[consOffset:], cons)
		p, err := NewProducer(tx, rx, slots)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewConsumer(tx, rx, slots)
		if err != nil {
			t.Fatal(err)
		}
		n := uint32(slots)
		prodMem := func() uint32 { return binary.NativeEndian.Uint32(tx[prodOffset:]) }
		consMem := func() uint32 { return binary.NativeEndian.Uint32(rx[consOffset:]) }
		var dst [SlotSize]byte
		for i, op := range ops {
			v := uint32(i) * 0x9E3779B9
			if i < len(garbage) {
				v ^= uint32(garbage[i]) << (8 * (i % 4))
			}
			switch op % 8 {
			case 0:
				if _, err := p.TryPush(garbage[:min(len(garbage), SlotSize)]); err != nil && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("TryPush: %v", err)
				}
			case 1:
				if _, err := c.TryPop(&dst); err != nil && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("TryPop: %v", err)
				}
			case 2: // the producer's peer (or anyone) scribbles on the producer index
				binary.NativeEndian.PutUint32(tx[prodOffset:], prodMem()+v%(2*n+2)-n-1)
			case 3:
				binary.NativeEndian.PutUint32(rx[consOffset:], v)
			case 4:
				got, err := c.Pending()
				bad := prodMem()-c.cons > n
				if bad != errors.Is(err, ErrCorrupt) || (!bad && uint32(got) != prodMem()-c.cons) {
					t.Fatalf("Pending = %d, %v with prod %d cons %d slots %d", got, err, prodMem(), c.cons, n)
				}
			case 5:
				got, err := p.Free()
				bad := p.prod-consMem() > n
				if bad != errors.Is(err, ErrCorrupt) || (!bad && uint32(got) != n-(p.prod-consMem())) {
					t.Fatalf("Free = %d, %v with prod %d cons %d slots %d", got, err, p.prod, consMem(), n)
				}
			case 6:
				k, err := p.Reserve(int(v % (2 * n)))
				if err != nil && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Reserve: %v", err)
				}
				for j := range k {
					p.Slot(j)[j%SlotSize] = byte(j)
				}
				p.Commit(k / 2)
			case 7:
				k, err := c.Peek(int(v % (2 * n)))
				if err != nil && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Peek: %v", err)
				}
				for j := range k {
					dst = *c.Slot(j)
				}
				c.Release(k - k/2)
			}
			// The validated cached views must stay within the ring.
			if c.prod-c.cons > n || p.prod-p.cons > n {
				t.Fatalf("cached view outside ring: consumer %d..%d producer %d..%d", c.cons, c.prod, p.cons, p.prod)
			}
		}
	})
}
