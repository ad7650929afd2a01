// Package guestconsole follows a guest's console (a VMM's serial output,
// or a console socket) for marker lines and notes when each appeared, so
// that a benchmark can time an operation from its request to the guest's
// word that it is done. bench/hotplug and bench/lifecycle share it.
package guestconsole

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"rainforest/internal/lines"
)

// ErrEnded means a guest console ended (the VMM exited or the
// connection closed) before a marker appeared.
var ErrEnded = errors.New("guestconsole: the guest console ended")

// maxEcho bounds the console lines echoed per run.
const maxEcho = 300

// Console follows a guest console and notes when each marker appears: the
// time the line holding it arrived. Its reader goroutine runs until the
// console's reader ends (EOF or an error; close it to end it), and Wait
// and Closed see that.
type Console struct {
	markers []string
	echo    io.Writer
	prefix  string
	echoed  int
	mu      sync.Mutex
	seen    map[string][]time.Time
	changed chan struct{} // closed and replaced when a marker appears
	done    chan struct{} // closed when the reader goroutine ends
}

// Watch starts following r for markers. When echo is not nil, it gets
// each console line prefixed with prefix.
func Watch(r io.Reader, markers []string, echo io.Writer, prefix string) *Console {
	c := &Console{markers: markers, echo: echo, prefix: prefix, seen: map[string][]time.Time{},
		changed: make(chan struct{}), done: make(chan struct{})}
	go c.read(r) // owner: c; ends when r does
	return c
}

func (c *Console) read(r io.Reader) {
	defer close(c.done)
	w := lines.NewWriter(c.line)
	io.Copy(w, r) // ends with r; a read error ends the console like EOF
	w.Flush()
}

// line notes the markers in one console line.
func (c *Console) line(l string) {
	now := time.Now()
	if c.echo != nil && c.echoed < maxEcho {
		c.echoed++
		fmt.Fprintf(c.echo, "%s%s\n", c.prefix, l)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	found := false
	for _, m := range c.markers {
		if strings.Contains(l, m) {
			c.seen[m] = append(c.seen[m], now)
			found = true
		}
	}
	if found {
		close(c.changed)
		c.changed = make(chan struct{})
	}
}

// Seen reports whether marker has appeared.
func (c *Console) Seen(marker string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen[marker]) > 0
}

// Wait returns when marker first appeared at or after since, waiting for
// it until ctx ends or the console does (ErrEnded).
func (c *Console) Wait(ctx context.Context, marker string, since time.Time) (time.Time, error) {
	for {
		c.mu.Lock()
		for _, t := range c.seen[marker] {
			if !t.Before(since) {
				c.mu.Unlock()
				return t, nil
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-c.done:
			if !c.ended(marker, since) {
				return time.Time{}, fmt.Errorf("%w before %s", ErrEnded, marker)
			}
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for %s on the console: %w", marker, ctx.Err())
		}
	}
}

// ended reports, once the reader has ended, whether marker appeared at
// or after since after all (its last line may have come with the end).
func (c *Console) ended(marker string, since time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.seen[marker] {
		if !t.Before(since) {
			return true
		}
	}
	return false
}

// Closed is closed once the console has ended and its reader goroutine
// with it.
func (c *Console) Closed() <-chan struct{} { return c.done }
