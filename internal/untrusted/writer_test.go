package untrusted

import (
	"bytes"
	"testing"
)

// Text escaped in pieces, cut anywhere, reads as the whole escaped at
// once.
func TestEscapeWriterPieces(t *testing.T) {
	in := []byte("ok\r\nünï \u202e\x1b[2J\xff\xfe tail é\r\nend\r")
	want := EscapeTerminal(in)
	for cut := 0; cut <= len(in); cut++ {
		for cut2 := cut; cut2 <= len(in); cut2++ {
			var out bytes.Buffer
			w := NewEscapeWriter(&out)
			for _, p := range [][]byte{in[:cut], in[cut:cut2], in[cut2:]} {
				if n, err := w.Write(p); err != nil || n != len(p) {
					t.Fatalf("write: %d, %v", n, err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("cut at %d and %d: %q, want %q", cut, cut2, out.Bytes(), want)
			}
		}
	}
}
