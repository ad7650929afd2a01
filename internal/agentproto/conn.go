package agentproto

import (
	"bufio"
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
