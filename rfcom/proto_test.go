package rfcom

import (
	"bytes"
	"errors"
	"testing"

	"rainforest/ficm/queue"
)

func TestWireRoundTrip(t *testing.T) {
	cases := []struct {
		m    queue.Message
		want wire
	}{
		{openMsg(7, 3, MaxFrame), wire{typ: TypeOpen, port: 7, src: 3, window: MaxFrame}},
		{acceptMsg(3, 9, DefaultWindow), wire{typ: TypeAccept, dst: 3, src: 9, window: DefaultWindow}},
		{refuseMsg(3, RefuseNoListener), wire{typ: TypeRefuse, dst: 3, reason: RefuseNoListener}},
		{creditMsg(4, 1000), wire{typ: TypeCredit, dst: 4, credit: 1000}},
		{closeMsg(5), wire{typ: TypeClose, dst: 5}},
	}
	for _, c := range cases {
		got, err := decodeWire(&c.m)
		if err != nil || got.typ != c.want.typ || got.dst != c.want.dst || got.src != c.want.src || got.port != c.want.port ||
			got.window != c.want.window || got.reason != c.want.reason || got.credit != c.want.credit {
			t.Errorf("decode(%#x) = %+v, %v", c.m.Type, got, err)
		}
	}
	f := bytes.Repeat([]byte("0123456789"), 13)
	var re []byte
	for off := 0; off < len(f); {
		m, k := dataMsg(8, f, off)
		w, err := decodeWire(&m)
		if err != nil || w.dst != 8 {
			t.Fatal(err)
		}
		if off == 0 && (w.typ != TypeDataFirst || w.length != len(f) || k != FirstFragmentData) {
			t.Fatalf("first fragment %+v", w)
		}
		re = append(re, w.data...)
		off += k
	}
	if !bytes.Equal(re, f) {
		t.Fatal("fragments do not rebuild the frame")
	}
}

func FuzzDecodeWire(f *testing.F) {
	f.Add(uint8(TypeOpen), uint8(8), []byte{1, 0, 2, 0, 0, 0, 1, 0})
	f.Add(uint8(TypeDataFirst), uint8(6), []byte{1, 0, 9, 0, 'a', 'b'})
	f.Fuzz(func(t *testing.T, typ, n uint8, data []byte) {
		m := queue.Message{Type: typ, Len: n}
		copy(m.Data[:], data)
		w, err := decodeWire(&m)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatal(err)
			}
			return
		}
		if len(w.data) > FragmentData || (w.typ == TypeDataFirst && len(w.data) > w.length) || w.length > MaxFrame {
			t.Fatalf("decoded %+v", w)
		}
	})
}
