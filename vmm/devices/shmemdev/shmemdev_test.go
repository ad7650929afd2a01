package shmemdev

import (
	"errors"
	"testing"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/shmem/abi"
)

// The memory BAR is split into runs by access: state table read-only,
// read-write section, own output read-write, the others read-only, with
// adjacent runs of the same access merged.
func TestPieces(t *testing.T) {
	l := abi.Layout{Peers: 4, RWSize: 8192, OutputSize: 4096}
	got := Pieces(l, 2, false)
	want := []Piece{
		{Offset: 0, Size: 4096, ReadOnly: true},
		{Offset: 4096, Size: 8192},
		{Offset: l.OutputOffset(0), Size: 2 * 4096, ReadOnly: true},
		{Offset: l.OutputOffset(2), Size: 4096},
		{Offset: l.OutputOffset(3), Size: 4096, ReadOnly: true},
	}
	if len(got) != len(want) {
		t.Fatalf("pieces %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("piece %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if got := Pieces(abi.Layout{Peers: 2, OutputSize: 4096}, 0, false); len(got) != 3 || got[1].ReadOnly || got[1].Size != 4096 {
		t.Errorf("peer 0 of 2: %+v", got)
	}
	// A read-only grant of a segment maps its read-write section read-only.
	if got := Pieces(abi.Layout{Peers: 2, RWSize: 8192, OutputSize: 4096}, 0, true); len(got) != 3 || !got[0].ReadOnly || got[0].Size != 4096+8192 || got[1].ReadOnly {
		t.Errorf("read-only segment pieces %+v", got)
	}
}

// Bad configurations are refused with ErrConfig before anything is made.
func TestNewRejects(t *testing.T) {
	l := abi.Layout{Peers: 2, OutputSize: 4096}
	region := make([]byte, l.Size())
	ev, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	for _, c := range []Config{
		{ID: 0, Layout: abi.Layout{Peers: 0, OutputSize: 4096}, Region: region, Vectors: 1},
		{ID: 0, Layout: l, Region: region[:4096], Vectors: 1},
		{ID: 0, Layout: l, Region: region, Vectors: 0},
		{ID: 0, Layout: l, Region: region, Vectors: 65},
		{ID: 2, Layout: l, Region: region, Vectors: 1},
		{ID: 0, Layout: l, Region: region, Vectors: 2, Incoming: []*eventfd.EventFD{ev}},
		{ID: 0, Layout: l, Region: region, Vectors: 1, Peers: []PeerDoorbells{{Peer: 1, Vectors: []*eventfd.EventFD{nil}}}},
		{ID: 0, Layout: l, Region: region, Vectors: 1, Peers: []PeerDoorbells{{Peer: 2, Vectors: []*eventfd.EventFD{ev}}}},
	} {
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v, want ErrConfig", c.Layout, err)
		}
	}
}
