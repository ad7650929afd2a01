package vhostuser

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecodeReply feeds arbitrary bytes as the back end's answer to an
// arbitrary request: a header (ParseHeader) and whatever follows as the
// payload, checked by DecodeReply. Whatever the bytes:
//   - nothing panics, and every refusal wraps ErrProtocol;
//   - a header announcing more than MaxPayload is refused before any
//     payload would be read;
//   - an accepted reply re-encodes (EncodeReply) to exactly the bytes
//     given, so nothing in it went unchecked.
func FuzzDecodeReply(f *testing.F) {
	f.Add(uint32(GetFeatures), false, EncodeReply(Reply{Request: GetFeatures, Value: 1 << 32}, false))
	f.Add(uint32(GetVringBase), false, EncodeReply(Reply{Request: GetVringBase, State: VringState{Index: 1, Num: 9}}, false))
	f.Add(uint32(SetMemTable), true, EncodeReply(Reply{Request: SetMemTable}, true))
	f.Add(uint32(GetQueueNum), false, []byte{17, 0, 0, 0, 5, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF})
	f.Add(uint32(GetFeatures), false, []byte{1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 1, 2, 3})
	f.Fuzz(func(t *testing.T, req uint32, ack bool, data []byte) {
		h, err := ParseHeader(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("header error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if h.Size > MaxPayload {
			t.Fatalf("header of %d payload bytes accepted", h.Size)
		}
		m := Message{Header: h, Payload: data[HeaderSize:]}
		r, err := DecodeReply(Request(req), ack, m)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("reply error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if r.Request != Request(req) {
			t.Fatalf("reply to %v accepted for %v", r.Request, Request(req))
		}
		// Reserved flag bits are not ours to check; compare the rest.
		again := EncodeReply(r, ack)
		got := append([]byte(nil), data...)
		copy(got[4:8], again[4:8])
		if !bytes.Equal(again, got) {
			t.Fatalf("accepted % x, which re-encodes as % x", data, again)
		}
	})
}
