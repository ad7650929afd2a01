package agentproto

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzDecode feeds any byte stream to the host's reader, as a guest could.
// Whatever comes in:
//   - reading and decoding never panics, and every error is one of the
//     package's (a bounded frame, a malformed or unknown message) or the
//     stream's end;
//   - a message Decode accepts passes Encode's validation, and encoding
//     is canonical: decoding its encoding and encoding again gives the
//     same bytes.
func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		fr, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := AppendFrame(nil, fr)
		f.Add(b)
	}
	f.Add(append(frameHeader(MaxFrame+1, TypeStats), '{'))
	f.Add(append(frameHeader(12, TypeStats), []byte(`{"cpus":[{}]}`)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("ReadFrame: unexpected error %v", err)
				}
				return
			}
			m, err := Decode(fr)
			if err != nil {
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownType) {
					t.Fatalf("Decode: unexpected error %v", err)
				}
				continue
			}
			enc, err := Encode(m)
			if err != nil {
				t.Fatalf("Encode of an accepted %s: %v", fr.Type, err)
			}
			m2, err := Decode(enc)
			if err != nil {
				t.Fatalf("Decode of a re-encoded %s: %v (%q)", fr.Type, err, enc.Body)
			}
			enc2, err := Encode(m2)
			if err != nil || enc2.Type != enc.Type || !bytes.Equal(enc2.Body, enc.Body) {
				t.Fatalf("encoding not canonical: %q then %q (%v)", enc.Body, enc2.Body, err)
			}
		}
	})
}
