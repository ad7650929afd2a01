package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// clock is a test clock that moves only when told.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Unix(1e9, 0)} }
func openLog(t *testing.T) (*os.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "console.log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// A guest flooding 64 MiB in an instant (the finding: 64 MiB through
// virtio-console in under half a second) leaves at most the cap on disk
// and the rest counted as dropped.
func TestFloodIsCappedAndCounted(t *testing.T) {
	f, path := openLog(t)
	c := newClock()
	w, err := New(f, Options{Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("flood flood flood flood flood flood flood flood flood flood!!\n"), 1024)
	total := 0
	for total < 64<<20 {
		n, err := w.Write(chunk)
		if err != nil || n != len(chunk) {
			t.Fatalf("write: %d, %v", n, err)
		}
		total += n
		c.advance(time.Millisecond) // 64 MiB in about a second of guest time
	}
	if got := size(t, path); got > DefaultMaxSize {
		t.Errorf("log is %d bytes, cap %d", got, DefaultMaxSize)
	}
	st := w.Stats()
	if st.Written+st.Dropped != uint64(total) {
		t.Errorf("written %d + dropped %d != %d", st.Written, st.Dropped, total)
	}
	if st.Dropped < uint64(total)-DefaultBurst-2*DefaultRate {
		t.Errorf("only %d of %d bytes dropped", st.Dropped, total)
	}
	// Output resumes after a quiet second: the marker says what was lost.
	c.advance(time.Second)
	w.Write([]byte("after\n"))
	b, _ := os.ReadFile(path)
	m := regexp.MustCompile(`\[rfm: (\d+) bytes of console output dropped\]\nafter\n$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no drop marker before the resumed output; tail %q", b[max(0, len(b)-200):])
	}
	if n, _ := strconv.ParseUint(string(m[1]), 10, 64); n == 0 || n > st.Dropped {
		t.Errorf("marker says %d dropped, stats %d", n, st.Dropped)
	}
}

// Rotation keeps the newest output, behind a marker, under the cap.
func TestRotationKeepsNewest(t *testing.T) {
	f, path := openLog(t)
	c := newClock()
	w, err := New(f, Options{MaxSize: MinMaxSize, Rate: 1 << 30, Burst: 1 << 30, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10000 {
		if _, err := fmt.Fprintf(w, "line %05d\n", i); err != nil {
			t.Fatal(err)
		}
		if got := size(t, path); got > MinMaxSize {
			t.Fatalf("after line %d the log is %d bytes", i, got)
		}
	}
	b, _ := os.ReadFile(path)
	if !bytes.HasSuffix(b, []byte("line 09999\n")) {
		t.Errorf("newest line missing: tail %q", b[max(0, len(b)-40):])
	}
	if !regexp.MustCompile(`^\[rfm: log rotated, \d+ older bytes discarded\]\nline \d{5}\n`).Match(b) {
		t.Errorf("no rotation marker at the start: %q", b[:min(len(b), 80)])
	}
	// The kept lines are whole and consecutive up to the newest.
	lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))[1:]
	first, _ := strconv.Atoi(string(bytes.TrimPrefix(lines[0], []byte("line "))))
	for i, l := range lines {
		if want := fmt.Sprintf("line %05d", first+i); string(l) != want {
			t.Fatalf("line %d is %q, want %q", i, l, want)
		}
	}
	if len(lines) < MinMaxSize/4/11 {
		t.Errorf("only %d lines kept", len(lines))
	}
	if st := w.Stats(); st.Rotated == 0 || st.Written != 110000 {
		t.Errorf("stats %+v", st)
	}
}

// A write bigger than the cap keeps its newest part.
func TestOversizedWrite(t *testing.T) {
	f, path := openLog(t)
	w, err := New(f, Options{MaxSize: MinMaxSize, Rate: 1 << 30, Burst: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 10*MinMaxSize)
	copy(big[len(big)-4:], "END\n")
	if _, err := w.Write(big); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if len(b) > MinMaxSize || !bytes.HasSuffix(b, []byte("END\n")) {
		t.Errorf("log %d bytes, tail %q", len(b), b[max(0, len(b)-8):])
	}
}

// A file opened with O_APPEND (a VMM's stdout shared with its stderr) is
// rotated too, and another writer's bytes count towards the cap.
func TestAppendDescriptor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	defer other.Close()
	w, err := New(f, Options{MaxSize: MinMaxSize, Rate: 1 << 30, Burst: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5000 {
		fmt.Fprintf(w, "guest %05d\n", i)
		if i%10 == 0 {
			fmt.Fprintf(other, "vmm %05d\n", i)
		}
	}
	if got := size(t, path); got > MinMaxSize+MinMaxSize/4 {
		t.Errorf("log is %d bytes", got)
	}
	b, _ := os.ReadFile(path)
	if !bytes.HasSuffix(b, []byte("guest 04999\n")) {
		t.Errorf("tail %q", b[max(0, len(b)-40):])
	}
}

// An existing file over the cap is rotated when the Writer starts.
func TestExistingFileOverCap(t *testing.T) {
	f, path := openLog(t)
	f.Write(bytes.Repeat([]byte("old line\n"), 1<<16))
	if _, err := New(f, Options{MaxSize: MinMaxSize}); err != nil {
		t.Fatal(err)
	}
	if got := size(t, path); got > MinMaxSize {
		t.Errorf("log is %d bytes", got)
	}
}

// A write-only descriptor cannot keep its tail, but stays under the cap.
func TestWriteOnlyDescriptor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := New(f, Options{MaxSize: MinMaxSize, Rate: 1 << 30, Burst: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5000 {
		if _, err := fmt.Fprintf(w, "guest %05d\n", i); err != nil {
			t.Fatal(err)
		}
	}
	if got := size(t, path); got > MinMaxSize {
		t.Errorf("log is %d bytes", got)
	}
}

func TestOptionsRefused(t *testing.T) {
	f, _ := openLog(t)
	for _, o := range []Options{{MaxSize: 100}, {Rate: -1}, {Burst: -1}} {
		if _, err := New(f, o); !errors.Is(err, ErrOptions) {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

// A pipe nobody reads does not block Write: output beyond the queue is
// dropped and counted, and reported once the reader catches up.
func TestPipeNeverBlocks(t *testing.T) {
	r, wf, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer wf.Close()
	c := newClock()
	w, err := New(wf, Options{Rate: 1 << 30, Burst: 1 << 30, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("z"), 4096)
	for range 4096 { // 16 MiB into a 64 KiB pipe nobody reads
		if n, err := w.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	st := w.Stats()
	if st.Dropped == 0 || st.Written+st.Dropped != 16<<20 || st.Written > 2*QueueSize+1<<20 {
		t.Fatalf("stats %+v", st)
	}
	// The reader catches up: the next output follows a drop marker.
	got := make(chan []byte)
	go func() {
		var all []byte
		buf := make([]byte, 64<<10)
		for !bytes.Contains(all, []byte("resumed\n")) {
			n, err := r.Read(buf)
			if err != nil {
				break
			}
			all = append(all, buf[:n]...)
		}
		got <- all
	}()
	for w.Stats().Written == st.Written { // the queue has room once drain moved on
		w.Write([]byte("resumed\n"))
		time.Sleep(time.Millisecond)
	}
	all := <-got
	if !regexp.MustCompile(`\[rfm: \d+ bytes of console output dropped\]\nresumed\n`).Match(all) {
		t.Errorf("no marker before the resumed output; tail %q", all[max(0, len(all)-120):])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// Close does not wait for a write that cannot end (a pipe nobody reads).
func TestCloseWithStuckPipe(t *testing.T) {
	r, wf, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer wf.Close()
	w, err := New(wf, Options{Rate: 1 << 30, Burst: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("z"), 4096)
	for range 1024 {
		w.Write(chunk)
	}
	for {
		w.mu.Lock()
		busy := w.writing && len(w.queue) > 0
		w.mu.Unlock()
		if busy { // drain is stuck in write(2) with more queued
			break
		}
		w.Write(chunk)
		time.Sleep(time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n, _ := w.Write(chunk); n != len(chunk) {
		t.Error("write after Close")
	}
}
