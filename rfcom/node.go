package rfcom

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
	"rainforest/rfcom/device"
	"rainforest/vmm/shmem/abi"
)

// FICM group parameters fixed by the ABI.
const (
	// InfoPageSize is the info page at the start of every output section
	// (the board in the supervisor's).
	InfoPageSize = board.PageSize
	// SectionOffset is where the endpoint section starts in an output
	// section.
	SectionOffset = InfoPageSize
	// Slots is the slot count of every ring.
	Slots = 64
	// Vector is the FICM doorbell vector: the device's state-change
	// vector, so that one sleep on it wakes for messages and for changes
	// of the state table alike.
	Vector = abi.StateChangeVector
	// SupervisorPeer is the supervisor's peer id.
	SupervisorPeer = 0
)

// Queue bounds of a Node.
const (
	datagramQueue = 4096
	controlQueue  = 256
	outboxLimit   = 1024
	backlogSize   = 64
	pollBudget    = 256
	// outboxRetry is how long the dispatcher sleeps while replies wait
	// for room in a full ring: nothing signals freed slots, so only then
	// does it arm a timer.
	outboxRetry = 200 * time.Microsecond
	// waitRetry is how long the dispatcher sleeps after its waiter
	// failed (no interrupts), instead of spinning.
	waitRetry = 50 * time.Millisecond
)

var (
	// ErrNoDevice means the guest has no FICM device.
	ErrNoDevice = errors.New("rfcom: no FICM device")
	// ErrClosed is returned on a closed Node, Listener or Channel.
	ErrClosed = errors.New("rfcom: closed")
	// ErrRefused means the peer has no listener on the port (or could not
	// take the channel).
	ErrRefused = errors.New("rfcom: connection refused")
	// ErrPeerGone means the peer died, left, or corrupted the shared
	// memory.
	ErrPeerGone = errors.New("rfcom: peer gone")
	// ErrFrameSize means a frame is empty or larger than MaxFrame.
	ErrFrameSize = errors.New("rfcom: bad frame size")
	// ErrShortBuffer means a Read buffer is smaller than the next frame
	// (which is kept).
	ErrShortBuffer = errors.New("rfcom: read buffer too small")
	// ErrPortInUse means a Listener already holds the port.
	ErrPortInUse = errors.New("rfcom: port in use")
	// ErrBadType means a datagram type outside 0x80..0xFF.
	ErrBadType = errors.New("rfcom: bad datagram type")
	// ErrTooLong means a datagram payload over MaxDatagram bytes.
	ErrTooLong = errors.New("rfcom: datagram too long")
	// ErrUnknownName means no subOS of that name is on the board.
	ErrUnknownName = errors.New("rfcom: no such subOS")
	// ErrNoPeer means a peer id out of range or this node's own.
	ErrNoPeer = errors.New("rfcom: no such peer")
	// ErrNotGranted means a segment is not granted to this subOS.
	ErrNotGranted = errors.New("rfcom: segment not granted")
)

// Options configures Open, NewNode and MapSegment.
type Options struct {
	// SysRoot and DevRoot locate sysfs and /dev ("/sys", "/dev" if empty).
	SysRoot, DevRoot string
	// Poll makes the dispatcher busy-poll instead of sleeping on the
	// doorbell (lowest latency, one core spinning).
	Poll bool
	// Window is the bytes buffered per channel (DefaultWindow if 0;
	// MaxFrame..MaxWindow).
	Window int
	// PollRounds is passed to the endpoint (0: its default).
	PollRounds int
	// LosslessDatagrams makes the dispatcher wait for room when the
	// datagram queue is full instead of dropping: the rings then push
	// back on senders, but a program that stops calling Recv also stalls
	// its channels and control messages. For benchmarks.
	LosslessDatagrams bool
}

// Roots are the sysfs and /dev roots o names ("/sys" and "/dev" when
// empty).
func (o Options) Roots() (sys, dev string) {
	sys, dev = o.SysRoot, o.DevRoot
	if sys == "" {
		sys = "/sys"
	}
	if dev == "" {
		dev = "/dev"
	}
	return sys, dev
}

// Stats counts what a Node received and dropped.
type Stats struct {
	Received       uint64 // messages taken from the rings
	UnknownType    uint64 // types outside every known range
	Malformed      uint64 // malformed control or channel messages and frames
	UnknownChannel uint64 // channel messages for no channel of that peer
	Forbidden      uint64 // TEXT/BOARD from a peer other than the supervisor
	Overflow       uint64 // datagrams, controls or replies dropped on a full queue
	PeerErrors     uint64 // receive errors reported by the endpoint
	FlowViolations uint64 // data beyond the window granted to the peer
}

type stats struct {
	received, unknownType, malformed, unknownChannel, forbidden, overflow, peerErrors, flow atomic.Uint64
}

// Datagram is an application datagram.
type Datagram struct {
	From    int
	Type    uint8
	Payload []byte
}

type outMsg struct {
	peer int
	m    queue.Message
	sent func()
}

// Node is this subOS's end of the FICM group.
type Node struct {
	ep       *endpoint.Endpoint
	self     int
	peers    int
	page     []byte // supervisor's info page (the board), read-only
	state    *endpoint.StateTable
	dev      *device.Device // nil for NewNode
	poll     bool
	lossless bool
	window   int

	sendMu sync.Mutex // the endpoint's send side

	mu        sync.Mutex
	channels  map[uint16]*Channel
	peerChans []int // channels per peer
	listeners map[uint16]*Listener
	pings     map[uint64]chan struct{}
	nextID    uint16
	cookie    uint64

	dgrams   chan Datagram
	controls chan control.Control

	outbox   []outMsg // dispatcher only
	handleFn func(int, queue.Message)
	st       stats
	cancel   context.CancelFunc
	done     chan struct{} // closed by Close
	stopped  chan struct{} // closed when the dispatcher returned
	once     sync.Once
}

// Open finds the FICM device (protocol 1) under opts.SysRoot, opens it,
// marks this peer alive (STATE=1) and starts a Node on it.
func Open(ctx context.Context, opts Options) (*Node, error) {
	sys, devRoot := opts.Roots()
	infos, err := device.Find(sys)
	if err != nil {
		return nil, err
	}
	var info *device.Info
	for i := range infos {
		if infos[i].Protocol() == abi.ProtocolFICM {
			info = &infos[i]
			break
		}
	}
	if info == nil {
		return nil, fmt.Errorf("%w under %s", ErrNoDevice, sys)
	}
	dev, err := device.Open(ctx, sys, devRoot, *info)
	if err != nil {
		return nil, err
	}
	n, err := openOn(dev, opts)
	if err != nil {
		_ = dev.Close()
		return nil, err
	}
	return n, nil
}

func openOn(dev *device.Device, opts Options) (*Node, error) {
	dev.SetState(abi.StateAlive)
	ep, err := dev.NewEndpoint(device.EndpointOptions{
		Slots: Slots, Vector: Vector, PollRounds: opts.PollRounds,
		UseStateTable: true, RequireFICM: true, SectionOffset: SectionOffset,
	})
	if err != nil {
		dev.SetState(0)
		return nil, err
	}
	st, err := endpoint.NewStateTable(dev.StateTable(), dev.Peers())
	if err != nil {
		dev.SetState(0)
		return nil, err
	}
	out0, err := dev.Output(SupervisorPeer)
	if err != nil {
		dev.SetState(0)
		return nil, err
	}
	n, err := NewNode(ep, out0[:InfoPageSize], st, opts)
	if err != nil {
		dev.SetState(0)
		return nil, err
	}
	n.dev = dev
	return n, nil
}

// NewNode starts a Node on an endpoint (plain memory in tests). boardPage
// is the supervisor's info page (at least board.PageSize bytes); state is
// the group's state table (nil: every peer alive). The Node owns ep's
// receive side; its send side must not be used by anyone else.
func NewNode(ep *endpoint.Endpoint, boardPage []byte, state *endpoint.StateTable, opts Options) (*Node, error) {
	if ep == nil {
		return nil, errors.New("rfcom: nil endpoint")
	}
	if len(boardPage) < board.PageSize {
		return nil, fmt.Errorf("rfcom: board page of %d bytes, need %d", len(boardPage), board.PageSize)
	}
	w := opts.Window
	if w == 0 {
		w = DefaultWindow
	}
	if w < MaxFrame || w > MaxWindow {
		return nil, fmt.Errorf("rfcom: window %d outside [%d, %d]", w, MaxFrame, MaxWindow)
	}
	peers := ep.Layout().Peers()
	ctx, cancel := context.WithCancel(context.Background())
	// Random starting ids and cookies: a previous program on this peer may
	// have left messages for its channels in the rings.
	n := &Node{
		ep: ep, self: ep.Self(), peers: peers, page: boardPage[:board.PageSize], state: state,
		poll: opts.Poll, lossless: opts.LosslessDatagrams, window: w,
		channels: map[uint16]*Channel{}, peerChans: make([]int, peers),
		listeners: map[uint16]*Listener{}, pings: map[uint64]chan struct{}{},
		dgrams:   make(chan Datagram, datagramQueue),
		controls: make(chan control.Control, controlQueue),
		cancel:   cancel, done: make(chan struct{}), stopped: make(chan struct{}),
		nextID: uint16(rand.Uint32()), cookie: rand.Uint64(),
	}
	n.handleFn = n.handle
	go n.run(ctx)
	return n, nil
}

// Self returns this node's peer id.
func (n *Node) Self() int { return n.self }

// Peers returns the number of peers in the group.
func (n *Node) Peers() int { return n.peers }

// Device returns the FICM device (nil for a Node made by NewNode).
func (n *Node) Device() *device.Device { return n.dev }

// Alive reports whether peer is alive in the state table.
func (n *Node) Alive(peer int) bool {
	if peer < 0 || peer >= n.peers {
		return false
	}
	return n.state == nil || n.state.Alive(peer)
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		Received: n.st.received.Load(), UnknownType: n.st.unknownType.Load(),
		Malformed: n.st.malformed.Load(), UnknownChannel: n.st.unknownChannel.Load(),
		Forbidden: n.st.forbidden.Load(), Overflow: n.st.overflow.Load(),
		PeerErrors: n.st.peerErrors.Load(), FlowViolations: n.st.flow.Load(),
	}
}

// Close stops the dispatcher, fails every channel and listener with
// ErrClosed, marks this peer dead (STATE=0) and closes the device.
func (n *Node) Close() error {
	var err error
	n.once.Do(func() {
		close(n.done)
		n.cancel()
		<-n.stopped
		n.mu.Lock()
		for id, c := range n.channels {
			c.fail(ErrClosed)
			delete(n.channels, id)
		}
		for p, l := range n.listeners {
			l.closeLocked()
			delete(n.listeners, p)
		}
		n.mu.Unlock()
		if n.dev != nil {
			n.dev.SetState(0)
			err = n.dev.Close()
		}
	})
	return err
}

// Board reads the supervisor's published board.
func (n *Node) Board() (board.Board, error) { return board.ReadGroup(n.page, n.peers) }

// Lookup returns the peer id of the subOS called name on the board.
func (n *Node) Lookup(name string) (int, error) {
	b, err := n.Board()
	if err != nil {
		return 0, err
	}
	e, ok := b.Lookup(name)
	if !ok {
		return 0, fmt.Errorf("%w: %q is not on the board", ErrUnknownName, name)
	}
	return e.Peer, nil
}

// checkPeer validates a destination peer id.
func (n *Node) checkPeer(peer int) error {
	if peer < 0 || peer >= n.peers || peer == n.self {
		return fmt.Errorf("%w: %d (this is peer %d of %d)", ErrNoPeer, peer, n.self, n.peers)
	}
	return nil
}

// trySend sends m once. full reports a full ring; other errors are
// mapped to rfcom's (ErrPeerGone for a dead peer).
func (n *Node) trySend(peer int, m queue.Message) (full bool, err error) {
	n.sendMu.Lock()
	err = n.ep.Send(peer, m)
	n.sendMu.Unlock()
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, endpoint.ErrFull):
		return true, nil
	case errors.Is(err, endpoint.ErrPeerDown):
		return false, fmt.Errorf("%w: %w", ErrPeerGone, err)
	}
	return false, err
}

// send sends m to peer, retrying while its ring is full, until ctx ends,
// the node closes, or abort (may be nil) returns an error.
func (n *Node) send(ctx context.Context, peer int, m queue.Message, abort func() error) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for try := 0; ; try++ {
		full, err := n.trySend(peer, m)
		if !full {
			return err
		}
		if abort != nil {
			if err := abort(); err != nil {
				return err
			}
		}
		if try < 64 {
			runtime.Gosched()
			select {
			case <-n.done:
				return ErrClosed
			case <-ctx.Done():
				return ctx.Err()
			default:
			}
			continue
		}
		d := min(time.Duration(try-63)*10*time.Microsecond, time.Millisecond)
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-n.done:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
}

// Send sends an application datagram of type typ (0x80..0xFF) to peer,
// waiting while the ring to it is full.
func (n *Node) Send(ctx context.Context, peer int, typ uint8, payload []byte) error {
	m, err := n.datagram(peer, typ, payload)
	if err != nil {
		return err
	}
	return n.send(ctx, peer, m, nil)
}

// TrySend is Send without waiting: when the ring to peer is full it sends
// nothing and reports false (the caller decides whether to retry).
func (n *Node) TrySend(peer int, typ uint8, payload []byte) (sent bool, err error) {
	select {
	case <-n.done:
		return false, ErrClosed
	default:
	}
	m, err := n.datagram(peer, typ, payload)
	if err != nil {
		return false, err
	}
	full, err := n.trySend(peer, m)
	return !full && err == nil, err
}

// datagram checks a datagram for peer and returns its message.
func (n *Node) datagram(peer int, typ uint8, payload []byte) (queue.Message, error) {
	if typ < FirstDatagramType {
		return queue.Message{}, fmt.Errorf("%w: %#x (0x80..0xff)", ErrBadType, typ)
	}
	if len(payload) > MaxDatagram {
		return queue.Message{}, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLong, len(payload), MaxDatagram)
	}
	if err := n.checkPeer(peer); err != nil {
		return queue.Message{}, err
	}
	m, _ := queue.NewMessage(typ, payload)
	return m, nil
}

// Multicast sends the same datagram to every peer in peers (each once),
// ringing each one's doorbell as needed. It tries every peer and returns
// the errors of those it could not reach, joined.
func (n *Node) Multicast(ctx context.Context, peers []int, typ uint8, payload []byte) error {
	_, err := n.multicast(ctx, peers, typ, payload)
	return err
}

// Broadcast sends the same datagram to every other subOS that is alive
// (not to the supervisor) and returns how many it reached.
func (n *Node) Broadcast(ctx context.Context, typ uint8, payload []byte) (int, error) {
	var peers []int
	for p := range n.peers {
		if p != n.self && p != SupervisorPeer && n.Alive(p) {
			peers = append(peers, p)
		}
	}
	return n.multicast(ctx, peers, typ, payload)
}

func (n *Node) multicast(ctx context.Context, peers []int, typ uint8, payload []byte) (reached int, err error) {
	seen := map[int]bool{}
	var errs []error
	for _, p := range peers {
		if seen[p] {
			continue
		}
		seen[p] = true
		if err := n.Send(ctx, p, typ, payload); err != nil {
			errs = append(errs, fmt.Errorf("peer %d: %w", p, err))
			continue
		}
		reached++
	}
	return reached, errors.Join(errs...)
}

// Recv returns the next datagram, waiting until one arrives, ctx ends or
// the node closes.
func (n *Node) Recv(ctx context.Context) (Datagram, error) {
	select {
	case d := <-n.dgrams:
		return d, nil
	default:
	}
	select {
	case d := <-n.dgrams:
		return d, nil
	case <-ctx.Done():
		return Datagram{}, ctx.Err()
	case <-n.done:
		return Datagram{}, ErrClosed
	}
}

// TryRecv returns the next datagram if one is queued (polling mode).
func (n *Node) TryRecv() (Datagram, bool) {
	select {
	case d := <-n.dgrams:
		return d, true
	default:
		return Datagram{}, false
	}
}

// RecvPoll is Recv that spins (yielding the processor) instead of
// sleeping: for benchmarks with Options.Poll.
func (n *Node) RecvPoll(ctx context.Context) (Datagram, error) {
	for i := 0; ; i++ {
		select {
		case d := <-n.dgrams:
			return d, nil
		default:
		}
		if i%256 == 255 {
			if err := ctx.Err(); err != nil {
				return Datagram{}, err
			}
			select {
			case <-n.done:
				return Datagram{}, ErrClosed
			default:
			}
			runtime.Gosched()
		}
	}
}

// Control returns the next control message from the supervisor (TEXT or
// BOARD), waiting until one arrives, ctx ends or the node closes.
func (n *Node) Control(ctx context.Context) (control.Control, error) {
	select {
	case c := <-n.controls:
		return c, nil
	case <-ctx.Done():
		return control.Control{}, ctx.Err()
	case <-n.done:
		return control.Control{}, ErrClosed
	}
}

// Ping sends a PING to peer and waits for its PONG, returning the round
// trip time.
func (n *Node) Ping(ctx context.Context, peer int) (time.Duration, error) {
	if err := n.checkPeer(peer); err != nil {
		return 0, err
	}
	got := make(chan struct{})
	n.mu.Lock()
	n.cookie++
	cookie := n.cookie
	n.pings[cookie] = got
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.pings, cookie)
		n.mu.Unlock()
	}()
	start := time.Now()
	if err := n.send(ctx, peer, control.Ping(cookie), nil); err != nil {
		return 0, err
	}
	select {
	case <-got:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrClosed
	}
}

// run is the dispatcher: it receives every message until ctx ends. When
// idle it sleeps on the doorbell (see sleep).
func (n *Node) run(ctx context.Context) {
	defer close(n.stopped)
	for iter := 0; ctx.Err() == nil; iter++ {
		got, err := n.pollOnce()
		if len(n.outbox) > 0 {
			n.flushOutbox()
		}
		if got > 0 || err != nil {
			if iter%256 == 0 {
				n.checkPeers()
			}
			continue
		}
		if n.poll {
			if iter%1024 == 0 {
				n.checkPeers()
			}
			runtime.Gosched()
			continue
		}
		n.checkPeers()
		n.sleep(ctx)
	}
}

// sleep waits, once nothing is left to receive, until an interrupt of
// vector Vector: a peer's doorbell (a message) or the device's
// state-change interrupt (a peer's state table entry changed, which
// checkPeers then reads). Both are latched until taken, so one that came
// after the last check ends the sleep at once. Messages, state changes,
// board changes (the supervisor's BOARD message) and control messages all
// arrive that way, and every user-facing timeout runs in its caller's
// context, so an idle dispatcher sleeps without a timer. Only replies
// waiting in the outbox for room in a full ring arm one (outboxRetry),
// while they wait.
func (n *Node) sleep(ctx context.Context) {
	wctx := ctx
	if len(n.outbox) > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, outboxRetry)
		defer cancel()
	}
	err := n.ep.Wait(wctx)
	if err == nil || wctx.Err() != nil {
		return
	}
	// The waiter failed: retry later rather than spin.
	t := time.NewTimer(waitRetry)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// pollOnce receives up to pollBudget messages; a receive error fails the
// channels of the peer it names.
func (n *Node) pollOnce() (int, error) {
	got, err := n.ep.Poll(pollBudget, n.handleFn)
	if err != nil {
		n.st.peerErrors.Add(1)
		var pe *endpoint.PeerError
		if errors.As(err, &pe) {
			n.peerFailed(pe.Peer, err)
		}
	}
	return got, err
}

// handle dispatches one received message (dispatcher goroutine).
func (n *Node) handle(from int, m queue.Message) {
	n.st.received.Add(1)
	switch {
	case m.Type >= FirstChannelType && m.Type <= LastChannelType:
		n.handleChannel(from, &m)
	case control.IsControl(m.Type):
		n.handleControl(from, m)
	case m.Type >= FirstDatagramType:
		d := Datagram{From: from, Type: m.Type, Payload: append([]byte(nil), m.Payload()...)}
		select {
		case n.dgrams <- d:
		default:
			if !n.lossless {
				n.st.overflow.Add(1)
				return
			}
			select {
			case n.dgrams <- d:
			case <-n.done:
			}
		}
	default:
		n.st.unknownType.Add(1)
	}
}

func (n *Node) handleControl(from int, m queue.Message) {
	c, err := control.Decode(m)
	if err != nil {
		n.st.malformed.Add(1)
		return
	}
	switch c.Type {
	case control.TypeText, control.TypeBoard:
		if from != SupervisorPeer {
			n.st.forbidden.Add(1)
			return
		}
		select {
		case n.controls <- c:
		default:
			n.st.overflow.Add(1)
		}
	case control.TypePing:
		n.reply(from, control.Pong(c.Cookie), nil)
	case control.TypePong:
		n.mu.Lock()
		ch, ok := n.pings[c.Cookie]
		if ok {
			delete(n.pings, c.Cookie)
		}
		n.mu.Unlock()
		if ok {
			close(ch)
		}
	}
}

// reply sends m from the dispatcher without blocking: it is queued in the
// outbox while the ring is full (or earlier replies to the peer wait).
// sent runs once it went out. It reports false if the outbox is full.
func (n *Node) reply(peer int, m queue.Message, sent func()) bool {
	if len(n.outbox) == 0 {
		full, err := n.trySend(peer, m)
		if err != nil {
			return true // the peer is gone; checkPeers fails its channels
		}
		if !full {
			if sent != nil {
				sent()
			}
			return true
		}
	}
	if len(n.outbox) >= outboxLimit {
		n.st.overflow.Add(1)
		return false
	}
	n.outbox = append(n.outbox, outMsg{peer: peer, m: m, sent: sent})
	return true
}

// flushOutbox sends queued replies, keeping per-peer order.
func (n *Node) flushOutbox() {
	var blocked []int
	keep := n.outbox[:0]
	for _, o := range n.outbox {
		if contains(blocked, o.peer) {
			keep = append(keep, o)
			continue
		}
		full, err := n.trySend(o.peer, o.m)
		switch {
		case full:
			blocked = append(blocked, o.peer)
			keep = append(keep, o)
		case err == nil && o.sent != nil:
			o.sent()
		}
	}
	clear(n.outbox[len(keep):])
	n.outbox = keep
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// checkPeers fails the channels of peers the state table marks dead. A
// change of the table comes with the state-change interrupt, which wakes
// the dispatcher, so it runs after every sleep.
func (n *Node) checkPeers() {
	if n.state == nil {
		return
	}
	n.mu.Lock()
	var dead []int
	for p, k := range n.peerChans {
		if k > 0 && !n.state.Alive(p) {
			dead = append(dead, p)
		}
	}
	n.mu.Unlock()
	if len(dead) == 0 {
		return
	}
	// A peer stores its last messages before it is marked dead: take them
	// (a CLOSE among them ends its channels cleanly) before failing.
	for range 64 {
		got, err := n.pollOnce()
		if got == 0 && err == nil {
			break
		}
	}
	for _, p := range dead {
		n.peerFailed(p, endpoint.ErrPeerDown)
	}
}

// peerFailed fails every channel of peer with ErrPeerGone.
func (n *Node) peerFailed(peer int, cause error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, c := range n.channels {
		if c.peer == peer {
			c.fail(fmt.Errorf("%w: peer %d: %w", ErrPeerGone, peer, cause))
			n.removeLocked(id, c)
		}
	}
}

// removeLocked forgets channel id (n.mu held).
func (n *Node) removeLocked(id uint16, c *Channel) {
	if n.channels[id] == c {
		delete(n.channels, id)
		n.peerChans[c.peer]--
	}
}

// addLocked registers c under a fresh channel id (n.mu held); false if
// every id is in use.
func (n *Node) addLocked(c *Channel) bool {
	for range 1 << 16 {
		n.nextID++
		if n.nextID == 0 {
			continue
		}
		if _, used := n.channels[n.nextID]; !used {
			c.local = n.nextID
			n.channels[c.local] = c
			n.peerChans[c.peer]++
			return true
		}
	}
	return false
}
