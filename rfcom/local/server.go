package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"rainforest/ficm/control"
	"rainforest/rfcom"
)

// Server is an RFcom daemon: it serves local clients over one Node. Set
// its exported fields, then call Serve once.
type Server struct {
	// Node is the RFcom node the server owns the use of.
	Node *rfcom.Node
	// Log receives the server's events (nil: discarded).
	Log *slog.Logger
	// OnControl, if set, is called with every control message (TEXT and
	// BOARD) from one goroutine, before it is delivered.
	OnControl func(control.Control)
	// MaxClients bounds concurrent connections (0: DefaultMaxClients).
	MaxClients int

	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	pending []control.Control
	ports   map[uint16]*sharedListener
	clients int
}

// subscriber is a control client.
type subscriber struct {
	ch     chan control.Control
	cancel context.CancelFunc
}

// sharedListener is the Listener of one port and the clients waiting on
// it.
type sharedListener struct {
	l      *rfcom.Listener
	refs   int
	linger *time.Timer // closes l once nobody waited for acceptLinger
}

// acceptLinger is how long a port stays listened on after its last
// waiter, so that a client accepting in a loop, or several clients
// arriving one after the other, miss no channel.
const acceptLinger = time.Second

// Serve serves clients accepted on ln with n until ctx ends (see the
// package documentation), logging to log (nil: discarded). It closes ln
// and every client connection, and returns nil, when ctx ends.
func Serve(ctx context.Context, n *rfcom.Node, ln *net.UnixListener, log *slog.Logger) error {
	s := &Server{Node: n, Log: log}
	return s.Serve(ctx, ln)
}

// Serve serves clients accepted on ln until ctx ends, then closes ln and
// every client connection, waits for its goroutines and returns nil; it
// returns an error if accepting fails otherwise.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	if s.Node == nil || ln == nil {
		return errors.New("rfcom/local: Serve needs a Node and a listener")
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.MaxClients <= 0 {
		s.MaxClients = DefaultMaxClients
	}
	s.mu.Lock()
	s.subs = map[*subscriber]struct{}{}
	s.ports = map[uint16]*sharedListener{}
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer s.closePorts()
	defer wg.Wait()
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	defer ln.Close()

	wg.Go(func() { s.pumpControl(ctx) })
	backoff := time.Duration(0)
	for id := uint64(1); ; id++ {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !temporary(err) {
				return fmt.Errorf("rfcom/local: accept: %w", err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.Log.Warn("accept failed, retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		full := s.clients >= s.MaxClients
		if !full {
			s.clients++
		}
		s.mu.Unlock()
		if full {
			s.Log.Warn("too many clients: connection refused", "max", s.MaxClients)
			writeReply(conn, errorReply(fmt.Errorf("%w (%d)", ErrTooManyClients, s.MaxClients)))
			_ = conn.Close()
			continue
		}
		wg.Go(func() {
			defer func() {
				s.mu.Lock()
				s.clients--
				s.mu.Unlock()
			}()
			s.handle(ctx, conn, s.Log.With("client", id))
		})
	}
}

// temporary reports whether an accept error is worth retrying.
func temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// pumpControl takes the Node's control messages until ctx ends.
func (s *Server) pumpControl(ctx context.Context) {
	for {
		c, err := s.Node.Control(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.Log.Warn("control messages end", "err", err)
			}
			return
		}
		if s.OnControl != nil {
			s.OnControl(c)
		}
		s.publish(c)
	}
}

// publish delivers c to every subscriber, or keeps it for the next one.
func (s *Server) publish(c control.Control) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Log.Info("control message", "control", c.String(), "subscribers", len(s.subs))
	if len(s.subs) == 0 {
		if len(s.pending) == PendingControls {
			s.Log.Warn("control message dropped: nobody subscribes", "control", s.pending[0].String())
			s.pending = append(s.pending[:0], s.pending[1:]...)
		}
		s.pending = append(s.pending, c)
		return
	}
	for sub := range s.subs {
		select {
		case sub.ch <- c:
		default:
			s.Log.Warn("control subscriber too slow: disconnected")
			delete(s.subs, sub)
			sub.cancel()
		}
	}
}

// subscribe adds a subscriber, handing it the pending messages.
func (s *Server) subscribe(cancel context.CancelFunc) *subscriber {
	sub := &subscriber{ch: make(chan control.Control, PendingControls), cancel: cancel}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.pending {
		sub.ch <- c
	}
	s.pending = nil
	s.subs[sub] = struct{}{}
	return sub
}

func (s *Server) unsubscribe(sub *subscriber) {
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
}

// acquire returns the shared Listener of port; release must be called
// once the caller no longer waits on it.
func (s *Server) acquire(port uint16) (l *rfcom.Listener, release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.ports[port]
	if sl == nil {
		l, err := s.Node.Listen(port)
		if err != nil {
			return nil, nil, err
		}
		sl = &sharedListener{l: l}
		s.ports[port] = sl
	}
	sl.refs++
	if sl.linger != nil {
		sl.linger.Stop()
		sl.linger = nil
	}
	return sl.l, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		sl.refs--
		if sl.refs > 0 || s.ports[port] != sl {
			return
		}
		sl.linger = time.AfterFunc(acceptLinger, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if sl.refs == 0 && s.ports[port] == sl {
				delete(s.ports, port)
				_ = sl.l.Close()
			}
		})
	}, nil
}

// closePorts closes every listener (Serve's end).
func (s *Server) closePorts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, sl := range s.ports {
		if sl.linger != nil {
			sl.linger.Stop()
		}
		delete(s.ports, port)
		_ = sl.l.Close()
	}
}

// peerAllowed checks the client's credentials: root or the daemon's user.
func peerAllowed(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("uid %d is neither root nor the daemon's user", cred.Uid)
	}
	return nil
}

// handle serves one client connection.
func (s *Server) handle(ctx context.Context, conn *net.UnixConn, log *slog.Logger) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if err := peerAllowed(conn); err != nil {
		log.Warn("client refused", "err", err)
		writeReply(conn, errorReply(fmt.Errorf("rfcom daemon: permission denied: %w", err)))
		return
	}
	req, err := readRequest(conn)
	switch {
	case errors.Is(err, ErrBadRequest):
		log.Warn("bad request", "err", err)
		writeReply(conn, errorReply(err))
		return
	case err != nil:
		log.Debug("client left before its request", "err", err)
		return
	}
	log = log.With("op", req.Op)
	switch req.Op {
	case opDial:
		s.serveDial(ctx, conn, req, log)
	case opAccept:
		s.serveAccept(ctx, conn, uint16(*req.Port), log)
	case opControl:
		s.serveControl(ctx, cancel, conn, log)
	case opInfo:
		s.serveInfo(conn, log)
	}
}

// readRequest reads and validates the client's request.
func readRequest(conn *net.UnixConn) (request, error) {
	buf := make([]byte, MaxRequest+1)
	_ = conn.SetReadDeadline(time.Now().Add(requestTimeout))
	n, err := conn.Read(buf)
	_ = conn.SetReadDeadline(time.Time{})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return request{}, fmt.Errorf("%w: no request within %v", ErrBadRequest, requestTimeout)
	case err != nil:
		return request{}, err
	case n > MaxRequest:
		return request{}, fmt.Errorf("%w: request over %d bytes", ErrBadRequest, MaxRequest)
	}
	return parseRequest(buf[:n])
}

func errorReply(err error) reply {
	return reply{Error: err.Error(), Code: codeOf(err)}
}

// writeReply sends v as one JSON message; false if it could not.
func writeReply(conn *net.UnixConn, v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	_ = conn.SetWriteDeadline(time.Now().Add(replyTimeout))
	_, err = conn.Write(b)
	_ = conn.SetWriteDeadline(time.Time{})
	return err == nil
}

// whileWaiting runs op with a context that ends when ctx does or when
// the client sends anything or leaves (gone), which it must not do before
// its reply.
func whileWaiting(ctx context.Context, conn *net.UnixConn, op func(context.Context) (*rfcom.Channel, error)) (c *rfcom.Channel, gone bool, err error) {
	opCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := conn.Read(b[:])
		watch <- err
		cancel()
	}()
	c, err = op(opCtx)
	_ = conn.SetReadDeadline(longAgo())
	werr := <-watch
	_ = conn.SetReadDeadline(time.Time{})
	gone = !errors.Is(werr, os.ErrDeadlineExceeded)
	if gone && c != nil {
		_ = c.Close()
		c = nil
	}
	return c, gone, err
}

func (s *Server) serveDial(ctx context.Context, conn *net.UnixConn, req request, log *slog.Logger) {
	port := uint16(*req.Port)
	var peer int
	if req.To != "" {
		p, err := s.Node.Lookup(req.To)
		if err != nil {
			log.Info("dial failed", "to", req.To, "err", err)
			writeReply(conn, errorReply(err))
			return
		}
		peer = p
	} else {
		peer = *req.Peer
	}
	log = log.With("peer", peer, "port", port)
	c, gone, err := whileWaiting(ctx, conn, func(ctx context.Context) (*rfcom.Channel, error) {
		return s.Node.Dial(ctx, peer, port)
	})
	switch {
	case gone:
		log.Info("client left while dialing")
		return
	case err != nil:
		log.Info("dial failed", "err", err)
		writeReply(conn, errorReply(err))
		return
	}
	s.pipe(ctx, conn, c, log)
}

func (s *Server) serveAccept(ctx context.Context, conn *net.UnixConn, port uint16, log *slog.Logger) {
	log = log.With("port", port)
	l, release, err := s.acquire(port)
	if err != nil {
		log.Warn("listen failed", "err", err)
		writeReply(conn, errorReply(err))
		return
	}
	c, gone, err := whileWaiting(ctx, conn, l.Accept)
	release()
	switch {
	case gone:
		log.Info("client left while accepting")
		return
	case err != nil:
		log.Info("accept failed", "err", err)
		writeReply(conn, errorReply(err))
		return
	}
	s.pipe(ctx, conn, c, log.With("peer", c.Peer()))
}

// pipe replies with the channel's peer and joins the client and the
// channel until either ends; it closes both.
func (s *Server) pipe(ctx context.Context, conn *net.UnixConn, c *rfcom.Channel, log *slog.Logger) {
	defer c.Close()
	peer := c.Peer()
	if !writeReply(conn, reply{Peer: &peer}) {
		log.Info("client left before the reply")
		return
	}
	log.Debug("channel open", "channel", c.ID())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	var wg sync.WaitGroup
	// Client to channel. Once the channel takes no more frames, the
	// client's are discarded until its end of stream: closing a Unix
	// socket with unread messages would reset the connection and drop
	// the frames on their way to the client.
	wg.Go(func() {
		buf := make([]byte, rfcom.MaxFrame+1)
		discard := false
		for {
			n, err := conn.Read(buf)
			switch {
			case errors.Is(err, io.EOF):
				// End of the client's stream: close the channel after
				// the frames written; the reader below ends.
				if err := c.Close(); err != nil {
					log.Info("close channel", "err", err)
				}
				return
			case err != nil:
				if ctx.Err() == nil {
					log.Info("client read failed", "err", err)
				}
				cancel()
				return
			case n > rfcom.MaxFrame:
				log.Warn("client frame too long: connection closed", "max", rfcom.MaxFrame)
				cancel()
				return
			case discard:
				continue
			}
			if _, err := c.WriteContext(ctx, buf[:n]); err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Info("channel write failed: discarding the client's frames", "err", err)
				discard = true
			}
		}
	})
	// Channel to client; at the channel's end, the client's stream ends.
	wg.Go(func() {
		for {
			f, err := c.ReadFrame(ctx)
			if err != nil {
				switch {
				case ctx.Err() != nil:
					return
				case errors.Is(err, io.EOF):
					log.Debug("peer closed the channel")
				case errors.Is(err, rfcom.ErrClosed):
					log.Debug("client closed the channel")
				default:
					log.Info("channel read failed", "err", err)
				}
				if err := conn.CloseWrite(); err != nil {
					cancel()
				}
				return
			}
			if _, err := conn.Write(f); err != nil {
				if ctx.Err() == nil {
					log.Info("client write failed", "err", err)
				}
				cancel()
				return
			}
		}
	})
	wg.Wait()
}

func (s *Server) serveControl(ctx context.Context, cancel context.CancelFunc, conn *net.UnixConn, log *slog.Logger) {
	sub := s.subscribe(cancel)
	defer s.unsubscribe(sub)
	if !writeReply(conn, reply{}) {
		return
	}
	// The client sends nothing: anything, or its end of stream, ends the
	// subscription.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		var b [1]byte
		_, _ = conn.Read(b[:])
		cancel()
	})
	log.Debug("control subscriber")
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-sub.ch:
			m := controlMessage{Type: "board", Seq: c.Seq}
			if c.Type == control.TypeText {
				m = controlMessage{Type: "text", Text: c.Text}
			}
			b, err := json.Marshal(m)
			if err != nil {
				continue
			}
			if _, err := conn.Write(b); err != nil {
				if ctx.Err() == nil {
					log.Info("control subscriber write failed", "err", err)
				}
				return
			}
		}
	}
}

func (s *Server) serveInfo(conn *net.UnixConn, log *slog.Logger) {
	self, peers := s.Node.Self(), s.Node.Peers()
	r := reply{Self: &self, Peers: &peers}
	if d := s.Node.Device(); d != nil {
		r.Address = d.Info().Address
	}
	b, err := s.Node.Board()
	if err != nil {
		r.BoardError, r.BoardErrorCode = err.Error(), codeOf(err)
	} else {
		r.Board = boardJSON(b)
	}
	if !writeReply(conn, r) {
		log.Info("client left before the info reply")
	}
}

// Listen makes the daemon's socket at path (SOCK_SEQPACKET, mode 0600,
// bound in a private directory and renamed into place, so nobody connects
// before the mode is set). A stale socket at path (nobody accepts on it)
// is replaced; a live one, or anything that is not a socket, is an error.
// The returned remove function deletes the socket file if it is still
// this listener's; call it after Serve returned.
func Listen(path string) (ln *net.UnixListener, remove func(), err error) {
	if path == "" {
		path = DefaultSocket
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, nil, fmt.Errorf("rfcom/local: %s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unixpacket", path, time.Second)
		if err == nil {
			_ = c.Close()
			return nil, nil, fmt.Errorf("rfcom/local: a daemon already listens on %s", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil, fmt.Errorf("rfcom/local: probe %s: %w", path, err)
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".rfcom-sock-")
	if err != nil {
		return nil, nil, fmt.Errorf("rfcom/local: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, nil, fmt.Errorf("rfcom/local: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, func(), error) {
		_ = ln.Close()
		return nil, nil, fmt.Errorf("rfcom/local: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	mine, err := os.Lstat(tmp)
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return ln, func() {
		if fi, err := os.Lstat(path); err == nil && os.SameFile(fi, mine) {
			_ = os.Remove(path)
		}
	}, nil
}
