package agentproto

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Conn sends and receives messages on a stream. Send may be called from
// several goroutines (each message is one Write); Recv from one at a time.
type Conn struct {
	r   *bufio.Reader
	w   io.Writer
	wmu sync.Mutex
}

// NewConn returns a Conn over rw.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{r: bufio.NewReaderSize(rw, 64<<10), w: rw}
}

// Send encodes and writes m.
func (c *Conn) Send(m Message) error {
	f, err := Encode(m)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return WriteFrame(c.w, f)
}

// Recv reads and decodes the next message. An error wrapping
// ErrUnknownType leaves the stream in step: the caller may go on.
func (c *Conn) Recv() (Message, error) {
	f, err := ReadFrame(c.r)
	if err != nil {
		return nil, err
	}
	return Decode(f)
}

// HostHandshake is the host's side of a connection's start: it reads the
// agent's Hello, checks its version and answers with the host's Hello
// (software names the host: "rfm 1.2.3"). It returns the agent's Hello;
// an agent of another major version gives an error wrapping ErrVersion
// (the host sends nothing then and should close), an agent that refuses
// gives its *Error.
func HostHandshake(pc *Conn, software string) (*Hello, error) {
	for {
		m, err := pc.Recv()
		if errors.Is(err, ErrUnknownType) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("agentproto: reading the agent's hello: %w", err)
		}
		switch m := m.(type) {
		case *Hello:
			if err := CheckVersion(m); err != nil {
				return m, err
			}
			if err := pc.Send(NewHello(software)); err != nil {
				return m, fmt.Errorf("agentproto: sending the host's hello: %w", err)
			}
			return m, nil
		case *Error:
			return nil, m
		default:
			return nil, fmt.Errorf("%w: the agent sent %s before its hello", ErrMalformed, m.Type())
		}
	}
}
