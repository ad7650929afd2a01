package consoleclient_test

import (
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

	// creack/pty opens a pseudo-terminal pair for tests: the real raw-mode
	// and escape-key path needs a terminal, which go test does not have.
	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"rainforest/rfm/consoleclient"
	"rainforest/vmm/consolesock"
)

// fakeConsole is a console socket that records what its one client sends.
type fakeConsole struct {
	path string
	ln   net.Listener
	conn chan net.Conn
	mu   sync.Mutex
	got  bytes.Buffer
	more chan struct{} // signalled on every received chunk
	done chan struct{} // closed when the client's connection ends
}

func newFakeConsole(t *testing.T) *fakeConsole {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeConsole{path: path, ln: ln, conn: make(chan net.Conn, 1), more: make(chan struct{}, 1), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			close(f.done)
			return
		}
		f.conn <- c
		defer close(f.done)
		buf := make([]byte, 256)
		for {
			n, err := c.Read(buf)
			f.mu.Lock()
			f.got.Write(buf[:n])
			f.mu.Unlock()
			select {
			case f.more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		select {
		case c := <-f.conn:
			c.Close()
		default:
		}
		wg.Wait()
	})
	return f
}

func (f *fakeConsole) received() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got.String()
}

// waitReceived waits until the client has sent want (or its connection
// ended) and returns all it sent.
func (f *fakeConsole) waitReceived(want string) string {
	for {
		if s := f.received(); strings.Contains(s, want) {
			return s
		}
		select {
		case <-f.more:
		case <-f.done:
			return f.received()
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPipedInput: input that is not a terminal is forwarded byte for byte
// (0x03 and 0x1d included: no escape character), its end does not detach,
// and the console's output is copied until the console closes.
func TestPipedInput(t *testing.T) {
	for _, kind := range []string{"file", "reader"} {
		t.Run(kind, func(t *testing.T) {
			f := newFakeConsole(t)
			const typed = "echo hi\n\x03\x1dmore\n"
			var in io.Reader = strings.NewReader(typed)
			if kind == "file" {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				w.WriteString(typed)
				w.Close()
				in = r
			}
			var out, msgs syncBuffer
			type result struct {
				end consoleclient.Ending
				err error
			}
			res := make(chan result, 1)
			go func() {
				end, err := consoleclient.Attach(context.Background(), f.path, "subOS web", consoleclient.Streams{In: in, Out: &out, Messages: &msgs})
				res <- result{end, err}
			}()
			if got := f.waitReceived(typed); got != typed {
				t.Fatalf("console received %q, want %q", got, typed)
			}
			c := <-f.conn
			c.Write([]byte("hi\r\n"))
			c.Close()
			r := <-res
			if r.err != nil || r.end != consoleclient.Closed {
				t.Fatalf("Attach = %v, %v; want closed, nil", r.end, r.err)
			}
			if out.String() != "hi\r\n" {
				t.Errorf("output %q, want the console's bytes", out.String())
			}
			if m := msgs.String(); !strings.HasPrefix(m, "Connected to subOS web\n") || !strings.Contains(m, "Console of subOS web closed") {
				t.Errorf("messages %q: want a banner and a parting line", m)
			}
		})
	}
}

// TestCanceled: the context ending ends the session, even while input
// waits (a terminal nobody types on).
func TestCanceled(t *testing.T) {
	f := newFakeConsole(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bannerSeen := make(signalWriter, 1)
	res := make(chan consoleclient.Ending, 1)
	go func() {
		end, _ := consoleclient.Attach(ctx, f.path, "x", consoleclient.Streams{In: r, Out: io.Discard, Messages: bannerSeen})
		res <- end
	}()
	<-bannerSeen // attached
	cancel()
	if end := <-res; end != consoleclient.Canceled {
		t.Fatalf("ending %v, want canceled", end)
	}
}

// signalWriter signals each write.
type signalWriter chan struct{}

func (w signalWriter) Write(p []byte) (int, error) {
	select {
	case w <- struct{}{}:
	default:
	}
	return len(p), nil
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.sock")
	_, err := consoleclient.Attach(context.Background(), missing, "x", consoleclient.Streams{Out: io.Discard})
	if !errors.Is(err, consoleclient.ErrNoConsole) || !strings.Contains(err.Error(), missing) || strings.Contains(err.Error(), "dial") {
		t.Errorf("missing socket: %v", err)
	}
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o600)
	_, err = consoleclient.Attach(context.Background(), plain, "x", consoleclient.Streams{Out: io.Discard})
	if err == nil || strings.Contains(err.Error(), "dial") || !strings.Contains(err.Error(), plain) {
		t.Errorf("not a socket: %v", err)
	}
}

// readUntil reads the pty's master side until want has appeared and
// returns everything read.
func readUntil(t *testing.T, r io.Reader, seen *bytes.Buffer, want string) string {
	t.Helper()
	buf := make([]byte, 256)
	for !strings.Contains(seen.String(), want) {
		n, err := r.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			t.Fatalf("terminal output so far %q, waiting for %q: %v", seen.String(), want, err)
		}
	}
	return seen.String()
}

// TestTerminal runs a session on a pseudo-terminal: a banner, raw mode
// while attached (Ctrl-C reaches the console as 0x03), console output on
// the terminal, Ctrl-] detaching, and the terminal restored.
func TestTerminal(t *testing.T) {
	f := newFakeConsole(t)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if before.Lflag&unix.ICANON == 0 {
		t.Fatal("a fresh pty is expected in canonical mode")
	}
	type result struct {
		end consoleclient.Ending
		err error
	}
	res := make(chan result, 1)
	go func() {
		end, err := consoleclient.Attach(context.Background(), f.path, "subOS web", consoleclient.Streams{In: tty, Out: tty, Messages: tty, Terminal: tty})
		res <- result{end, err}
	}()
	var seen bytes.Buffer
	readUntil(t, ptmx, &seen, "Connected to subOS web (escape character is ^])")
	c := <-f.conn
	defer c.Close()

	during, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if during.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("terminal not raw while attached: lflag %#x", during.Lflag)
	}

	const typed = "ls\r\x03\x04q"
	if _, err := ptmx.Write([]byte(typed)); err != nil {
		t.Fatal(err)
	}
	if got := f.waitReceived(typed); got != typed {
		t.Fatalf("console received %q, want %q as typed", got, typed)
	}
	c.Write([]byte("guest says \x1b[1mhi\x1b[0m\r\n"))
	readUntil(t, ptmx, &seen, "guest says \x1b[1mhi\x1b[0m\r\n")

	if _, err := ptmx.Write([]byte("z\x1dnot sent")); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.end != consoleclient.Detached {
		t.Fatalf("Attach = %v, %v after Ctrl-]; want detached, nil", r.end, r.err)
	}
	readUntil(t, ptmx, &seen, "Detached from subOS web")
	<-f.done
	if got := f.received(); got != typed+"z" {
		t.Errorf("console received %q, want %q: nothing from the escape character on", got, typed+"z")
	}
	after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("terminal not restored:\nbefore %+v\nafter  %+v", *before, *after)
	}
}

// TestConsoleServer attaches to the VMM's own console server: input goes
// to the guest's input, guest output comes back, and the server closing
// ends the session.
func TestConsoleServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	typed := make(chan []byte, 4)
	srv, err := consolesock.Listen(context.Background(), path, func(b []byte) { typed <- b })
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pr, pw := io.Pipe()
	defer pr.Close()
	res := make(chan error, 1)
	go func() {
		end, err := consoleclient.Attach(context.Background(), path, "x", consoleclient.Streams{In: r, Out: pw})
		if err == nil && end != consoleclient.Closed {
			err = errors.New("ended " + end.String())
		}
		res <- err
	}()
	w.WriteString("x")
	if got := string(<-typed); got != "x" {
		t.Fatalf("guest input %q, want x", got)
	}
	srv.Write([]byte("guest output"))
	got := make([]byte, len("guest output"))
	if _, err := io.ReadFull(pr, got); err != nil || string(got) != "guest output" {
		t.Fatalf("output %q (%v), want the guest's", got, err)
	}
	srv.Close()
	if err := <-res; err != nil {
		t.Fatal(err)
	}
}
