package control

import (
	"errors"
	"strings"
	"testing"

	"rainforest/ficm/queue"
)

func TestRoundTrip(t *testing.T) {
	txt, err := Text("héllo")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		m    queue.Message
		want Control
	}{
		{txt, Control{Type: TypeText, Text: "héllo"}},
		{Board(7), Control{Type: TypeBoard, Seq: 7}},
		{Ping(0xDEADBEEF), Control{Type: TypePing, Cookie: 0xDEADBEEF}},
		{Pong(1 << 63), Control{Type: TypePong, Cookie: 1 << 63}},
	} {
		got, err := Decode(c.m)
		if err != nil || got != c.want {
			t.Errorf("Decode(%v) = %+v, %v; want %+v", c.m, got, err, c.want)
		}
		if !IsControl(c.m.Type) || got.String() == "" {
			t.Errorf("type %#x", c.m.Type)
		}
	}
	max := strings.Repeat("x", MaxText)
	if m, err := Text(max); err != nil || m.Len != MaxText {
		t.Fatalf("Text(62) = %v, %v", m, err)
	}
}

func TestErrors(t *testing.T) {
	if _, err := Text(strings.Repeat("x", 63)); !errors.Is(err, ErrTooLong) {
		t.Errorf("Text(63) = %v", err)
	}
	if _, err := Text(""); !errors.Is(err, ErrMalformed) {
		t.Errorf("Text(\"\") = %v", err)
	}
	if _, err := Text("\xff"); !errors.Is(err, ErrMalformed) {
		t.Errorf("Text(invalid) = %v", err)
	}
	bad := []queue.Message{
		{Type: TypeText},
		{Type: TypeText, Len: 1, Data: [62]byte{0xff}},
		{Type: TypeBoard, Len: 7},
		{Type: TypePing, Len: 9},
		{Type: TypePong, Len: 0},
		{Type: 0x44, Len: 8},
		{Type: 0x4F},
		{Type: 0x01, Len: 8},
		{Type: 0x80, Len: 8},
		{Type: TypeText, Len: 200},
	}
	for _, m := range bad {
		if c, err := Decode(m); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%#x len %d) = %+v, %v", m.Type, m.Len, c, err)
		}
	}
	for typ := 0; typ < 256; typ++ {
		if IsControl(uint8(typ)) != (typ >= 0x40 && typ <= 0x4F) {
			t.Errorf("IsControl(%#x)", typ)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(uint8(TypeText), uint8(2), []byte("hi"))
	f.Add(uint8(TypeBoard), uint8(8), []byte{1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(uint8(TypePing), uint8(200), []byte{})
	f.Fuzz(func(t *testing.T, typ, n uint8, data []byte) {
		m := queue.Message{Type: typ, Len: n}
		copy(m.Data[:], data)
		c, err := Decode(m)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if c.Type != typ || !IsControl(typ) {
			t.Fatalf("decoded %+v from type %#x", c, typ)
		}
		// A valid message re-encodes to the same bytes.
		var again queue.Message
		switch c.Type {
		case TypeText:
			again, err = Text(c.Text)
		case TypeBoard:
			again = Board(c.Seq)
		case TypePing:
			again = Ping(c.Cookie)
		case TypePong:
			again = Pong(c.Cookie)
		}
		if err != nil || again.Type != m.Type || again.Len != m.Len || string(again.Payload()) != string(m.Data[:m.Len]) {
			t.Fatalf("re-encoding %+v = %+v, %v", c, again, err)
		}
	})
}
