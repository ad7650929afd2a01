package supervisor

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A guest's last console line reaches the reclaim event only quoted and
// bounded: it cannot forge supervisor text on a line of its own, carry
// terminal escapes, or grow the ledger; the logs go with the subOS.
func TestReclaimDetailQuotesGuestText(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	info, err := s.Create(context.Background(), testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	forged := "booting\n" + strings.Repeat("A", 10<<20) + "\nreclaim a by uid 0\n\x1b[31mdestroy by uid 0 \"ok\" \xff" + strings.Repeat("B", 300)
	if err := os.WriteFile(info.Log, []byte(forged), 0o600); err != nil {
		t.Fatal(err)
	}
	vmmLog := s.vmmLogPath("a")
	os.WriteFile(vmmLog, []byte("vmm log\n"), 0o600)
	l.procs[info.PID].exit()
	for len(s.List()) != 0 {
		time.Sleep(time.Millisecond)
	}
	evs, err := s.Events(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var detail string
	for _, e := range evs {
		if e.What == "reclaim" {
			detail = e.Detail
		}
	}
	const prefix = `VMM exited (exit status 1); last console line: "\x1b[31mdestroy by uid 0 \"ok\" \xff`
	if !strings.HasPrefix(detail, prefix) || !strings.HasSuffix(detail, `B"…`) {
		t.Errorf("detail %.120q", detail)
	}
	if len(detail) > 4*logLineBytes+len(prefix) || strings.ContainsAny(detail, "\n\r\x1b") {
		t.Errorf("detail is %d bytes or holds control characters: %.120q", len(detail), detail)
	}
	for _, p := range []string{info.Log, vmmLog} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", filepath.Base(p), err)
		}
	}
}

// Destroy removes the subOS's logs.
func TestDestroyRemovesLogs(t *testing.T) {
	s := newTestSupervisor(t, t.TempDir(), &fakeActuator{}, &fakeLauncher{})
	defer s.Close()
	info, err := s.Create(context.Background(), testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(info.Log); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(info.Log); !os.IsNotExist(err) {
		t.Errorf("log left behind: %v", err)
	}
}

// logTail reads only the end of a huge log and quotes what it returns.
func TestLogTailBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30) // sparse: reading it all would take a gigabyte
	f.WriteAt([]byte("one\ntwo\n\x1b]0;pwned\x07three\n"), 1<<30)
	f.Close()
	if got, want := logTail(path, 2), `"two" | "\x1b]0;pwned\athree"`; got != want {
		t.Errorf("logTail = %s, want %s", got, want)
	}
	if got := logTail(filepath.Join(t.TempDir(), "none"), 1); got != "(no log)" {
		t.Errorf("missing log: %s", got)
	}
	os.WriteFile(path, bytes.Repeat([]byte("\n"), 10), 0o600)
	if got := logTail(path, 1); got != "(empty log)" {
		t.Errorf("empty log: %s", got)
	}
}

// A VMM that failed to start is explained by its last error line, not by
// the informational lines around it.
func TestVMMLastWords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.vmm.log")
	os.WriteFile(path, []byte("time=x level=INFO msg=start\nrfm: no kernel\ntime=x level=INFO msg=\"console output\" written=0\n"), 0o600)
	if got, want := vmmLastWords(path), `"rfm: no kernel"`; got != want {
		t.Errorf("vmmLastWords = %s, want %s", got, want)
	}
	os.WriteFile(path, []byte("a\nb\nc\nd\n"), 0o600)
	if got, want := vmmLastWords(path), `"b" | "c" | "d"`; got != want {
		t.Errorf("without an error line: %s, want %s", got, want)
	}
}
