package guestmem

import (
	"errors"
	"testing"
)

func TestMemory(t *testing.T) {
	m, err := New(Region{GPA: 0x1000, Data: make([]byte, 0x1000)}, Region{GPA: 0, Data: make([]byte, 0x1000)}, Region{GPA: 1 << 32, Data: make([]byte, 16)})
	if err != nil {
		t.Fatal(err)
	}
	if m.Size() != 0x2010 || m.Regions()[0].GPA != 0 {
		t.Fatalf("size %#x regions %v", m.Size(), m.Regions()[0].GPA)
	}
	if err := m.PutUint64(0xff8, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint64(0xff8); v != 0x1122334455667788 {
		t.Errorf("Uint64 = %#x", v)
	}
	if v, _ := m.Uint16(0xffe); v != 0x1122 {
		t.Errorf("Uint16 = %#x", v)
	}
	if err := m.PutUint32(1<<32+12, 7); err != nil {
		t.Error(err)
	}
	// An access may not straddle two regions, even adjacent ones, nor leave one.
	for _, c := range []struct{ gpa, n uint64 }{{0xffc, 8}, {0x1ffc, 8}, {1<<32 + 12, 8}, {0x5000, 1}, {^uint64(0), 2}, {0, ^uint64(0)}} {
		if _, err := m.Slice(c.gpa, c.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %d) = %v, want ErrOutOfRange", c.gpa, c.n, err)
		}
	}
	buf := make([]byte, 4)
	if err := m.ReadAt(buf, 0x1ffe); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("ReadAt past end: %v", err)
	}
	if err := m.WriteAt([]byte{1, 2}, 0x10); err != nil {
		t.Error(err)
	}
	if s, _ := m.Slice(0x10, 2); s[1] != 2 || cap(s) != 2 {
		t.Errorf("slice %v cap %d", s, cap(s))
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Region{GPA: 0, Data: make([]byte, 0x2000)}, Region{GPA: 0x1000, Data: make([]byte, 1)}); err == nil {
		t.Error("overlap accepted")
	}
	if _, err := New(Region{GPA: 0}); err == nil {
		t.Error("empty region accepted")
	}
}

func TestInaccessible(t *testing.T) {
	open := false
	m, err := New(Region{GPA: 0x1000, Data: make([]byte, 0x1000), Accessible: func(off, n uint64) bool { return open && off >= 0x800 }})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	if err := m.ReadAt(b, 0x1900); !errors.Is(err, ErrInaccessible) || !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read of an inaccessible part: %v", err)
	}
	open = true
	if err := m.ReadAt(b, 0x1900); err != nil {
		t.Fatalf("read of an accessible part: %v", err)
	}
	if err := m.WriteAt(b, 0x1000); !errors.Is(err, ErrInaccessible) {
		t.Fatalf("write below the accessible part: %v", err)
	}
}
