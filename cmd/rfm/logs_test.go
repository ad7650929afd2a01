package main

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Guest log text is escaped for a terminal and left as is for a pipe or
// a file.
func TestLogOutput(t *testing.T) {
	in := []byte("ok\r\n\x1b]0;pwned\x07\x1b[2Jdestroy by uid 0\n")
	if got := logOutput(in, false); !bytes.Equal(got, in) {
		t.Errorf("piped: %q", got)
	}
	want := "ok\r\n" + `\x1b]0;pwned\a\x1b[2Jdestroy by uid 0` + "\n"
	if got := string(logOutput(in, true)); got != want {
		t.Errorf("terminal: %q, want %q", got, want)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if writesToTerminal(f) || writesToTerminal(&bytes.Buffer{}) {
		t.Error("a file or buffer taken for a terminal")
	}
}

// An audit detail stays one cell of one line.
func TestTableCell(t *testing.T) {
	if got, want := tableCell("VMM exited: a\ndestroy by uid 0\t\x1b[2J"), `VMM exited: a\ndestroy by uid 0\t\x1b[2J`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// rfm run's console tails escape for a terminal.
func TestConsoleTailsEscape(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	os.WriteFile(path, []byte("\x1b[31mred\n"), 0o600)
	var out syncBuffer
	tails := &consoleTails{out: &out, escape: true}
	tails.follow("a", path)
	for !bytes.Contains(out.Bytes(), []byte("\n")) {
		yield()
	}
	tails.stop()
	if got, want := out.String(), "a       | \\x1b[31mred\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// rfm run's console tails follow a log that rotated in place.
func TestConsoleTailsFollowRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	os.WriteFile(path, []byte("old line one\nold line two\n"), 0o600)
	var out syncBuffer
	tails := &consoleTails{out: &out}
	tails.follow("a", path)
	for !bytes.Contains(out.Bytes(), []byte("two\n")) {
		yield()
	}
	os.WriteFile(path, []byte("[rfm: log rotated]\nnew\n"), 0o600) // truncates in place
	for !bytes.Contains(out.Bytes(), []byte("new\n")) {
		yield()
	}
	tails.stop()
	if got := out.String(); !bytes.Contains([]byte(got), []byte("a       | [rfm: log rotated]\na       | new\n")) {
		t.Errorf("got %q", got)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }

func yield() { time.Sleep(time.Millisecond) }
