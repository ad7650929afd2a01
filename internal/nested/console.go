package nested

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"rainforest/internal/lines"
)

// The heartbeat: while L1 runs, its /init prints a line HeartbeatMarker
// followed by L1's uptime in seconds every HeartbeatInterval. The host
// removes these lines from the script's output; a session that prints
// neither a heartbeat nor anything else for Config.Silence is killed with
// ErrSilent.
//
// The heartbeat tells that L1 as a whole runs (its kernel schedules, its
// console works), not that the script makes progress: a command that
// hangs inside a live L1 is for the script to bound (timeout(1), its own
// waits), and Config.Timeout bounds the whole session as a backstop.
const (
	HeartbeatMarker   = "RF-NESTED-ALIVE"
	HeartbeatInterval = 10 * time.Second
	// HeartbeatPIDFile is where L1's /init writes the heartbeat loop's
	// process ID, for scripts that stop it to check silence detection.
	HeartbeatPIDFile = "/run/rf-nested-heartbeat.pid"
)

// phase is how far the console has come.
type phase int

const (
	booting  phase = iota // before BeginMarker
	running               // the script's output
	finished              // after ExitMarker
)

// console follows L1's serial console as QEMU prints it: it keeps the
// last maxSerial bytes (for error messages and Result.Serial), passes
// every byte to the log, cuts lines, removes heartbeats, finds the
// markers around the script's output, hands the script's lines to the
// caller, and notes when L1 was last heard from.
//
// Write is called by one goroutine (exec's copier of QEMU's stdout);
// stderr is the same console through rawWriter, from another goroutine;
// silence is called by the session's watchdog. mu guards the state they
// share; the caller's line function and the log are called without it.
type console struct {
	now   func() time.Time
	log   io.Writer    // every byte; nil: none
	lines func(string) // the script's lines; nil: none
	split *lines.Writer

	logMu sync.Mutex // serializes log writes from stdout and stderr

	mu      sync.Mutex
	serial  []byte
	started time.Time // when QEMU started
	heard   time.Time // when the console last printed anything
	alive   string    // L1's uptime in the last heartbeat; "" before the first
	carry   string    // the start of a line a heartbeat interrupted
	phase   phase
	output  []byte // the script's lines, each ending in "\n" (the last maxSerial bytes)
	status  int
	pending []string // lines for the caller, collected under mu
}

// newConsole returns a console whose clock starts now.
func newConsole(now func() time.Time, log io.Writer, lineFn func(string)) *console {
	c := &console{now: now, log: log, lines: lineFn}
	c.split = lines.NewWriter(c.line)
	c.started = now()
	c.heard = c.started
	return c
}

// Write takes QEMU's stdout: the serial console.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.heard = c.now()
	c.serial = keepLast(c.serial, p)
	c.split.Write(p)
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.writeLog(p)
	if c.lines != nil {
		for _, l := range pending {
			c.lines(l)
		}
	}
	return len(p), nil
}

// end hands over an unterminated last line; QEMU has exited.
func (c *console) end() {
	c.mu.Lock()
	c.split.Flush()
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	if c.lines != nil {
		for _, l := range pending {
			c.lines(l)
		}
	}
}

// rawWriter returns a writer whose bytes (QEMU's own messages on stderr)
// are kept and logged like the console's, but are neither script output
// nor a sign of life from L1.
func (c *console) rawWriter() io.Writer { return rawWriter{c} }

type rawWriter struct{ c *console }

func (r rawWriter) Write(p []byte) (int, error) {
	r.c.mu.Lock()
	r.c.serial = keepLast(r.c.serial, p)
	r.c.mu.Unlock()
	r.c.writeLog(p)
	return len(p), nil
}

// writeLog passes p to the log; a failing log does not stop the console
// from being drained.
func (c *console) writeLog(p []byte) {
	if c.log == nil {
		return
	}
	c.logMu.Lock()
	defer c.logMu.Unlock()
	c.log.Write(p)
}

// line handles one console line; c.mu is held.
func (c *console) line(l string) {
	l, c.carry = c.carry+l, ""
	if i := strings.Index(l, HeartbeatMarker+" "); i >= 0 && isUptime(l[i+len(HeartbeatMarker)+1:]) {
		c.alive = l[i+len(HeartbeatMarker)+1:]
		// The heartbeat may have been printed in the middle of a line
		// of the script: the line goes on after it.
		c.carry = l[:i]
		return
	}
	switch c.phase {
	case booting:
		if strings.TrimSpace(l) == BeginMarker {
			c.phase = running
		}
	case running:
		if i := strings.Index(l, ExitMarker+" "); i >= 0 {
			if st, err := strconv.Atoi(strings.TrimSpace(l[i+len(ExitMarker)+1:])); err == nil {
				// A last line without a line end is followed by the marker.
				if i > 0 {
					c.emit(l[:i])
				}
				c.phase, c.status = finished, st
				return
			}
		}
		c.emit(l)
	}
}

// emit records a line of the script's output; c.mu is held.
func (c *console) emit(l string) {
	c.output = keepLast(c.output, []byte(l+"\n"))
	c.pending = append(c.pending, l)
}

// isUptime reports whether s is a /proc/uptime seconds value.
func isUptime(s string) bool {
	whole, frac, _ := strings.Cut(s, ".")
	return whole != "" && strings.Trim(whole, "0123456789") == "" && strings.Trim(frac, "0123456789") == ""
}

// result returns the script's result once the exit marker was seen.
func (c *console) result() (*Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.phase != finished {
		return nil, false
	}
	return &Result{ExitStatus: c.status, Output: string(c.output), Serial: normalize(string(c.serial))}, true
}

// serialText returns the serial output kept, CR LF turned into LF.
func (c *console) serialText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return normalize(string(c.serial))
}

// silence returns an ErrSilent error when, at now, L1 has been silent too
// long: no heartbeat yet boot after QEMU started, or since the first
// heartbeat nothing at all for silence. After the exit marker only QEMU's
// exit is awaited; an error then means it did not exit within silence.
func (c *console) silence(now time.Time, boot, silence time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.phase == finished:
		if d := now.Sub(c.heard); d >= silence {
			return fmt.Errorf("%w: QEMU did not exit %v after the script ended", ErrSilent, roundDuration(d))
		}
	case c.alive == "":
		if d := now.Sub(c.started); d >= boot {
			return fmt.Errorf("%w: no heartbeat from L1's /init %v after QEMU started", ErrSilent, roundDuration(d))
		}
	default:
		if d := now.Sub(c.heard); d >= silence {
			return fmt.Errorf("%w for %v: neither heartbeat nor output (the last heartbeat was at L1 uptime %ss)",
				ErrSilent, roundDuration(d), c.alive)
		}
	}
	return nil
}

// roundDuration rounds d for a message: to seconds when it is long, to
// milliseconds otherwise.
func roundDuration(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

// keepLast appends p to buf and, once buf has grown a quarter beyond
// maxSerial, drops the oldest bytes down to maxSerial (trimming in steps,
// not on every write).
func keepLast(buf, p []byte) []byte {
	buf = append(buf, p...)
	if len(buf) > maxSerial+maxSerial/4 {
		buf = append([]byte(nil), buf[len(buf)-maxSerial:]...)
	}
	return buf
}

// tcgWarnings drops QEMU's "TCG doesn't support requested feature"
// warnings (one per CPU feature of the EPYC model that TCG lacks,
// repeated per vCPU), which say nothing about the run, and passes every
// other line of QEMU's stderr to w.
func tcgWarnings(w io.Writer) *lines.Writer {
	return lines.NewWriter(func(l string) {
		if !strings.Contains(l, "TCG doesn't support requested feature") {
			io.WriteString(w, l+"\n")
		}
	})
}

func normalize(s string) string {
	return strings.ReplaceAll(s, "\r\n", "\n")
}

func tail(s string) string {
	if len(s) > tailLen {
		return "..." + s[len(s)-tailLen:]
	}
	return s
}
