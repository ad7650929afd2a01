package vhostuser

import (
	"bytes"
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Request: SetVringAddr, Flags: flagVersion | FlagNeedReply, Size: 40}
	b := h.Encode()
	want := []byte{9, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("encoded %v, want %v", b, want)
	}
	got, err := ParseHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("parsed %+v, %v; want %+v", got, err, h)
	}
}

func TestParseHeaderRefuses(t *testing.T) {
	for name, b := range map[string][]byte{
		"short":     {1, 0, 0, 0, 1, 0, 0},
		"version 0": {1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0},
		"version 2": {1, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0},
		"too large": {1, 0, 0, 0, 1, 0, 0, 0, 0x01, 0x10, 0, 0},
		"huge":      {1, 0, 0, 0, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF},
	} {
		if _, err := ParseHeader(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: got %v, want ErrProtocol", name, err)
		}
	}
}

func TestPayloadEncodings(t *testing.T) {
	a := VringAddr{Index: 1, Flags: 0, Desc: 0x1000, Used: 0x3000, Avail: 0x2000, Log: 0}
	b := a.Encode()
	if len(b) != 40 {
		t.Fatalf("vring address of %d bytes", len(b))
	}
	// The specification's order: descriptor, used, available, log.
	if b[8+1] != 0x10 || b[16+1] != 0x30 || b[24+1] != 0x20 {
		t.Fatalf("vring address layout % x", b)
	}
	if got, err := ParseVringAddr(b); err != nil || got != a {
		t.Fatalf("round trip %+v %v", got, err)
	}
	s := VringState{Index: 3, Num: 256}
	if got, err := ParseVringState(s.Encode()); err != nil || got != s {
		t.Fatalf("vring state round trip %+v %v", got, err)
	}
	regions := []MemoryRegion{{GPA: 0, Size: 1 << 20, UserAddr: 0x7f00_0000_0000, MmapOffset: 0}, {GPA: 1 << 32, Size: 2 << 20, UserAddr: 0x7f00_1000_0000, MmapOffset: 1 << 20}}
	mt, err := EncodeMemoryTable(regions)
	if err != nil {
		t.Fatal(err)
	}
	if len(mt) != 8+2*32 || mt[0] != 2 {
		t.Fatalf("memory table % x", mt)
	}
	back, err := ParseMemoryTable(mt)
	if err != nil || len(back) != 2 || back[0] != regions[0] || back[1] != regions[1] {
		t.Fatalf("memory table round trip %+v %v", back, err)
	}
	if _, err := EncodeMemoryTable(make([]MemoryRegion, MaxMemoryRegions+1)); err == nil {
		t.Fatal("a memory table of 9 regions was encoded")
	}
	if _, err := ParseMemoryTable(append(mt, 0)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("memory table with a trailing byte: %v", err)
	}
	idx, hasFD, err := ParseVringFile(EncodeU64(vringFile(5, false)))
	if err != nil || idx != 5 || hasFD {
		t.Fatalf("vring file %d %v %v", idx, hasFD, err)
	}
	if _, _, err := ParseVringFile(EncodeU64(1 << 9)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("vring file with reserved bits: %v", err)
	}
}

func reply(req Request, flags uint32, payload []byte) Message {
	return Message{Header: Header{Request: req, Flags: flags, Size: uint32(len(payload))}, Payload: payload}
}

func TestDecodeReply(t *testing.T) {
	r, err := DecodeReply(GetFeatures, false, reply(GetFeatures, 5, EncodeU64(0x1_4000_0000)))
	if err != nil || r.Value != 0x1_4000_0000 {
		t.Fatalf("GET_FEATURES: %+v %v", r, err)
	}
	r, err = DecodeReply(GetVringBase, false, reply(GetVringBase, 5, VringState{Index: 1, Num: 7}.Encode()))
	if err != nil || r.State != (VringState{Index: 1, Num: 7}) {
		t.Fatalf("GET_VRING_BASE: %+v %v", r, err)
	}
	r, err = DecodeReply(SetMemTable, true, reply(SetMemTable, 5, EncodeU64(0)))
	if err != nil || r.Value != 0 {
		t.Fatalf("ack: %+v %v", r, err)
	}
	bad := map[string]struct {
		req Request
		ack bool
		m   Message
	}{
		"not a reply":      {GetFeatures, false, reply(GetFeatures, 1, EncodeU64(0))},
		"other request":    {GetFeatures, false, reply(GetQueueNum, 5, EncodeU64(0))},
		"unknown request":  {GetFeatures, false, reply(Request(999), 5, EncodeU64(0))},
		"short u64":        {GetFeatures, false, reply(GetFeatures, 5, []byte{1, 2, 3})},
		"long u64":         {GetQueueNum, false, reply(GetQueueNum, 5, make([]byte, 16))},
		"size mismatch":    {GetFeatures, false, Message{Header: Header{Request: GetFeatures, Flags: 5, Size: 16}, Payload: make([]byte, 8)}},
		"bad version":      {GetFeatures, false, reply(GetFeatures, 6, EncodeU64(0))},
		"state too short":  {GetVringBase, false, reply(GetVringBase, 5, make([]byte, 4))},
		"no reply owed":    {SetMemTable, false, reply(SetMemTable, 5, EncodeU64(0))},
		"descriptors":      {GetFeatures, false, Message{Header: Header{Request: GetFeatures, Flags: 5, Size: 8}, Payload: make([]byte, 8), FDs: []int{-1}}},
		"ack with no body": {SetOwner, true, reply(SetOwner, 5, nil)},
	}
	for name, c := range bad {
		if _, err := DecodeReply(c.req, c.ack, c.m); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: got %v, want ErrProtocol", name, err)
		}
	}
}

func TestRequestNames(t *testing.T) {
	if SetVringKick.String() != "SET_VRING_KICK" || Request(77).String() != "request 77" {
		t.Fatalf("names %q %q", SetVringKick, Request(77))
	}
}
