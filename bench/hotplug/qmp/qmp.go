// Package qmp is a small client of QEMU's machine protocol (QMP) on a Unix
// socket, for benchmarks that change a running QEMU guest: Dial reads the
// greeting and leaves capabilities negotiation mode, Execute runs one
// command and returns its answer, and WaitEvent returns when an event
// arrived. Every message is timestamped as it is read, so that an event's
// arrival can be compared with other clocks of the same process; an event
// also carries QEMU's own time of it (which, for an event QEMU
// rate-limits, can be well before its arrival).
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrClosed means the connection ended (QEMU exited, or Close was called).
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error answer of QEMU to a command.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc) }

// Event is an asynchronous message of QEMU.
type Event struct {
	Name string
	Data json.RawMessage
	// Received is when the client read it.
	Received time.Time
	// Emitted is QEMU's time of the event (its wall clock, to the
	// microsecond), zero when it gave none.
	Emitted time.Time
}

// message is any message QEMU sends.
type message struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Client is one QMP connection. Its reader goroutine runs until the
// connection ends; Close ends it and waits for it.
type Client struct {
	conn net.Conn
	// execMu serializes commands: QMP answers them in order.
	execMu  sync.Mutex
	answers chan message
	done    chan struct{} // closed by the reader when the connection ends
	mu      sync.Mutex
	events  []Event
	changed chan struct{} // closed and replaced when an event arrives
	readErr error         // why the reader stopped (set before done closes)
}

// Dial connects to the QMP socket at path, retrying until it can or ctx
// ends (QEMU creates the socket while it starts), reads the greeting and
// negotiates capabilities.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	var conn net.Conn
	for {
		var err error
		conn, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: dial %s: %w (last: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	c := &Client{conn: conn, answers: make(chan message, 1), done: make(chan struct{}), changed: make(chan struct{})}
	greeting := make(chan error, 1)
	go c.read(greeting) // owner: c; ends when conn is closed
	select {
	case err := <-greeting:
		if err != nil {
			c.Close()
			return nil, err
		}
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("qmp: greeting: %w", ctx.Err())
	}
	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// read decodes messages until the connection ends: the greeting first
// (its outcome goes to greeting), then answers to Execute and events.
func (c *Client) read(greeting chan<- error) {
	dec := json.NewDecoder(bufio.NewReader(c.conn))
	first := true
	var err error
	for {
		var m message
		if err = dec.Decode(&m); err != nil {
			break
		}
		now := time.Now()
		switch {
		case first:
			first = false
			if m.QMP == nil {
				err = errors.New("qmp: no greeting")
				greeting <- err
				c.stop(err)
				return
			}
			greeting <- nil
		case m.Event != "":
			c.mu.Lock()
			e := Event{Name: m.Event, Data: m.Data, Received: now}
			if ts := m.Timestamp; ts != nil {
				e.Emitted = time.Unix(ts.Seconds, ts.Microseconds*int64(time.Microsecond/time.Nanosecond))
			}
			c.events = append(c.events, e)
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		default:
			select {
			case c.answers <- m:
			default: // nobody waits: its Execute gave up and closed the connection
			}
		}
	}
	if first {
		greeting <- fmt.Errorf("qmp: greeting: %w", err)
	}
	c.stop(fmt.Errorf("%w: %v", ErrClosed, err))
}

// stop records why the reader stopped and marks the client done.
func (c *Client) stop(err error) {
	c.mu.Lock()
	c.readErr = err
	c.mu.Unlock()
	close(c.done)
}

// Execute runs command with arguments (nil for none) and returns QEMU's
// answer, or an *Error when QEMU refused it.
func (c *Client) Execute(ctx context.Context, command string, arguments any) (json.RawMessage, error) {
	c.execMu.Lock()
	defer c.execMu.Unlock()
	req := map[string]any{"execute": command}
	if arguments != nil {
		req["arguments"] = arguments
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", command, err)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", command, err)
	}
	select {
	case m := <-c.answers:
		if m.Error != nil {
			return nil, &Error{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		return m.Return, nil
	case <-c.done:
		return nil, fmt.Errorf("qmp: %s: %w", command, c.err())
	case <-ctx.Done():
		// The answer may still come; the connection is no longer usable
		// in order.
		c.conn.Close()
		return nil, fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

// WaitEvent returns the first event named name that arrived since the
// client connected and for which match (nil: any) accepts its data,
// waiting for it until ctx ends or the connection does.
func (c *Client) WaitEvent(ctx context.Context, name string, match func(data json.RawMessage) bool) (Event, error) {
	return c.WaitFor(ctx, name, func(e Event) bool { return match == nil || match(e.Data) })
}

// WaitFor returns the first event named name that arrived since the
// client connected and that match accepts, waiting for it until ctx ends
// or the connection does.
func (c *Client) WaitFor(ctx context.Context, name string, match func(Event) bool) (Event, error) {
	for {
		c.mu.Lock()
		for _, e := range c.events {
			if e.Name == name && match(e) {
				c.mu.Unlock()
				return e, nil
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-c.done:
			return Event{}, fmt.Errorf("qmp: waiting for %s: %w", name, c.err())
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: waiting for %s: %w", name, ctx.Err())
		}
	}
}

func (c *Client) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// Close closes the connection and waits for the reader goroutine.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
