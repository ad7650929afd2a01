package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"rainforest/internal/agentproto"
)

// LatencySocket is where applications push their p99 latency in the
// guest: a Unix datagram socket, one sample per datagram.
const LatencySocket = "/run/rf-agent/latency.sock"

// MaxLatencyMessage bounds one datagram; a longer one is ignored.
const MaxLatencyMessage = 512

// ErrLatencyFormat means a latency message is not one of the accepted
// forms.
var ErrLatencyFormat = errors.New("not a latency sample")

// ParseLatency reads one latency message: a text line "p99 12.5ms" (or
// just "12.5ms"; Go duration units, a bare number being microseconds), or
// a JSON object {"p99_us": 12500} or {"p99": "12.5ms"}. A value must be
// within 0..agentproto.MaxLatencyUS microseconds.
func ParseLatency(b []byte) (time.Duration, error) {
	if len(b) > MaxLatencyMessage {
		return 0, fmt.Errorf("%w: %d bytes (at most %d)", ErrLatencyFormat, len(b), MaxLatencyMessage)
	}
	text := strings.TrimSpace(string(b))
	var d time.Duration
	if strings.HasPrefix(text, "{") {
		var m struct {
			P99US *float64 `json:"p99_us"`
			P99   *string  `json:"p99"`
		}
		if err := json.Unmarshal([]byte(text), &m); err != nil {
			return 0, fmt.Errorf("%w: %v", ErrLatencyFormat, err)
		}
		switch {
		case m.P99US != nil:
			us := *m.P99US
			if !(us >= 0 && us <= agentproto.MaxLatencyUS) {
				return 0, fmt.Errorf("%w: p99_us out of range", ErrLatencyFormat)
			}
			d = time.Duration(us * float64(time.Microsecond))
		case m.P99 != nil:
			v, err := parseLatencyValue(*m.P99)
			if err != nil {
				return 0, err
			}
			d = v
		default:
			return 0, fmt.Errorf("%w: no p99_us or p99", ErrLatencyFormat)
		}
	} else {
		if strings.ContainsAny(text, "\n\r") {
			return 0, fmt.Errorf("%w: more than one line", ErrLatencyFormat)
		}
		f := strings.Fields(text)
		if len(f) == 2 && f[0] == "p99" {
			f = f[1:]
		}
		if len(f) != 1 {
			return 0, fmt.Errorf("%w: want \"p99 12.5ms\"", ErrLatencyFormat)
		}
		v, err := parseLatencyValue(f[0])
		if err != nil {
			return 0, err
		}
		d = v
	}
	if d < 0 || d > agentproto.MaxLatencyUS*time.Microsecond {
		return 0, fmt.Errorf("%w: %v out of range", ErrLatencyFormat, d)
	}
	return d, nil
}

// parseLatencyValue reads "12.5ms" (a Go duration) or "12500" (microseconds).
func parseLatencyValue(v string) (time.Duration, error) {
	if us, err := strconv.ParseFloat(v, 64); err == nil {
		if !(us >= 0 && us <= agentproto.MaxLatencyUS) {
			return 0, fmt.Errorf("%w: %s microseconds out of range", ErrLatencyFormat, v)
		}
		return time.Duration(us * float64(time.Microsecond)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrLatencyFormat, err)
	}
	return d, nil
}

// Latency keeps the latest latency sample and counts what was refused.
// It is safe for concurrent use.
type Latency struct {
	mu   sync.Mutex
	seq  uint64
	p99  time.Duration
	at   time.Time
	bad  uint64
	last time.Time // of the last refusal logged
}

// Record takes a sample measured at at.
func (l *Latency) Record(p99 time.Duration, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	l.p99, l.at = p99, at
}

// Refused is how many messages were ignored.
func (l *Latency) Refused() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bad
}

// Sample is the latest sample as a stats report carries it, its age at
// now; nil when none came, or when it is older than the protocol allows.
func (l *Latency) Sample(now time.Time) *agentproto.LatencySample {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seq == 0 {
		return nil
	}
	age := max(now.Sub(l.at), 0).Milliseconds()
	if age > agentproto.MaxLatencyAgeMS {
		return nil
	}
	return &agentproto.LatencySample{Seq: l.seq, P99US: uint64(l.p99.Microseconds()), AgeMS: uint64(age)}
}

// ListenLatency makes the latency socket at path (its directory too),
// replacing a stale one, writable by every local user: any application
// may report its latency.
func ListenLatency(path string) (net.PacketConn, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("agent: latency socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: latency socket: %w", err)
	}
	c, err := net.ListenPacket("unixgram", path)
	if err != nil {
		return nil, fmt.Errorf("agent: latency socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		c.Close()
		return nil, fmt.Errorf("agent: latency socket: %w", err)
	}
	return c, nil
}

// ServeLatency reads latency messages from c into l until ctx ends or c
// fails; it closes c. A message ParseLatency refuses, or a longer one, is
// counted and ignored (logged at most once a minute).
func (s *Server) ServeLatency(ctx context.Context, c net.PacketConn, l *Latency) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	buf := make([]byte, MaxLatencyMessage+1)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: latency socket: %w", err)
		}
		now := time.Now()
		p99, perr := ParseLatency(buf[:n])
		if perr == nil {
			l.Record(p99, now)
			continue
		}
		l.mu.Lock()
		l.bad++
		logIt := now.Sub(l.last) >= time.Minute
		if logIt {
			l.last = now
		}
		bad := l.bad
		l.mu.Unlock()
		if logIt {
			s.log.Warn("latency message ignored", "err", strconv.Quote(perr.Error()), "ignored", bad)
		}
	}
}

// SendLatency sends one p99 sample to the latency socket at path.
func SendLatency(ctx context.Context, path string, p99 time.Duration) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixgram", path)
	if err != nil {
		return fmt.Errorf("latency socket %s: %w (is rf-agent running?)", path, err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "p99 %s\n", p99); err != nil {
		return fmt.Errorf("latency socket %s: %w", path, err)
	}
	return nil
}
