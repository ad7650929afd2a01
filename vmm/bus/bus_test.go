package bus

import (
	"errors"
	"sync"
	"testing"
)

type reg struct {
	mu   sync.Mutex
	last uint64
	val  byte
}

func (r *reg) Read(off uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range data {
		data[i] = r.val
	}
}

func (r *reg) Write(off uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.val = off, data[0]
}

func TestBus(t *testing.T) {
	var b Bus
	a, c := &reg{}, &reg{}
	if err := b.Insert(a, 0x100, 8); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(c, 0x108, 8); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]uint64{{0x104, 8}, {0xff, 2}, {0x100, 0x100}} {
		if err := b.Insert(&reg{}, bad[0], bad[1]); !errors.Is(err, ErrOverlap) {
			t.Errorf("Insert(%#x,%#x) = %v", bad[0], bad[1], err)
		}
	}
	if err := b.Insert(&reg{}, ^uint64(0), 2); err == nil {
		t.Error("wrapping range accepted")
	}
	if !b.Write(0x10a, []byte{5}) || c.last != 2 || c.val != 5 {
		t.Errorf("write dispatched to %+v", c)
	}
	d := make([]byte, 2)
	if !b.Read(0x10f, d) || d[0] != 5 {
		t.Errorf("read %v", d)
	}
	if b.Read(0x110, d) || d[0] != 0xff || d[1] != 0xff {
		t.Errorf("unclaimed read %v", d)
	}
	if b.Write(0x50, []byte{1}) {
		t.Error("unclaimed write claimed")
	}
	if !b.Remove(0x100) || b.Remove(0x100) || b.Write(0x100, []byte{1}) {
		t.Error("remove")
	}
}
