package consolesock

import (
	"rainforest/internal/peercred"

	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// serve starts a Server on a fresh socket with opt.
func serve(t *testing.T, input func([]byte), opt Options) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Serve(context.Background(), ln, input, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond; the test's own timeout bounds it.
func waitFor(cond func() bool) {
	for !cond() {
		time.Sleep(time.Millisecond)
	}
}

// A client that never reads does not slow the guest: every Write returns
// (it only copies into buffers), the stuck client is dropped once its
// buffer is full, and a client that reads gets everything in order.
func TestStuckClientDoesNotStallWrite(t *testing.T) {
	s, path := serve(t, nil, Options{BufferSize: 64 << 10})
	stuck := dial(t, path)
	good := dial(t, path)
	waitFor(func() bool { return s.Clients() == 2 })

	chunk := make([]byte, 32<<10)
	const total = 32 << 20
	var want bytes.Buffer
	got := make([]byte, 0, total)
	buf := make([]byte, 64<<10)
	for i := 0; want.Len() < total; i++ {
		for j := range chunk {
			chunk[j] = byte(i + j/251)
		}
		if n, err := s.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		want.Write(chunk)
		for len(got) < want.Len() { // lockstep with the good client only
			n, err := good.Read(buf)
			if err != nil {
				t.Fatalf("good client: %v after %d bytes", err, len(got))
			}
			got = append(got, buf[:n]...)
		}
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("good client's stream differs")
	}
	if st := s.Stats(); st.Dropped != 1 {
		t.Fatalf("stats %+v: the stuck client is not dropped", st)
	}
	waitFor(func() bool { return s.Clients() == 1 }) // its goroutines detach it
	// The stuck client got a prefix of the stream, then (if its socket
	// took it) the notice, then EOF.
	rest, err := io.ReadAll(stuck)
	if err != nil {
		t.Fatal(err)
	}
	const notice = "\r\n[rfm: console client too slow; disconnected]\r\n"
	rest = bytes.TrimSuffix(rest, []byte(notice))
	if len(rest) >= total || !bytes.HasPrefix(want.Bytes(), rest) {
		t.Errorf("stuck client read %d bytes, not a prefix of the stream", len(rest))
	}
}

// Connections beyond MaxClients are told why and closed.
func TestTooManyClients(t *testing.T) {
	s, path := serve(t, nil, Options{MaxClients: 2})
	dial(t, path)
	dial(t, path)
	waitFor(func() bool { return s.Clients() == 2 })
	extra := dial(t, path)
	b, err := io.ReadAll(extra)
	if err != nil || !strings.Contains(string(b), "too many console clients") {
		t.Errorf("extra client read %q, %v", b, err)
	}
	if st := s.Stats(); st.Clients != 2 || st.Refused != 1 {
		t.Errorf("stats %+v", st)
	}
	s.Write([]byte("still here"))
}

// Allow sees the peer's credentials and may refuse it.
func TestAllow(t *testing.T) {
	type cred struct {
		uid, gid uint32
		pid      int32
	}
	seen := make(chan cred, 1)
	s, path := serve(t, nil, Options{Allow: func(c peercred.Cred) bool {
		seen <- cred{c.UID, c.GID, c.PID}
		return false
	}})
	c := dial(t, path)
	b, err := io.ReadAll(c)
	if err != nil || !strings.Contains(string(b), "refused") {
		t.Errorf("refused client read %q, %v", b, err)
	}
	if got := <-seen; got != (cred{uint32(os.Getuid()), uint32(os.Getgid()), int32(os.Getpid())}) {
		t.Errorf("Allow got %+v", got)
	}
	if st := s.Stats(); st.Clients != 0 || st.Refused != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Input beyond the burst waits for the rate and arrives whole and in
// order.
func TestInputPaced(t *testing.T) {
	var mu sync.Mutex
	var typed bytes.Buffer
	_, path := serve(t, func(b []byte) { mu.Lock(); typed.Write(b); mu.Unlock() }, Options{InputRate: 64 << 10})
	c := dial(t, path)
	msg := bytes.Repeat([]byte("0123456789"), 2000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	waitFor(func() bool { mu.Lock(); defer mu.Unlock(); return typed.Len() >= len(msg) })
	if !bytes.Equal(typed.Bytes(), msg) {
		t.Error("input differs")
	}
}

func TestServeRefusesOptions(t *testing.T) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Serve(context.Background(), ln, nil, Options{MaxClients: -1}); !errors.Is(err, ErrOptions) {
		t.Errorf("negative MaxClients: %v", err)
	}
}

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

// A listener made elsewhere (a jailed VMM receives it as a descriptor)
// is served the same way; Close leaves its path to its maker.
func TestServeGivenListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.sock")
	ln, err := NewListener(path, peercred.NoGroup)
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
	s, err := Serve(context.Background(), fl.(*net.UnixListener), func(b []byte) { typed <- b }, Options{})
	if err != nil {
		t.Fatal(err)
	}
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
	if _, err := NewListener(path, peercred.NoGroup); err == nil {
		t.Fatal("replaced a regular file")
	}
}
