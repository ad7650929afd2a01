// Package consolelog bounds a subOS's console log: a Writer in front of an
// open file that caps the file's size and the rate of guest output, so
// that no guest can fill the host's tmpfs or flood the log.
//
// Rotation works on the open descriptor alone (the VMM may have no access
// to any directory): when a write would take the file past its cap, the
// newest quarter-to-half of the file is read back (pread), written at
// offset 0 behind a marker line "[rfm: log rotated, N older bytes
// discarded]" (pwrite), and the file is truncated (ftruncate) there; the
// new output follows. The file keeps its name and inode, so a reader that
// reopens it, or reads it with an offset from its start, sees the newest
// output. The file should be opened read-write (O_RDWR): on a write-only
// descriptor the tail cannot be read back, and rotation keeps only the
// marker. It should be opened without O_APPEND; with O_APPEND
// (a VMM's stdout shared with its stderr) rotation still works, because
// after the truncation every write lands at the end anyway, and the size
// is read back from the descriptor (fstat) at each rotation to count what
// other writers added.
//
// Rate: a token bucket over bytes (Options.Rate a second, Options.Burst at
// once). Output beyond it is dropped and counted; when output resumes, a
// line "[rfm: N bytes of console output dropped]" says how much went
// missing.
//
// A Write never waits for anything but one bounded write to the file (at
// most the cap, at rotation) and never fails for lack of room: dropping is
// the policy, not an error. A descriptor that is not a regular file (a
// terminal, a pipe) cannot be truncated and its writes can block (a full
// pipe, a stopped terminal): there the Writer rate-limits and queues up to
// QueueSize bytes for a goroutine of its own that writes them; what does
// not fit is dropped and counted like the rate limit's excess. Close stops
// that goroutine (after the write it is in, if any).
package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/internal/tokenbucket"
)

// Defaults and limits of Options.
const (
	DefaultMaxSize = 1 << 20   // bytes
	MinMaxSize     = 16 << 10  // bytes; below this the markers crowd out the output
	DefaultRate    = 64 << 10  // bytes a second
	DefaultBurst   = 256 << 10 // bytes
	QueueSize      = 64 << 10  // bytes waiting for a terminal or pipe
)

// Options configure a Writer; zero fields take the defaults.
type Options struct {
	// MaxSize caps the file (DefaultMaxSize when 0; at least MinMaxSize).
	MaxSize int64
	// Rate is the sustained output rate in bytes a second (DefaultRate
	// when 0), Burst what may come at once (DefaultBurst when 0).
	Rate, Burst int
	// Now is the clock (time.Now when nil); tests pass their own.
	Now func() time.Time
}

// Stats count the guest's output.
type Stats struct {
	Written uint64 // guest bytes written to the file
	Dropped uint64 // guest bytes dropped by the rate limit
	Rotated uint64 // bytes discarded from the file's start by rotation
}

// Writer is a capped, rate-limited console log. It is safe for concurrent
// use (the serial and the virtio consoles share one).
type Writer struct {
	f       *os.File
	fd      int
	regular bool
	max     int64
	now     func() time.Time
	bucket  *tokenbucket.Bucket

	mu      sync.Mutex
	size    int64  // the file's size as far as this Writer knows
	pending uint64 // dropped bytes not yet reported by a marker
	stats   Stats
	queue   []byte // not a regular file: output for drain
	closed  bool
	writing bool // drain is in a write(2)

	wake    chan struct{} // capacity 1; drain's
	stop    chan struct{}
	drained chan struct{}
	once    sync.Once
}

// ErrOptions is returned for invalid Options.
var ErrOptions = errors.New("consolelog: invalid options")

// New returns a Writer appending to f, which stays the caller's to close.
// A file already over the cap is rotated at once.
func New(f *os.File, opt Options) (*Writer, error) {
	if opt.MaxSize == 0 {
		opt.MaxSize = DefaultMaxSize
	}
	if opt.Rate == 0 {
		opt.Rate = DefaultRate
	}
	if opt.Burst == 0 {
		opt.Burst = DefaultBurst
	}
	if opt.MaxSize < MinMaxSize || opt.Rate < 0 || opt.Burst < 0 {
		return nil, fmt.Errorf("%w: size %d (at least %d), rate %d, burst %d", ErrOptions, opt.MaxSize, MinMaxSize, opt.Rate, opt.Burst)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	w := &Writer{f: f, fd: int(f.Fd()), max: opt.MaxSize, now: opt.Now, bucket: tokenbucket.New(tokenbucket.Limit{Rate: uint64(opt.Rate), Burst: uint64(opt.Burst)}, opt.Now())}
	var st unix.Stat_t
	if err := unix.Fstat(w.fd, &st); err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	w.regular = st.Mode&unix.S_IFMT == unix.S_IFREG
	w.size = st.Size
	if w.regular && w.size > w.max {
		w.mu.Lock()
		err := w.rotateLocked(0)
		w.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	if !w.regular {
		w.wake, w.stop, w.drained = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
		go w.drain()
	}
	return w, nil
}

// Close stops the goroutine that writes to a terminal or pipe and waits
// for it, unless it is inside a write(2), which nothing can interrupt (a
// stopped terminal, a pipe nobody reads): then it ends as soon as that
// write returns, touching nothing of the Writer's but its own state.
// Output still queued is discarded. The file stays open (and the caller
// should keep it so until the process exits when Close did not wait).
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	busy := w.writing
	w.mu.Unlock()
	if w.stop != nil {
		w.once.Do(func() { close(w.stop) })
		if !busy {
			<-w.drained
		}
	}
	return nil
}

// drain writes queued output to a terminal or pipe; it may block there, on
// its own goroutine.
func (w *Writer) drain() {
	defer close(w.drained)
	var out []byte
	for {
		select {
		case <-w.wake:
		case <-w.stop:
			return
		}
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return
		}
		out, w.queue = w.queue, out[:0]
		w.writing = true
		w.mu.Unlock()
		w.writeOut(out)
		w.mu.Lock()
		w.writing = false
		w.mu.Unlock()
	}
}

// writeOut writes out to the terminal or pipe, blocking as long as it
// blocks.
func (w *Writer) writeOut(out []byte) {
	for b := out; len(b) > 0; {
		n, err := unix.Write(w.fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) { // a non-blocking descriptor
			select {
			case <-w.stop:
				return
			default:
			}
			unix.Poll([]unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLOUT}}, 100)
			continue
		}
		if err != nil || n <= 0 {
			return // the reader is gone: output has nowhere to go
		}
		b = b[n:]
	}
}

// Write implements io.Writer. It reports all of p written unless the file
// itself fails; what the rate limit drops is counted in Stats.
func (w *Writer) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return len(p), nil
	}
	n := int(w.bucket.TakeUpTo(w.now(), uint64(len(p))))
	if !w.regular {
		n = min(n, QueueSize-len(w.queue))
		if n > 0 && w.pending > 0 {
			n = min(n, QueueSize-len(w.queue)-64) // room for the marker
		}
		n = max(n, 0)
	}
	if n < len(p) {
		w.stats.Dropped += uint64(len(p) - n)
	}
	if n == 0 {
		w.pending += uint64(len(p))
		return len(p), nil
	}
	if w.pending > 0 {
		marker := fmt.Appendf(nil, "\n[rfm: %d bytes of console output dropped]\n", w.pending)
		w.pending = 0
		if err := w.writeLocked(marker); err != nil {
			return 0, err
		}
	}
	if err := w.writeLocked(p[:n]); err != nil {
		return 0, err
	}
	w.stats.Written += uint64(n)
	w.pending += uint64(len(p) - n)
	return len(p), nil
}

// Stats returns the counters so far.
func (w *Writer) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// writeLocked writes b at the end of the file, rotating first when b would
// take it past the cap.
func (w *Writer) writeLocked(b []byte) error {
	if w.regular && w.size+int64(len(b)) > w.max {
		if limit := w.max / 4; int64(len(b)) > limit { // keep the newest part of an oversized write
			w.stats.Rotated += uint64(int64(len(b)) - limit)
			b = b[int64(len(b))-limit:]
		}
		if err := w.rotateLocked(int64(len(b))); err != nil {
			return err
		}
	}
	if !w.regular {
		w.queue = append(w.queue, b...)
		select {
		case w.wake <- struct{}{}:
		default:
		}
		return nil
	}
	for len(b) > 0 {
		n, err := unix.Pwrite(w.fd, b, w.size)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("console log: %w", err)
		}
		w.size += int64(n)
		b = b[n:]
	}
	return nil
}

// rotateLocked keeps the newest part of the file (from a line start where
// one is near) behind a marker, leaving room for incoming more bytes
// under the cap.
func (w *Writer) rotateLocked(incoming int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(w.fd, &st); err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	size := st.Size
	marker := func(discarded uint64) []byte {
		return fmt.Appendf(nil, "[rfm: log rotated, %d older bytes discarded]\n", discarded)
	}
	keep := max(w.max/2-incoming-int64(len(marker(w.stats.Rotated+uint64(size)))), 0)
	keep = min(keep, size)
	tail := make([]byte, keep)
	for off := 0; off < len(tail); {
		n, err := unix.Pread(w.fd, tail[off:], size-keep+int64(off))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EBADF) { // write-only: nothing can be kept
			tail = nil
			break
		}
		if err != nil {
			return fmt.Errorf("console log: rotate: %w", err)
		}
		if n == 0 { // shrunk under us
			tail = tail[:off]
			break
		}
		off += n
	}
	if i := bytes.IndexByte(tail, '\n'); i >= 0 && i < len(tail)/4 {
		tail = tail[i+1:]
	}
	w.stats.Rotated += uint64(size - int64(len(tail)))
	buf := append(marker(w.stats.Rotated), tail...)
	// Truncate first: on an O_APPEND descriptor the writes below land at
	// the end, which is then offset 0.
	if err := unix.Ftruncate(w.fd, 0); err != nil {
		return fmt.Errorf("console log: rotate: %w", err)
	}
	w.size = 0
	for len(buf) > 0 {
		n, err := unix.Pwrite(w.fd, buf, w.size)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("console log: rotate: %w", err)
		}
		w.size += int64(n)
		buf = buf[n:]
	}
	return nil
}
