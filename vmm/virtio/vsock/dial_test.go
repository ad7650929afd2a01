package vsock

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
)

// fakeDevice serves the device's side of the CONNECT exchange on a Unix
// socket: answer decides the reply to a port ("" closes).
func fakeDevice(t *testing.T, answer func(line string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				a := answer(line[:len(line)-1])
				if a == "" {
					return
				}
				c.Write([]byte(a + "\nhello"))
				buf := make([]byte, 1)
				c.Read(buf)
			}()
		}
	}()
	return path
}

func TestDialOK(t *testing.T) {
	path := fakeDevice(t, func(line string) string {
		if line != "CONNECT 1024" {
			return "bad"
		}
		return "OK 1073741824"
	})
	c, err := Dial(context.Background(), path, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("stream after OK: %q %v", buf, err)
	}
}

func TestDialRefused(t *testing.T) {
	path := fakeDevice(t, func(string) string { return "" })
	if _, err := Dial(context.Background(), path, 1024); !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want ErrRefused", err)
	}
}

func TestDialBadAnswer(t *testing.T) {
	path := fakeDevice(t, func(string) string { return "NO" })
	if _, err := Dial(context.Background(), path, 1024); err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want a bad-answer error", err)
	}
}

func TestDialCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		c, err := ln.Accept() // never answers
		if err == nil {
			cancel()
			defer c.Close()
			buf := make([]byte, 64)
			c.Read(buf)
		}
	}()
	if _, err := Dial(ctx, path, 1024); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestParseOK(t *testing.T) {
	if p, err := ParseOK("OK 7"); err != nil || p != 7 {
		t.Fatal(p, err)
	}
	for _, bad := range []string{"", "OK", "OK x", "ok 1", "OK 99999999999"} {
		if _, err := ParseOK(bad); err == nil {
			t.Errorf("ParseOK(%q) accepted", bad)
		}
	}
}
