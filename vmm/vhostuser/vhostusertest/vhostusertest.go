// Package vhostusertest is a fake vhost-user back end for tests of front
// ends: a goroutine speaking the back end's side over a socket pair. It
// records every message with the descriptors that came with it, answers
// the requests that have replies from its configuration, acknowledges
// requests that ask for it, and can be told to misbehave (a raw reply of
// the test's choosing, or hanging up) at a given request.
package vhostusertest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"rainforest/vmm/vhostuser"
)

// Received is one message the back end got. Its descriptors stay open
// until the back end is closed.
type Received struct {
	Request vhostuser.Request
	Flags   uint32
	Payload []byte
	FDs     []int
}

// Config is the back end's behaviour.
type Config struct {
	// Features (GET_FEATURES), Protocol (GET_PROTOCOL_FEATURES) and
	// Queues (GET_QUEUE_NUM) are what it offers.
	Features uint64
	Protocol uint64
	Queues   uint64
	// VringBase is what GET_VRING_BASE answers for every queue.
	VringBase uint32
	// Refuse, when set, is the REPLY_ACK status for a request (0 to
	// accept).
	Refuse func(vhostuser.Request) uint64
	// Misbehave, when set, is called for each request before it is
	// answered; raw, when not nil, is written instead of the answer, and
	// hangUp closes the connection (after raw).
	Misbehave func(vhostuser.Request) (raw []byte, hangUp bool)
}

// BackEnd is a fake back end serving one connection.
type BackEnd struct {
	cfg  Config
	c    *net.UnixConn
	peer *net.UnixConn // the front end's side, until taken

	mu       sync.Mutex
	received []Received
	changed  chan struct{} // closed and replaced when a message is recorded
	err      error         // why serving ended
	done     chan struct{}
}

// New starts a back end; FrontEnd returns the socket to give the front
// end. Close it when done.
func New(cfg Config) (*BackEnd, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	mine, err := fileConn(fds[0], "vhost-user-backend")
	if err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	theirs, err := fileConn(fds[1], "vhost-user-frontend")
	if err != nil {
		mine.Close()
		return nil, err
	}
	b := &BackEnd{cfg: cfg, c: mine, peer: theirs, changed: make(chan struct{}), done: make(chan struct{})}
	go b.serve()
	return b, nil
}

func fileConn(fd int, name string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a Unix socket")
	}
	return uc, nil
}

// FrontEnd returns the front end's side of the connection (once; the
// caller takes charge of it).
func (b *BackEnd) FrontEnd() *net.UnixConn {
	c := b.peer
	b.peer = nil
	return c
}

// serve answers the front end until the connection ends.
func (b *BackEnd) serve() {
	defer close(b.done)
	for {
		m, err := vhostuser.ReadMessage(b.c, vhostuser.MaxFDs)
		if err != nil {
			b.finish(err)
			return
		}
		b.record(m)
		if b.cfg.Misbehave != nil {
			raw, hangUp := b.cfg.Misbehave(m.Header.Request)
			if raw != nil {
				if _, err := b.c.Write(raw); err != nil {
					b.finish(err)
					return
				}
			}
			if hangUp {
				b.c.Close()
				b.finish(errors.New("hung up"))
				return
			}
			if raw != nil {
				continue
			}
		}
		if out := b.answer(m); out != nil {
			if _, err := b.c.Write(out); err != nil {
				b.finish(err)
				return
			}
		}
	}
}

func (b *BackEnd) finish(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.err = err
}

func (b *BackEnd) record(m vhostuser.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.received = append(b.received, Received{Request: m.Header.Request, Flags: m.Header.Flags, Payload: m.Payload, FDs: m.FDs})
	close(b.changed)
	b.changed = make(chan struct{})
}

// answer returns the reply to m, nil for none.
func (b *BackEnd) answer(m vhostuser.Message) []byte {
	ack := m.Header.Flags&vhostuser.FlagNeedReply != 0
	r := vhostuser.Reply{Request: m.Header.Request}
	switch m.Header.Request {
	case vhostuser.GetFeatures:
		r.Value = b.cfg.Features
	case vhostuser.GetProtocolFeatures:
		r.Value = b.cfg.Protocol
	case vhostuser.GetQueueNum:
		r.Value = b.cfg.Queues
	case vhostuser.GetVringBase:
		s, err := vhostuser.ParseVringState(m.Payload)
		if err != nil {
			return nil
		}
		r.State = vhostuser.VringState{Index: s.Index, Num: b.cfg.VringBase}
	default:
		if !ack {
			return nil
		}
		if b.cfg.Refuse != nil {
			r.Value = b.cfg.Refuse(m.Header.Request)
		}
	}
	return vhostuser.EncodeReply(r, ack)
}

// Received returns the messages so far.
func (b *BackEnd) Received() []Received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Received(nil), b.received...)
}

// WaitFor blocks until the back end has received n messages (or stopped
// serving) and returns them.
func (b *BackEnd) WaitFor(n int) []Received {
	for {
		b.mu.Lock()
		got, ch := len(b.received), b.changed
		b.mu.Unlock()
		if got >= n {
			return b.Received()
		}
		select {
		case <-ch:
		case <-b.done:
			return b.Received()
		}
	}
}

// Requests returns the request ids received so far, in order.
func (b *BackEnd) Requests() []vhostuser.Request {
	var out []vhostuser.Request
	for _, m := range b.Received() {
		out = append(out, m.Request)
	}
	return out
}

// HangUp closes the back end's side, as a back end that exits.
func (b *BackEnd) HangUp() {
	b.c.Close()
	<-b.done
}

// Done is closed once the back end stopped serving.
func (b *BackEnd) Done() <-chan struct{} { return b.done }

// Close stops serving and closes every descriptor received.
func (b *BackEnd) Close() error {
	b.c.Close()
	<-b.done
	if b.peer != nil {
		b.peer.Close()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.received {
		for _, fd := range m.FDs {
			unix.Close(fd)
		}
	}
	b.received = nil
	return nil
}

// Signal adds 1 to the eventfd fd (one received with SET_VRING_CALL, say).
func Signal(fd int) error {
	var b [8]byte
	b[0] = 1
	if _, err := unix.Write(fd, b[:]); err != nil {
		return fmt.Errorf("signal fd %d: %w", fd, err)
	}
	return nil
}
