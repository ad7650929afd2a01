package rfcom

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"rainforest/ficm/queue"
)

type chanState int

const (
	stateDialing chanState = iota
	stateOpen
	stateRefused
)

// closeTimeout bounds how long Close waits to send CLOSE.
const closeTimeout = 5 * time.Second

// Channel is one end of a framed, flow-controlled channel to another
// peer. Write and Read may run concurrently with each other; concurrent
// Writes are serialized frame by frame, concurrent Reads each take a frame.
type Channel struct {
	n      *Node
	peer   int
	port   uint16
	local  uint16
	window int

	wmu sync.Mutex // one frame at a time

	mu           sync.Mutex
	notify       chan struct{} // closed and replaced on every change
	state        chanState
	reason       uint8 // REFUSE reason
	ready        bool  // the peer knows the channel (ACCEPT sent or received)
	remote       uint16
	credit       int64
	frames       [][]byte
	assembling   bool
	partial      []byte
	want         int
	inflight     int // bytes received and not yet returned with CREDIT
	owed         int // bytes consumed and not yet returned
	localClosed  bool
	remoteClosed bool
	err          error // peer gone or node closed
	rdl, wdl     time.Time
}

func newChannel(n *Node, peer int, port uint16) *Channel {
	return &Channel{n: n, peer: peer, port: port, window: n.window, notify: make(chan struct{})}
}

// Peer returns the peer id at the other end.
func (c *Channel) Peer() int { return c.peer }

// Port returns the listener port the channel was opened to.
func (c *Channel) Port() uint16 { return c.port }

// ID returns the channel's local id.
func (c *Channel) ID() uint16 { return c.local }

// broadcast wakes every waiter (c.mu held).
func (c *Channel) broadcast() {
	close(c.notify)
	c.notify = make(chan struct{})
}

// fail ends the channel with err unless it already failed.
func (c *Channel) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.assembling, c.partial = false, nil
	c.broadcast()
	c.mu.Unlock()
}

// failure returns the error ending the channel, if any.
func (c *Channel) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// waitFor waits until cond (evaluated with c.mu held) is true, or ctx ends.
func (c *Channel) waitFor(ctx context.Context, cond func() bool) error {
	for {
		c.mu.Lock()
		ok, ch := cond(), c.notify
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// SetDeadline sets the read and write deadlines of Read and Write.
func (c *Channel) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl, c.wdl = t, t
	c.mu.Unlock()
	return nil
}

// SetReadDeadline sets the deadline of Read (zero: none).
func (c *Channel) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline sets the deadline of Write (zero: none).
func (c *Channel) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return nil
}

func (c *Channel) deadlineCtx(read bool) (context.Context, context.CancelFunc) {
	c.mu.Lock()
	dl := c.wdl
	if read {
		dl = c.rdl
	}
	c.mu.Unlock()
	if dl.IsZero() {
		return context.Background(), func() {}
	}
	return context.WithDeadline(context.Background(), dl)
}

// Write sends p as one frame (see WriteContext), bounded by the write
// deadline.
func (c *Channel) Write(p []byte) (int, error) {
	ctx, cancel := c.deadlineCtx(false)
	defer cancel()
	return c.WriteContext(ctx, p)
}

// WriteContext sends p (1..MaxFrame bytes) as one frame, waiting for
// credit and ring space. If ctx ends in the middle of a frame, the part
// already sent is dropped by the receiver.
func (c *Channel) WriteContext(ctx context.Context, p []byte) (int, error) {
	if len(p) == 0 || len(p) > MaxFrame {
		return 0, fmt.Errorf("%w: %d bytes (1..%d)", ErrFrameSize, len(p), MaxFrame)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for off := 0; off < len(p); {
		need := min(len(p)-off, FragmentData)
		if off == 0 {
			need = min(len(p), FirstFragmentData)
		}
		var werr error
		err := c.waitFor(ctx, func() bool {
			switch {
			case c.localClosed:
				werr = ErrClosed
			case c.err != nil:
				werr = c.err
			case c.remoteClosed:
				werr = fmt.Errorf("%w: by peer %d", ErrClosed, c.peer)
			case c.ready && c.credit >= int64(need):
				c.credit -= int64(need)
				return true
			default:
				return false
			}
			return true
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			return off, err
		}
		c.mu.Lock()
		remote := c.remote
		c.mu.Unlock()
		m, k := dataMsg(remote, p, off)
		if err := c.n.send(ctx, c.peer, m, c.failure); err != nil {
			return off, err
		}
		off += k
	}
	return len(p), nil
}

// Read receives one frame into p (see ReadContext), bounded by the read
// deadline.
func (c *Channel) Read(p []byte) (int, error) {
	ctx, cancel := c.deadlineCtx(true)
	defer cancel()
	return c.ReadContext(ctx, p)
}

// ReadContext receives the next frame into p and returns its length. If p
// is shorter than the frame it returns ErrShortBuffer and keeps the frame.
// After the peer closed the channel it returns the frames already received,
// then io.EOF; after the peer is gone, ErrPeerGone.
func (c *Channel) ReadContext(ctx context.Context, p []byte) (int, error) {
	f, err := c.next(ctx, len(p))
	if err != nil {
		return 0, err
	}
	return copy(p, f), nil
}

// ReadFrame receives the next frame (see ReadContext) into a new slice.
func (c *Channel) ReadFrame(ctx context.Context) ([]byte, error) {
	return c.next(ctx, -1)
}

// next takes the next frame if it fits limit bytes (limit < 0: any).
func (c *Channel) next(ctx context.Context, limit int) ([]byte, error) {
	var (
		frame []byte
		rerr  error
		grant int
		dst   uint16
	)
	err := c.waitFor(ctx, func() bool {
		switch {
		case c.localClosed:
			rerr = ErrClosed
		case len(c.frames) > 0:
			f := c.frames[0]
			if limit >= 0 && len(f) > limit {
				rerr = fmt.Errorf("%w: %d-byte buffer for a %d-byte frame", ErrShortBuffer, limit, len(f))
				return true
			}
			frame = f
			c.frames[0] = nil
			c.frames = c.frames[1:]
			c.owed += len(f)
			if c.err == nil && !c.remoteClosed && (c.owed >= c.window/4 || len(c.frames) == 0) {
				grant, dst = c.owed, c.remote
				c.inflight -= c.owed
				c.owed = 0
			}
		case c.remoteClosed:
			rerr = io.EOF
		case c.err != nil:
			rerr = c.err
		default:
			return false
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	if grant > 0 {
		// A lost grant only slows the peer down if it is gone anyway.
		_ = c.n.send(context.Background(), c.peer, creditMsg(dst, uint32(grant)), c.failure)
	}
	return frame, nil
}

// Close ends the channel: it tells the peer (whose Read then returns
// io.EOF after the frames in flight) and fails local Reads and Writes with
// ErrClosed. Frames not yet read are discarded.
func (c *Channel) Close() error {
	n := c.n
	n.mu.Lock()
	c.mu.Lock()
	if c.localClosed {
		c.mu.Unlock()
		n.mu.Unlock()
		return nil
	}
	c.localClosed = true
	send := c.err == nil && c.state == stateOpen
	if c.remoteClosed || c.err != nil {
		n.removeLocked(c.local, c)
	}
	c.frames = nil
	c.broadcast()
	c.mu.Unlock()
	n.mu.Unlock()
	if !send {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	// An accepted channel's ACCEPT may still wait in the dispatcher's
	// outbox: CLOSE must not overtake it.
	if err := c.waitFor(ctx, func() bool { return c.ready || c.err != nil }); err != nil {
		return fmt.Errorf("rfcom: close channel %d: %w", c.local, err)
	}
	c.mu.Lock()
	remote, ferr := c.remote, c.err
	c.mu.Unlock()
	if ferr != nil {
		return nil
	}
	if err := n.send(ctx, c.peer, closeMsg(remote), c.failure); err != nil && c.failure() == nil {
		return fmt.Errorf("rfcom: close channel %d: %w", c.local, err)
	}
	return nil
}

// markReady records that the peer knows the channel (ACCEPT went out).
func (c *Channel) markReady() {
	c.mu.Lock()
	c.ready = true
	c.broadcast()
	c.mu.Unlock()
}

// Dial opens a channel to the listener on port of peer. It returns
// ErrRefused when the peer has no listener there, ErrPeerGone when the
// peer is not alive.
func (n *Node) Dial(ctx context.Context, peer int, port uint16) (*Channel, error) {
	if err := n.checkPeer(peer); err != nil {
		return nil, err
	}
	if !n.Alive(peer) {
		return nil, fmt.Errorf("%w: peer %d is not alive", ErrPeerGone, peer)
	}
	c := newChannel(n, peer, port)
	n.mu.Lock()
	select {
	case <-n.done:
		n.mu.Unlock()
		return nil, ErrClosed
	default:
	}
	ok := n.addLocked(c)
	n.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("rfcom: dial peer %d: every channel id is in use", peer)
	}
	if err := n.send(ctx, peer, openMsg(port, c.local, uint32(n.window)), nil); err != nil {
		n.forget(c)
		return nil, fmt.Errorf("rfcom: dial peer %d port %d: %w", peer, port, err)
	}
	err := c.waitFor(ctx, func() bool { return c.state != stateDialing || c.err != nil })
	n.mu.Lock()
	c.mu.Lock()
	state, reason, cerr := c.state, c.reason, c.err
	if state != stateOpen {
		n.removeLocked(c.local, c)
	}
	c.mu.Unlock()
	n.mu.Unlock()
	switch {
	case state == stateOpen:
		return c, nil
	case state == stateRefused:
		return nil, fmt.Errorf("%w: peer %d port %d (%s)", ErrRefused, peer, port, refuseReason(reason))
	case cerr != nil:
		return nil, fmt.Errorf("rfcom: dial peer %d port %d: %w", peer, port, cerr)
	}
	return nil, fmt.Errorf("rfcom: dial peer %d port %d: %w", peer, port, err)
}

func refuseReason(r uint8) string {
	switch r {
	case RefuseNoListener:
		return "no listener"
	case RefuseBacklogFull:
		return "backlog full"
	case RefuseNoChannelID:
		return "no free channel id"
	}
	return fmt.Sprintf("reason %d", r)
}

// forget removes c from the node.
func (n *Node) forget(c *Channel) {
	n.mu.Lock()
	n.removeLocked(c.local, c)
	n.mu.Unlock()
}

// Listener accepts channels opened to one port.
type Listener struct {
	n       *Node
	port    uint16
	backlog chan *Channel
	closed  chan struct{}
	isShut  bool // n.mu
}

// Listen starts accepting channels on port.
func (n *Node) Listen(port uint16) (*Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	select {
	case <-n.done:
		return nil, ErrClosed
	default:
	}
	if _, used := n.listeners[port]; used {
		return nil, fmt.Errorf("%w: %d", ErrPortInUse, port)
	}
	l := &Listener{n: n, port: port, backlog: make(chan *Channel, backlogSize), closed: make(chan struct{})}
	n.listeners[port] = l
	return l, nil
}

// Port returns the listener's port.
func (l *Listener) Port() uint16 { return l.port }

// Accept returns the next channel opened to the port.
func (l *Listener) Accept(ctx context.Context) (*Channel, error) {
	select {
	case c := <-l.backlog:
		return c, nil
	default:
	}
	select {
	case c := <-l.backlog:
		return c, nil
	case <-l.closed:
		return nil, ErrClosed
	case <-l.n.done:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// closeLocked marks l closed (n.mu held).
func (l *Listener) closeLocked() {
	if !l.isShut {
		l.isShut = true
		close(l.closed)
	}
}

// Close stops accepting; channels not yet accepted are closed.
func (l *Listener) Close() error {
	n := l.n
	n.mu.Lock()
	if n.listeners[l.port] == l {
		delete(n.listeners, l.port)
	}
	l.closeLocked()
	n.mu.Unlock()
	for {
		select {
		case c := <-l.backlog:
			_ = c.Close()
		default:
			return nil
		}
	}
}

// handleChannel processes a channel protocol message (dispatcher).
func (n *Node) handleChannel(from int, m *queue.Message) {
	w, err := decodeWire(m)
	if err != nil {
		n.st.malformed.Add(1)
		return
	}
	if w.typ == TypeOpen {
		n.handleOpen(from, w)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.channels[w.dst]
	if c == nil || c.peer != from {
		n.st.unknownChannel.Add(1)
		if w.typ == TypeAccept {
			// A dial that gave up: free the peer's channel.
			n.reply(from, closeMsg(w.src), nil)
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.typ == TypeAccept || w.typ == TypeRefuse {
		if c.state != stateDialing {
			n.st.unknownChannel.Add(1)
			return
		}
		if w.typ == TypeAccept {
			c.state, c.ready, c.remote, c.credit = stateOpen, true, w.src, int64(w.window)
		} else {
			c.state, c.reason = stateRefused, w.reason
		}
		c.broadcast()
		return
	}
	if c.state != stateOpen {
		n.st.unknownChannel.Add(1)
		return
	}
	switch w.typ {
	case TypeCredit:
		c.credit = min(c.credit+int64(w.credit), MaxWindow)
		c.broadcast()
	case TypeClose:
		if c.remoteClosed {
			n.st.malformed.Add(1)
			return
		}
		c.remoteClosed = true
		c.assembling, c.partial = false, nil
		c.broadcast()
		if c.localClosed {
			n.removeLocked(c.local, c)
		}
	case TypeDataFirst, TypeData:
		n.receiveData(c, w)
	}
}

// receiveData adds a fragment to c (c.mu held).
func (n *Node) receiveData(c *Channel, w wire) {
	k := len(w.data)
	if c.remoteClosed {
		n.st.malformed.Add(1)
		return
	}
	if c.inflight+k > c.window {
		n.st.flow.Add(1)
		return
	}
	c.inflight += k
	if c.localClosed || c.err != nil {
		return // nobody reads; the peer stops when it sees CLOSE
	}
	drop := func() {
		n.st.malformed.Add(1)
		c.owed += len(c.partial)
		c.assembling, c.partial = false, nil
	}
	if w.typ == TypeDataFirst {
		if c.assembling {
			drop()
		}
		c.assembling, c.want = true, w.length
		c.partial = make([]byte, 0, w.length)
	} else if !c.assembling || len(c.partial)+k > c.want {
		drop()
		c.owed += k
		return
	}
	c.partial = append(c.partial, w.data...)
	if len(c.partial) == c.want {
		c.frames = append(c.frames, c.partial)
		c.assembling, c.partial = false, nil
		c.broadcast()
	}
}

// handleOpen answers an OPEN (dispatcher).
func (n *Node) handleOpen(from int, w wire) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.listeners[w.port]
	if l == nil {
		n.reply(from, refuseMsg(w.src, RefuseNoListener), nil)
		return
	}
	if len(l.backlog) == cap(l.backlog) {
		n.reply(from, refuseMsg(w.src, RefuseBacklogFull), nil)
		return
	}
	c := newChannel(n, from, w.port)
	c.state, c.remote, c.credit = stateOpen, w.src, int64(w.window)
	if !n.addLocked(c) {
		n.reply(from, refuseMsg(w.src, RefuseNoChannelID), nil)
		return
	}
	if !n.reply(from, acceptMsg(w.src, c.local, uint32(n.window)), c.markReady) {
		n.removeLocked(c.local, c)
		return
	}
	l.backlog <- c
}
