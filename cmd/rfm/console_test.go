package main

import (
	"bytes"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// consoleListener is a fake console socket; accepted connections come on
// the channel.
func consoleListener(t *testing.T) (string, <-chan net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err == nil {
			conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		select {
		case c := <-conns:
			c.Close()
		default:
		}
	})
	return path, conns
}

// readUntil reads from r until want has been seen, or r fails.
func readUntil(t *testing.T, r io.Reader, seen *bytes.Buffer, want string) {
	t.Helper()
	buf := make([]byte, 256)
	for !strings.Contains(seen.String(), want) {
		n, err := r.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			t.Fatalf("read %q, waiting for %q: %v", seen.String(), want, err)
		}
	}
}

// TestConsoleTerminal runs rfm console on a pseudo-terminal as a user
// would: the banner, Ctrl-C sent to the console as a byte, Ctrl-]
// detaching with exit status 0 and the terminal as it was.
func TestConsoleTerminal(t *testing.T) {
	bin := rfmBinary(t)
	path, conns := consoleListener(t)
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
	cmd := exec.Command(bin, "console", path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen bytes.Buffer
	readUntil(t, ptmx, &seen, "(escape character is ^])")
	c := <-conns
	defer c.Close()

	if _, err := ptmx.Write([]byte("a\x03b")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, 3)
	for len(got) < 3 {
		buf := make([]byte, 3)
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("console received %q, then %v", got, err)
		}
	}
	if string(got) != "a\x03b" {
		t.Errorf("console received %q, want a, Ctrl-C, b", got)
	}
	c.Write([]byte("login: "))
	readUntil(t, ptmx, &seen, "login: ")

	if _, err := ptmx.Write([]byte{0x1d}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rfm console after Ctrl-]: %v (want exit status 0); terminal:\n%q", err, seen.String())
	}
	readUntil(t, ptmx, &seen, "Detached from console "+path)
	after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("terminal not restored:\nbefore %+v\nafter  %+v", *before, *after)
	}
}

// TestConsolePiped: piped input is sent as it is (no escape character) and
// rfm waits for the console to close, then says so and exits 0.
func TestConsolePiped(t *testing.T) {
	bin := rfmBinary(t)
	path, conns := consoleListener(t)
	cmd := exec.Command(bin, "console", path)
	cmd.Stdin = strings.NewReader("echo hi\n\x1d\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := <-conns
	got, err := io.ReadAll(io.LimitReader(c, 10))
	if err != nil || string(got) != "echo hi\n\x1d\n" {
		t.Errorf("console received %q (%v), want the piped bytes", got, err)
	}
	c.Write([]byte("hi\r\n"))
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rfm console: %v\n%s", err, stderr.String())
	}
	if stdout.String() != "hi\r\n" {
		t.Errorf("stdout %q, want the console's output", stdout.String())
	}
	if !strings.Contains(stderr.String(), "closed") {
		t.Errorf("stderr %q: want a line saying the console closed", stderr.String())
	}
}

func TestConsoleNoSocket(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	out, err := exec.Command(rfmBinary(t), "console", missing).CombinedOutput()
	if err == nil {
		t.Fatalf("rfm console on a missing socket succeeded:\n%s", out)
	}
	if s := string(out); !strings.Contains(s, missing) || strings.Contains(s, "dial") {
		t.Errorf("error %q: want the socket named, without transport detail", s)
	}
}
