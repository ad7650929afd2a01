// Package consolesock makes a subOS's console attachable: it serves the
// console on a Unix socket (mode 0600) to any number of clients. Output the
// guest writes goes to every attached client (a client that cannot keep up
// is disconnected, never the guest slowed down); bytes a client sends are
// handed to the guest as console input.
package consolesock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"rainforest/internal/peercred"
)

// writeTimeout bounds how long guest output waits for one client.
const writeTimeout = 200 * time.Millisecond

// Server serves one console socket.
type Server struct {
	ln    *net.UnixListener
	input func([]byte)

	mu      sync.Mutex
	clients map[*net.UnixConn]struct{}
	wg      sync.WaitGroup // accept and per-client goroutines
	stopCtx func() bool
}

// Listen creates the socket at path (replacing a stale one) and serves it
// (Serve) until ctx ends or Close is called. input receives what clients
// type.
func Listen(ctx context.Context, path string, input func([]byte)) (*Server, error) {
	ln, err := NewListener(path)
	if err != nil {
		return nil, err
	}
	return Serve(ctx, ln, input), nil
}

// NewListener creates the console socket at path, mode 0600, replacing a
// stale socket (but nothing else). A supervisor makes it for a jailed VMM,
// which gets the listener as a descriptor and calls Serve.
func NewListener(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("console socket %s: exists and is not a socket", path)
		}
		os.Remove(path)
	}
	ln, err := peercred.ListenUnix(path, 0o600, -1) // 0600 from birth
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return ln, nil
}

// Serve accepts clients on ln until ctx ends or Close is called; the
// server takes charge of ln. input receives what clients type.
func Serve(ctx context.Context, ln *net.UnixListener, input func([]byte)) *Server {
	s := &Server{ln: ln, input: input, clients: map[*net.UnixConn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	s.stopCtx = context.AfterFunc(ctx, func() { s.shutdown() })
	return s
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.clients[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *Server) serve(c *net.UnixConn) {
	defer s.wg.Done()
	defer s.drop(c)
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		if n > 0 && s.input != nil {
			s.input(append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			return
		}
	}
}

func (s *Server) drop(c *net.UnixConn) {
	s.mu.Lock()
	delete(s.clients, c)
	s.mu.Unlock()
	c.Close()
}

// Write sends guest output to every client; it never fails.
func (s *Server) Write(p []byte) (int, error) {
	s.mu.Lock()
	clients := make([]*net.UnixConn, 0, len(s.clients))
	for c := range s.clients {
		clients = append(clients, c)
	}
	s.mu.Unlock()
	for _, c := range clients {
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(p); err != nil {
			s.drop(c)
		}
	}
	return len(p), nil
}

// Clients returns the number of attached clients.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
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
	err := s.ln.Close() // also unlinks the socket file
	s.mu.Lock()
	for c := range s.clients {
		c.Close()
	}
	s.mu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Attach connects to the console socket at path and copies in to the
// console and the console to out until ctx ends or the socket closes.
func Attach(ctx context.Context, path string, in io.Reader, out io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("attach console: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	go func() { io.Copy(c, in) }() // ends when in ends or c is closed
	_, err = io.Copy(out, c)
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
