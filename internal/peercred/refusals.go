package peercred

import (
	"log/slog"
	"sync"
	"time"
)

// Refusal logging limits: at most refusalBurst lines per refusalWindow;
// the rest are counted and the count goes with the next line logged.
const (
	refusalBurst  = 10
	refusalWindow = time.Minute
)

// Refusals logs refused peers at WARN, bounded: any local process can
// connect in a loop, and each refusal must not cost a log line.
type Refusals struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	start      time.Time // of the current window
	logged     int       // lines in the current window
	suppressed int       // refusals not logged since the last line
}

// NewRefusals logs to log (slog.Default() when nil).
func NewRefusals(log *slog.Logger) *Refusals {
	if log == nil {
		log = slog.Default()
	}
	return &Refusals{log: log, now: time.Now}
}

// Refused logs that the peer c of what (e.g. "API socket") was refused
// for reason.
func (r *Refusals) Refused(what string, c Cred, reason error) {
	r.mu.Lock()
	now := r.now()
	if now.Sub(r.start) >= refusalWindow {
		r.start, r.logged = now, 0
	}
	if r.logged >= refusalBurst {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.logged++
	suppressed := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	args := []any{"uid", c.UID, "gid", c.GID, "pid", c.PID, "reason", reason}
	if suppressed > 0 {
		args = append(args, "not_logged_before", suppressed)
	}
	r.log.Warn(what+": peer refused", args...)
}
