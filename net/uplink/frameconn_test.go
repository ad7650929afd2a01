package uplink

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// exchange sends a frame each way between a and b and a frame too long
// for the reader's buffer, then closes a and sees b read the end.
func exchange(t *testing.T, a, b FrameConn) {
	t.Helper()
	buf := make([]byte, 64)
	for _, c := range []struct{ from, to FrameConn }{{a, b}, {b, a}} {
		if err := c.from.WriteFrame([]byte("one frame")); err != nil {
			t.Fatal(err)
		}
		if err := c.from.WriteFrame([]byte("and another")); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"one frame", "and another"} {
			n, err := c.to.ReadFrame(buf)
			if err != nil || string(buf[:n]) != want {
				t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
			}
		}
	}
	if err := a.WriteFrame(bytes.Repeat([]byte{1}, 100)); err != nil {
		t.Fatal(err)
	}
	a.WriteFrame([]byte("after"))
	if _, err := b.ReadFrame(buf); !errors.Is(err, ErrFrameTooLong) {
		t.Fatalf("a frame over the buffer: %v, want ErrFrameTooLong", err)
	}
	if n, err := b.ReadFrame(buf); err != nil || string(buf[:n]) != "after" {
		t.Fatalf("the frame after a dropped one: %q, %v", buf[:n], err)
	}
	a.Close()
	if _, err := b.ReadFrame(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}
	b.Close()
}

func TestPipe(t *testing.T) {
	a, b := Pipe(4)
	exchange(t, a, b)
	if err := a.WriteFrame([]byte("x")); !errors.Is(err, ErrPipeClosed) {
		t.Errorf("write after close: %v", err)
	}
}

func TestSeqpacketPair(t *testing.T) {
	fa, fb, err := SeqpacketPair()
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewSeqpacketConn(fa)
	fa.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewSeqpacketConn(fb)
	fb.Close()
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, a, b)
}

func TestSeqpacketPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "frames.sock")
	l, err := ListenSeqpacket(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := DialSeqpacket(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, a, b)
	// Accept ends with its context.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := l.Accept(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Accept with an ended context: %v", err)
	}
	l.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket path is left behind: %v", err)
	}
	if _, err := ListenSeqpacket(filepath.Join(t.TempDir(), "no", "such", "dir.sock")); err == nil {
		t.Error("listened in a missing directory")
	}
}

func TestNewSeqpacketConnRefusesOtherFiles(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := NewSeqpacketConn(f); err == nil {
		t.Error("/dev/null taken as a frame socket")
	}
}
