package measure

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
)

// Defaults for Spec fields left zero.
const (
	DefaultTimeout = 5 * time.Minute
	// maxEcho bounds the console lines echoed per run.
	maxEcho = 200
	// stderrTail is how much of the VMM's stderr an error carries.
	stderrTail = 2048
)

// Spec describes one measured VMM run.
type Spec struct {
	// VMM and Run label the sample.
	VMM string
	Run int
	// Argv is the VMM command line; Argv[0] is looked up in PATH.
	Argv []string
	// Env is the VMM's environment (nil: the measurer's).
	Env []string
	// Marker is the text whose appearance on the VMM's stdout (the guest
	// console) ends the boot-time measurement.
	Marker string
	// Timeout bounds the whole run (default DefaultTimeout); the VMM is
	// killed when it expires.
	Timeout time.Duration
	// Echo, when not nil, receives the VMM's console output line by line,
	// each line prefixed with "[VMM#Run] " (at most maxEcho lines).
	Echo io.Writer
	// Idle, when its Window is set, also counts the VMM's wake-ups while
	// its guest is idle.
	Idle IdleSpec
}

// IdleSpec says when a VMM's guest is idle and how long to count its
// threads' wake-ups (package wakeups) then.
type IdleSpec struct {
	// After is the console text after which the guest is idle; it
	// appears after Spec.Marker.
	After string
	// Delay is the wait from After to the window, Window the window's
	// length, and Every how often the threads' states are noted during
	// it (default DefaultIdleEvery).
	Delay, Window, Every time.Duration
}

// DefaultIdleEvery is IdleSpec.Every when left zero.
const DefaultIdleEvery = time.Second

// Measure starts the VMM, timestamps the start, scans its stdout for the
// marker, reads /proc/PID/status the moment the marker appears, and waits
// for the VMM to exit. Failures are reported in Sample.Error.
func Measure(ctx context.Context, spec Spec) Sample {
	s := Sample{VMM: spec.VMM, Run: spec.Run, ExitCode: -1}
	if len(spec.Argv) == 0 || spec.Marker == "" {
		s.Error = "measure: empty command or marker"
		return s
	}
	if spec.Timeout <= 0 {
		spec.Timeout = DefaultTimeout
	}
	if spec.Idle.Window > 0 && spec.Idle.After == "" {
		s.Error = "measure: idle window without its console text"
		return s
	}
	if spec.Idle.Every <= 0 {
		spec.Idle.Every = DefaultIdleEvery
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.Error = fmt.Sprintf("measure: %v", err)
		return s
	}
	var stderr tailBuffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		s.Error = fmt.Sprintf("measure: start: %v", err)
		return s
	}
	echo := &lineEcho{w: spec.Echo, prefix: fmt.Sprintf("[%s#%d] ", spec.VMM, spec.Run)}
	var statusErr error
	watches := []*watch{{marker: []byte(spec.Marker), onFound: func() {
		s.Init = time.Since(start)
		s.Status, statusErr = ReadStatus(cmd.Process.Pid)
	}}}
	idle := newIdleWatch(ctx, cmd.Process.Pid, spec.Idle)
	if idle != nil {
		watches = append(watches, &watch{marker: []byte(spec.Idle.After), onFound: idle.start})
	}
	scanMarkers(stdout, watches, echo)
	found := watches[0].found
	echo.flush()
	waitErr := cmd.Wait()
	s.Exit = time.Since(start)
	var idleErr error
	if idle != nil {
		s.Idle, idleErr = idle.result(watches[1].found)
	}
	if cmd.ProcessState != nil {
		s.ExitCode = cmd.ProcessState.ExitCode()
	}
	var problems []string
	if !found {
		problems = append(problems, fmt.Sprintf("marker %q not seen", spec.Marker))
	}
	if statusErr != nil {
		problems = append(problems, statusErr.Error())
	}
	if idleErr != nil {
		problems = append(problems, idleErr.Error())
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		problems = append(problems, fmt.Sprintf("timed out after %v", spec.Timeout))
	} else if waitErr != nil {
		problems = append(problems, fmt.Sprintf("exit: %v", waitErr))
	}
	if len(problems) > 0 {
		if t := strings.TrimSpace(stderr.String()); t != "" {
			problems = append(problems, "stderr: "+t)
		}
		s.Error = strings.Join(problems, "; ")
	}
	return s
}

// watch is a console text scanMarkers looks for.
type watch struct {
	marker  []byte
	onFound func()
	found   bool
}

// scanMarkers reads r to EOF, calling each watch's onFound once, as soon
// as its marker has appeared (also across read boundaries), in the order
// of watches, and copying everything to echo. A later watch is looked for
// only once the earlier ones were found.
func scanMarkers(r io.Reader, watches []*watch, echo *lineEcho) {
	buf := make([]byte, 32*1024)
	var carry []byte
	next := 0 // the watch looked for
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			window := append(carry, chunk...)
			for next < len(watches) {
				w := watches[next]
				i := bytes.Index(window, w.marker)
				if i < 0 {
					break
				}
				w.found = true
				w.onFound()
				window = window[i+len(w.marker):]
				next++
			}
			carry = nil
			if next < len(watches) {
				keep := min(len(watches[next].marker)-1, len(window))
				carry = append([]byte(nil), window[len(window)-keep:]...)
			}
			echo.write(chunk)
		}
		if err != nil {
			return
		}
	}
}

// lineEcho writes complete lines with a prefix; a nil writer drops them.
type lineEcho struct {
	w       io.Writer
	prefix  string
	partial []byte
	lines   int
}

func (e *lineEcho) write(p []byte) {
	if e.w == nil {
		return
	}
	e.partial = append(e.partial, p...)
	for {
		i := bytes.IndexByte(e.partial, '\n')
		if i < 0 {
			break
		}
		e.emit(e.partial[:i])
		e.partial = e.partial[i+1:]
	}
	if len(e.partial) > 4096 {
		e.emit(e.partial)
		e.partial = nil
	}
}

func (e *lineEcho) emit(line []byte) {
	if e.lines >= maxEcho {
		return
	}
	e.lines++
	fmt.Fprintf(e.w, "%s%s\n", e.prefix, bytes.TrimRight(line, "\r"))
}

func (e *lineEcho) flush() {
	if e.w != nil && len(e.partial) > 0 {
		e.emit(e.partial)
		e.partial = nil
	}
}

// tailBuffer keeps the last stderrTail bytes written to it. exec's copying
// goroutine writes it; String is called after Wait.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > stderrTail {
		t.b = append([]byte(nil), t.b[len(t.b)-stderrTail:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
