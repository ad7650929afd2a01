package rfcom

import (
	"errors"
	"testing"
)

// TrySend fills the ring to a peer that does not read, reports false
// without waiting once it is full, and sends again once the peer took a
// message; it checks its arguments as Send does.
func TestTrySend(t *testing.T) {
	g := newGroup(t, 3, []int{2}, Options{})
	a := g.nodes[1]
	sent := 0
	for {
		ok, err := a.TrySend(2, 0x90, []byte{byte(sent)})
		if err != nil {
			t.Fatalf("TrySend %d: %v", sent, err)
		}
		if !ok {
			break
		}
		if sent++; sent > Slots {
			t.Fatalf("TrySend took %d messages into a %d-slot ring", sent, Slots)
		}
	}
	if sent == 0 {
		t.Fatal("TrySend sent nothing into an empty ring")
	}
	if ok, err := a.TrySend(2, 0x90, nil); ok || err != nil {
		t.Fatalf("TrySend on a full ring = %v, %v", ok, err)
	}
	from, m, ok, err := g.eps[2].Recv()
	if err != nil || !ok || from != 1 || m.Type != 0x90 || m.Payload()[0] != 0 {
		t.Fatalf("peer 2 received %d %+v %v %v", from, m, ok, err)
	}
	if ok, err := a.TrySend(2, 0x90, nil); !ok || err != nil {
		t.Fatalf("TrySend after the peer took one = %v, %v", ok, err)
	}

	if _, err := a.TrySend(2, 0x7F, nil); !errors.Is(err, ErrBadType) {
		t.Errorf("TrySend(0x7f) = %v", err)
	}
	if _, err := a.TrySend(2, 0x80, make([]byte, MaxDatagram+1)); !errors.Is(err, ErrTooLong) {
		t.Errorf("TrySend(too long) = %v", err)
	}
	if _, err := a.TrySend(1, 0x80, nil); !errors.Is(err, ErrNoPeer) {
		t.Errorf("TrySend(self) = %v", err)
	}
	g.kill(2)
	if _, err := a.TrySend(2, 0x80, nil); !errors.Is(err, ErrPeerGone) {
		t.Errorf("TrySend(dead) = %v", err)
	}
	a.Close()
	if _, err := a.TrySend(0, 0x80, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("TrySend after Close = %v", err)
	}
}
