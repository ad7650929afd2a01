package consolesock

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestConsoleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.sock")
	var mu sync.Mutex
	var typed bytes.Buffer
	s, err := Listen(context.Background(), path, func(b []byte) { mu.Lock(); typed.Write(b); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for s.Clients() != 1 {
		time.Sleep(time.Millisecond)
	}
	s.Write([]byte("login: "))
	buf := make([]byte, 7)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "login: " {
		t.Fatalf("client read %q, %v", buf, err)
	}
	c.Write([]byte("root\n"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := typed.String()
		mu.Unlock()
		if got == "root\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest input %q", got)
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	os.WriteFile(path, []byte("x"), 0o644)
	if _, err := Listen(context.Background(), path, nil); err == nil {
		t.Fatal("replaced a regular file")
	}
}

func TestAttach(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	got := make(chan []byte, 1)
	s, err := Listen(context.Background(), path, func(b []byte) { got <- b })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Attach(ctx, path, bytes.NewReader([]byte("x")), &out) }()
	select {
	case b := <-got:
		if string(b) != "x" {
			t.Errorf("input %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no input")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("attach: %v", err)
	}
}

// A listener made elsewhere (a jailed VMM receives it as a descriptor)
// is served the same way; Close leaves its path to its maker.
func TestServeGivenListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.sock")
	ln, err := NewListener(path)
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false) // the maker keeps the path
	f, err := ln.File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	fl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	typed := make(chan []byte, 1)
	s := Serve(context.Background(), fl.(*net.UnixListener), func(b []byte) { typed <- b })
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	if got := <-typed; string(got) != "x" {
		t.Errorf("input %q", got)
	}
	c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("socket removed by a server that did not make it: %v", err)
	}
}

func TestNewListenerRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	os.WriteFile(path, nil, 0o600)
	if _, err := NewListener(path); err == nil {
		t.Fatal("replaced a regular file")
	}
}
