// Package consolesock makes a subOS's console attachable: it serves the
// console on a Unix socket (mode 0600) to a bounded number of clients.
//
// Guest output never waits for a client: Write, which runs on a vCPU
// thread under the UART's lock, only copies into each client's bounded
// buffer; each client has its own writer goroutine, owned by the Server,
// that drains the buffer to the socket. A client whose buffer is full (it
// does not read, or reads too slowly) is told so, if its socket takes the
// message, and disconnected. Connections beyond Options.MaxClients, and
// peers that Options.Allow refuses, are told why and closed. Bytes clients
// send are handed to the guest as console input at a bounded rate (reading
// from the client pauses beyond it). The client side is
// rainforest/rfm/consoleclient.
package consolesock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"rainforest/internal/peercred"
	"rainforest/internal/tokenbucket"
)

// Defaults of Options.
const (
	DefaultMaxClients = 8
	DefaultBufferSize = 64 << 10 // bytes of output waiting per client
	DefaultInputRate  = 16 << 10 // bytes a second, all clients together
	inputBurst        = 4 << 10  // bytes
	readSize          = 1024     // bytes read from a client at once
	// noticeTimeout bounds the parting message to a client (on that
	// client's goroutine, never the guest's).
	noticeTimeout = time.Second
)

// Options bound a Server; zero fields take the defaults.
type Options struct {
	// MaxClients caps the clients attached at once (DefaultMaxClients).
	MaxClients int
	// BufferSize is each client's output buffer in bytes
	// (DefaultBufferSize); a client that lets it fill is disconnected.
	BufferSize int
	// InputRate caps console input from all clients, in bytes a second
	// (DefaultInputRate).
	InputRate int
	// Allow, when set, is asked with the peer's credentials as the kernel
	// recorded them at connect (SO_PEERCRED, SO_PEERGROUPS: no /proc
	// lookup, which a jailed VMM could not make) before a client is
	// accepted; false refuses it.
	Allow func(peercred.Cred) bool
}

// ErrOptions is returned for invalid Options.
var ErrOptions = errors.New("consolesock: invalid options")

// Stats count a Server's clients.
type Stats struct {
	Clients int    // attached now
	Dropped uint64 // disconnected for not keeping up
	Refused uint64 // refused: too many clients, or not allowed
}

// Server serves one console socket.
type Server struct {
	ln    *net.UnixListener
	input func([]byte)
	opt   Options
	in    *tokenbucket.Bucket
	done  chan struct{} // closed at shutdown

	mu      sync.Mutex
	clients map[*client]struct{}
	closed  bool
	dropped uint64
	refused uint64

	wg       sync.WaitGroup // accept and per-client goroutines
	stopCtx  func() bool
	shutOnce sync.Once
	shutErr  error
}

// client is one attached connection: output waits in buf for its writer
// goroutine.
type client struct {
	c    *net.UnixConn
	wake chan struct{} // capacity 1: output or a state change waits

	mu     sync.Mutex
	buf    []byte
	slow   bool // buffer overflowed: say so and disconnect
	closed bool
}

func (cl *client) signal() {
	select {
	case cl.wake <- struct{}{}:
	default:
	}
}

// Listen creates the socket at path (replacing a stale one), mode 0600,
// and serves it with the default Options (see Serve).
func Listen(ctx context.Context, path string, input func([]byte)) (*Server, error) {
	ln, err := NewListener(path, peercred.NoGroup)
	if err != nil {
		return nil, err
	}
	s, err := Serve(ctx, ln, input, Options{})
	if err != nil {
		ln.Close()
		return nil, err
	}
	return s, nil
}

// NewListener creates the console socket at path, replacing a stale
// socket (but nothing else): mode 0600, or 0660 owned by group when group
// is not peercred.NoGroup, from birth. A supervisor makes it for a jailed
// VMM, which gets the listener as a descriptor and calls Serve.
func NewListener(path string, group int) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("console socket %s: exists and is not a socket", path)
		}
		os.Remove(path)
	}
	mode := os.FileMode(0o600)
	if group != peercred.NoGroup {
		mode = 0o660
	}
	ln, err := peercred.ListenUnix(path, mode, group)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return ln, nil
}

// Serve accepts clients on ln until ctx ends or Close is called; the
// Server takes ln and closes it then. input receives what clients type.
func Serve(ctx context.Context, ln *net.UnixListener, input func([]byte), opt Options) (*Server, error) {
	if opt.MaxClients == 0 {
		opt.MaxClients = DefaultMaxClients
	}
	if opt.BufferSize == 0 {
		opt.BufferSize = DefaultBufferSize
	}
	if opt.InputRate == 0 {
		opt.InputRate = DefaultInputRate
	}
	if opt.MaxClients < 0 || opt.BufferSize < 0 || opt.InputRate < 0 {
		return nil, fmt.Errorf("%w: %d clients, buffer %d, input rate %d", ErrOptions, opt.MaxClients, opt.BufferSize, opt.InputRate)
	}
	s := &Server{ln: ln, input: input, opt: opt, in: tokenbucket.New(tokenbucket.Limit{Rate: uint64(opt.InputRate), Burst: inputBurst}, time.Now()),
		done: make(chan struct{}), clients: map[*client]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	s.stopCtx = context.AfterFunc(ctx, func() { s.shutdown() })
	return s, nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		if s.opt.Allow != nil {
			cred, err := peercred.Of(c)
			if err != nil || !s.opt.Allow(cred) {
				s.refuse(c, "[rfm: console access refused]\r\n")
				continue
			}
		}
		cl := &client{c: c, wake: make(chan struct{}, 1)}
		s.mu.Lock()
		full := len(s.clients) >= s.opt.MaxClients
		if !full && !s.closed {
			s.clients[cl] = struct{}{}
			s.wg.Add(2)
		}
		closed := s.closed
		s.mu.Unlock()
		switch {
		case closed:
			c.Close()
		case full:
			s.refuse(c, fmt.Sprintf("[rfm: too many console clients (%d attached); try later]\r\n", s.opt.MaxClients))
		default:
			go s.read(cl)
			go s.write(cl)
		}
	}
}

// refuse tells a fresh connection why it is closed (its send buffer is
// empty, so the write does not wait) and closes it.
func (s *Server) refuse(c *net.UnixConn, why string) {
	s.mu.Lock()
	s.refused++
	s.mu.Unlock()
	c.SetWriteDeadline(time.Now().Add(noticeTimeout))
	c.Write([]byte(why))
	c.Close()
}

// read hands what the client sends to the guest, at most at the input
// rate: beyond it, reading waits (the client's writes back up).
func (s *Server) read(cl *client) {
	defer s.wg.Done()
	defer s.remove(cl)
	buf := make([]byte, readSize)
	for {
		n, err := cl.c.Read(buf)
		for b := buf[:n]; len(b) > 0; {
			got := int(s.in.TakeUpTo(time.Now(), uint64(len(b))))
			if got > 0 {
				if s.input != nil {
					s.input(append([]byte(nil), b[:got]...))
				}
				b = b[got:]
				continue
			}
			t := time.NewTimer(s.in.Delay(time.Now(), uint64(len(b))))
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// write drains the client's buffer to its socket until the client goes.
func (s *Server) write(cl *client) {
	defer s.wg.Done()
	defer s.remove(cl)
	var out []byte
	for {
		select {
		case <-cl.wake:
		case <-s.done:
			return
		}
		cl.mu.Lock()
		out, cl.buf = cl.buf, out[:0]
		slow, closed := cl.slow, cl.closed
		cl.mu.Unlock()
		if closed {
			return
		}
		if slow {
			goodbye(cl)
			return
		}
		if _, err := cl.c.Write(out); err != nil {
			cl.mu.Lock()
			slow = cl.slow // Write woke us with a past deadline
			cl.mu.Unlock()
			if slow {
				goodbye(cl)
			}
			return
		}
	}
}

// goodbye tells a client that could not keep up why it is disconnected,
// if its socket takes the message in time.
func goodbye(cl *client) {
	cl.c.SetWriteDeadline(time.Now().Add(noticeTimeout))
	cl.c.Write([]byte("\r\n[rfm: console client too slow; disconnected]\r\n"))
}

// remove detaches a client and closes its connection (both of its
// goroutines then end).
func (s *Server) remove(cl *client) {
	s.mu.Lock()
	delete(s.clients, cl)
	s.mu.Unlock()
	cl.mu.Lock()
	cl.closed = true
	cl.buf = nil
	cl.mu.Unlock()
	cl.signal()
	cl.c.Close()
}

// Write copies guest output into every client's buffer; it never waits
// for a socket and never fails. A client whose buffer would overflow is
// marked to be disconnected (its writer goroutine does that).
func (s *Server) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cl := range s.clients {
		cl.mu.Lock()
		switch {
		case cl.closed || cl.slow:
		case len(cl.buf)+len(p) > s.opt.BufferSize:
			cl.slow, cl.buf = true, nil
			s.dropped++
			// Wake a writer blocked on the socket; it then says goodbye.
			cl.c.SetWriteDeadline(time.Now())
		default:
			cl.buf = append(cl.buf, p...)
		}
		cl.mu.Unlock()
		cl.signal()
	}
	return len(p), nil
}

// Clients returns the number of attached clients.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// Stats returns the counts of clients attached, dropped and refused.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Clients: len(s.clients), Dropped: s.dropped, Refused: s.refused}
}

// Close stops listening, disconnects clients, waits for their goroutines
// and removes the socket (when the listener was made here: one received as
// a descriptor leaves its path to its maker).
func (s *Server) Close() error {
	s.stopCtx()
	err := s.shutdown()
	s.wg.Wait()
	return err
}

func (s *Server) shutdown() error {
	s.shutOnce.Do(func() {
		err := s.ln.Close() // also unlinks the socket file
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		s.shutErr = err
		s.mu.Lock()
		s.closed = true
		close(s.done)
		cls := make([]*client, 0, len(s.clients))
		for cl := range s.clients {
			cls = append(cls, cl)
		}
		s.mu.Unlock()
		for _, cl := range cls {
			cl.c.Close()
		}
	})
	return s.shutErr
}
