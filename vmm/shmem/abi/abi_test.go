package abi

import (
	"errors"
	"testing"
)

func TestLayout(t *testing.T) {
	l := Layout{Peers: 3, RWSize: 4096, OutputSize: 8192}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if l.StateTableSize() != 4096 || l.RWOffset() != 4096 || l.OutputOffset(0) != 8192 || l.OutputOffset(2) != 8192+2*8192 || l.Size() != 8192+3*8192 {
		t.Errorf("layout offsets: st %d rw %d out0 %d out2 %d size %d", l.StateTableSize(), l.RWOffset(), l.OutputOffset(0), l.OutputOffset(2), l.Size())
	}
	if l.BARSize() != 32768 {
		t.Errorf("BAR size %d", l.BARSize())
	}
	// 1025 peers need two pages of state table.
	if big := (Layout{Peers: 1025, OutputSize: 4096}); big.StateTableSize() != 8192 || big.OutputOffset(0) != 8192 {
		t.Errorf("state table of %d peers: %d bytes", big.Peers, big.StateTableSize())
	}
	for _, bad := range []Layout{
		{Peers: 0, OutputSize: 4096},
		{Peers: 2, OutputSize: 100},
		{Peers: 2, OutputSize: 0},
		{Peers: 2, OutputSize: 4096, RWSize: 10},
		{Peers: MaxPeers + 1, OutputSize: 4096},
		{Peers: 2, OutputSize: 2 << 40},
		{Peers: 2, OutputSize: 4096, RWSize: 2 << 40},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrLayout) {
			t.Errorf("%+v accepted", bad)
		}
	}
	// The largest valid layout's arithmetic does not overflow.
	huge := Layout{Peers: MaxPeers, RWSize: maxSection, OutputSize: maxSection}
	if err := huge.Validate(); err != nil || huge.Size() <= huge.OutputOffset(MaxPeers-1) || huge.BARSize() < huge.Size() {
		t.Errorf("largest layout: %v, size %d, BAR %d", err, huge.Size(), huge.BARSize())
	}
}

func TestRegisterFields(t *testing.T) {
	if v := Doorbell(3, 2); v != 0x0003_0002 {
		t.Errorf("Doorbell(3, 2) = %#x", v)
	}
	if v := Doorbell(MaxPeers-1, MaxVector); v>>DoorbellPeerShift != MaxPeers-1 || v&DoorbellVectorMask != MaxVector {
		t.Errorf("Doorbell(%d, %d) = %#x", MaxPeers-1, MaxVector, v)
	}
	if StateEntryOffset(5) != 20 {
		t.Errorf("state entry of peer 5 at %d", StateEntryOffset(5))
	}
	if CapLength != 60 || CapName+NameSize > 0xFF {
		t.Errorf("capability length %d", CapLength)
	}
	if MSIXPBAOffset >= MSIXBARSize || MaxVectors*16 > MSIXPBAOffset {
		t.Errorf("MSI-X table of %d vectors does not fit before the PBA at %#x", MaxVectors, MSIXPBAOffset)
	}
}
