package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"sync"
	"syscall"

	"rainforest/ficm/control"
	"rainforest/rfcom"
)

// Client talks to the daemon listening on Socket (DefaultSocket if
// empty). The package functions Dial, Accept, ... are Client's methods
// with the socket path as an argument.
type Client struct {
	Socket string
}

func (cl Client) path() string {
	if cl.Socket == "" {
		return DefaultSocket
	}
	return cl.Socket
}

// Dial opens a channel to port of peer through the daemon at sock.
func Dial(ctx context.Context, sock string, peer int, port uint16) (*Conn, error) {
	return Client{Socket: sock}.Dial(ctx, peer, port)
}

// DialName opens a channel to port of the subOS called name on the board
// through the daemon at sock.
func DialName(ctx context.Context, sock, name string, port uint16) (*Conn, error) {
	return Client{Socket: sock}.DialName(ctx, name, port)
}

// Accept waits for one channel opened to port, through the daemon at
// sock, and returns it and its peer.
func Accept(ctx context.Context, sock string, port uint16) (*Conn, int, error) {
	return Client{Socket: sock}.Accept(ctx, port)
}

// Control subscribes to the supervisor's control messages through the
// daemon at sock.
func Control(ctx context.Context, sock string) (*Subscription, error) {
	return Client{Socket: sock}.Control(ctx)
}

// Info returns this peer's id, the group size, the FICM device's address
// and the board, from the daemon at sock.
func Info(ctx context.Context, sock string) (rfcom.GroupInfo, error) {
	return Client{Socket: sock}.Info(ctx)
}

// Running reports whether a daemon accepts connections on sock: false
// with a nil error if there is no socket or a stale one.
func Running(ctx context.Context, sock string) (bool, error) {
	c, err := Client{Socket: sock}.connect(ctx)
	if errors.Is(err, ErrNoDaemon) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	_ = c.Close()
	return true, nil
}

// Dial opens a channel to port of peer.
func (cl Client) Dial(ctx context.Context, peer int, port uint16) (*Conn, error) {
	p := int(port)
	c, r, err := cl.roundTrip(ctx, request{Op: opDial, Peer: &peer, Port: &p}, fmt.Sprintf("dial peer %d port %d", peer, port))
	if err != nil {
		return nil, err
	}
	return newConn(c, r, port)
}

// DialName opens a channel to port of the subOS called name.
func (cl Client) DialName(ctx context.Context, name string, port uint16) (*Conn, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty name", rfcom.ErrUnknownName)
	}
	p := int(port)
	c, r, err := cl.roundTrip(ctx, request{Op: opDial, To: name, Port: &p}, fmt.Sprintf("dial %s port %d", name, port))
	if err != nil {
		return nil, err
	}
	return newConn(c, r, port)
}

// Accept waits for one channel opened to port.
func (cl Client) Accept(ctx context.Context, port uint16) (*Conn, int, error) {
	p := int(port)
	c, r, err := cl.roundTrip(ctx, request{Op: opAccept, Port: &p}, fmt.Sprintf("accept on port %d", port))
	if err != nil {
		return nil, 0, err
	}
	conn, err := newConn(c, r, port)
	if err != nil {
		return nil, 0, err
	}
	return conn, conn.peer, nil
}

// Control subscribes to the supervisor's control messages.
func (cl Client) Control(ctx context.Context) (*Subscription, error) {
	c, _, err := cl.roundTrip(ctx, request{Op: opControl}, "control")
	if err != nil {
		return nil, err
	}
	return &Subscription{c: c, buf: make([]byte, MaxReply+1)}, nil
}

// Info returns this peer's id, the group size, the FICM device's address
// and the board (or why it is unavailable, in BoardErr).
func (cl Client) Info(ctx context.Context) (rfcom.GroupInfo, error) {
	c, r, err := cl.roundTrip(ctx, request{Op: opInfo}, "info")
	if err != nil {
		return rfcom.GroupInfo{}, err
	}
	_ = c.Close()
	if r.Self == nil || r.Peers == nil {
		return rfcom.GroupInfo{}, fmt.Errorf("%w: info reply without self or peers", ErrProtocol)
	}
	g := rfcom.GroupInfo{Self: *r.Self, Peers: *r.Peers, Address: r.Address}
	switch {
	case r.BoardError != "":
		g.BoardErr = remoteError(r.BoardErrorCode, r.BoardError)
	case r.Board == nil:
		return rfcom.GroupInfo{}, fmt.Errorf("%w: info reply without a board", ErrProtocol)
	default:
		if g.Board, err = r.Board.board(); err != nil {
			return rfcom.GroupInfo{}, err
		}
	}
	return g, nil
}

// connect connects to the daemon.
func (cl Client) connect(ctx context.Context) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", cl.path())
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w on %s: %w", ErrNoDaemon, cl.path(), err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("rfcom/local: connect to the daemon: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("rfcom/local: %T is not a Unix connection", c)
	}
	return uc, nil
}

// roundTrip sends req and reads the reply; the connection stays open on
// success.
// what names the operation in errors.
func (cl Client) roundTrip(ctx context.Context, req request, what string) (*net.UnixConn, reply, error) {
	c, err := cl.connect(ctx)
	if err != nil {
		return nil, reply{}, err
	}
	r, err := exchange(ctx, c, req, what)
	if err != nil {
		_ = c.Close()
		return nil, reply{}, err
	}
	return c, r, nil
}

func exchange(ctx context.Context, c *net.UnixConn, req request, what string) (reply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return reply{}, err
	}
	if err := withContext(ctx, c.SetWriteDeadline, func() error { _, err := c.Write(b); return err }); err != nil {
		return reply{}, fmt.Errorf("rfcom/local: %s: send request: %w", what, err)
	}
	buf := make([]byte, MaxReply+1)
	var n int
	err = withContext(ctx, c.SetReadDeadline, func() error {
		var err error
		n, err = c.Read(buf)
		return err
	})
	switch {
	case errors.Is(err, io.EOF):
		return reply{}, fmt.Errorf("%w before replying (%s)", ErrDaemonGone, what)
	case err != nil:
		return reply{}, fmt.Errorf("rfcom/local: %s: %w", what, err)
	case n > MaxReply:
		return reply{}, fmt.Errorf("%w: reply over %d bytes", ErrProtocol, MaxReply)
	}
	var r reply
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		return reply{}, fmt.Errorf("%w: reply: %w", ErrProtocol, err)
	}
	if r.Error != "" || r.Code != "" {
		return reply{}, remoteError(r.Code, r.Error)
	}
	return r, nil
}

// Conn is a channel through the daemon. One goroutine may read while
// another writes; concurrent reads (or writes) must be serialized by the
// caller.
type Conn struct {
	c    *net.UnixConn
	peer int
	port uint16
	buf  []byte
	once sync.Once
}

func newConn(c *net.UnixConn, r reply, port uint16) (*Conn, error) {
	if r.Peer == nil {
		_ = c.Close()
		return nil, fmt.Errorf("%w: reply without peer", ErrProtocol)
	}
	return &Conn{c: c, peer: *r.Peer, port: port}, nil
}

// Peer returns the peer id at the other end.
func (c *Conn) Peer() int { return c.peer }

// Port returns the listener port the channel was opened to.
func (c *Conn) Port() uint16 { return c.port }

// ReadFrame returns the next frame; io.EOF once the peer closed the
// channel (or the daemon ended it: the peer gone, an error).
func (c *Conn) ReadFrame(ctx context.Context) ([]byte, error) {
	if c.buf == nil {
		c.buf = make([]byte, rfcom.MaxFrame+1)
	}
	var n int
	err := withContext(ctx, c.c.SetReadDeadline, func() error {
		var err error
		n, err = c.c.Read(c.buf)
		return err
	})
	switch {
	case errors.Is(err, io.EOF):
		return nil, io.EOF
	case err != nil:
		return nil, err
	case n > rfcom.MaxFrame:
		return nil, fmt.Errorf("%w: frame over %d bytes", ErrProtocol, rfcom.MaxFrame)
	}
	return append([]byte(nil), c.buf[:n]...), nil
}

// Write sends p (1..rfcom.MaxFrame bytes) as one frame.
func (c *Conn) Write(p []byte) (int, error) { return c.WriteContext(context.Background(), p) }

// WriteContext sends p (1..rfcom.MaxFrame bytes) as one frame, waiting
// while the daemon does not take it (no credit) until ctx ends.
func (c *Conn) WriteContext(ctx context.Context, p []byte) (int, error) {
	if len(p) == 0 || len(p) > rfcom.MaxFrame {
		return 0, fmt.Errorf("%w: %d bytes (1..%d)", rfcom.ErrFrameSize, len(p), rfcom.MaxFrame)
	}
	var n int
	err := withContext(ctx, c.c.SetWriteDeadline, func() error {
		var err error
		n, err = c.c.Write(p)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("rfcom/local: write frame: %w", err)
	}
	return n, nil
}

// CloseWrite ends this side's stream: the daemon closes the channel once
// the frames before it are sent, then ends the stream ReadFrame reads
// (frames still in flight from the peer are dropped).
func (c *Conn) CloseWrite() error { return c.c.CloseWrite() }

// Close closes the connection; the daemon closes the channel.
func (c *Conn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() { err = c.c.Close() })
	return err
}

// Finish ends the stream (CloseWrite) and waits, until ctx ends, for the
// daemon to close the channel, discarding frames still arriving; then
// closes the connection. It returns once every frame written went out.
func (c *Conn) Finish(ctx context.Context) error {
	defer c.Close()
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("rfcom/local: close: %w", err)
	}
	for {
		if _, err := c.ReadFrame(ctx); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// Subscription receives the supervisor's control messages.
type Subscription struct {
	c   *net.UnixConn
	buf []byte
}

// Next returns the next control message (TEXT or BOARD), waiting until
// one arrives or ctx ends; ErrDaemonGone if the daemon ended the
// subscription.
func (s *Subscription) Next(ctx context.Context) (control.Control, error) {
	for {
		var n int
		err := withContext(ctx, s.c.SetReadDeadline, func() error {
			var err error
			n, err = s.c.Read(s.buf)
			return err
		})
		switch {
		case errors.Is(err, io.EOF):
			return control.Control{}, ErrDaemonGone
		case err != nil:
			return control.Control{}, err
		case n > MaxReply:
			return control.Control{}, fmt.Errorf("%w: control message over %d bytes", ErrProtocol, MaxReply)
		}
		var m controlMessage
		if err := json.Unmarshal(s.buf[:n], &m); err != nil {
			return control.Control{}, fmt.Errorf("%w: control message: %w", ErrProtocol, err)
		}
		switch m.Type {
		case "text":
			return control.Control{Type: control.TypeText, Text: m.Text}, nil
		case "board":
			return control.Control{Type: control.TypeBoard, Seq: m.Seq}, nil
		}
		// Unknown kinds (a newer daemon) are skipped.
	}
}

// Messages iterates over the control messages until ctx ends or an error
// (returned as the last pair).
func (s *Subscription) Messages(ctx context.Context) iter.Seq2[control.Control, error] {
	return func(yield func(control.Control, error) bool) {
		for {
			c, err := s.Next(ctx)
			if !yield(c, err) || err != nil {
				return
			}
		}
	}
}

// Close ends the subscription.
func (s *Subscription) Close() error { return s.c.Close() }
