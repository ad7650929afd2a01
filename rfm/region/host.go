package region

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/internal/tokenbucket"
	"rainforest/vmm/shmem/abi"
)

// HostPeer is the supervisor's peer id in the FICM group.
const HostPeer = 0

// ErrNotFICM means a Host was asked for on a region that is not a FICM group.
var ErrNotFICM = errors.New("region: not a FICM group region")

// HostStats counts what the Host's receive loop saw.
type HostStats struct {
	Received        uint64 // messages received
	PingsAnswered   uint64 // PINGs answered with a PONG
	PongsMatched    uint64 // PONGs that completed a Ping call
	PongsUnexpected uint64 // PONGs matching no Ping in progress
	Unhonoured      uint64 // TEXT and BOARD from guests, dropped
	NotControl      uint64 // non-control messages (RFcom, datagrams), dropped
	Malformed       uint64 // control messages that do not decode, dropped
	BadFrames       uint64 // slots with an invalid length, dropped
	CorruptPeers    uint64 // peers whose queue to the Host was found corrupt
	ReplyFailures   uint64 // PONGs that could not be sent
	BoardSkipped    uint64 // BOARD notifications not sent (full queue, ...)
	Throttled       uint64 // messages over their peer's rate, dropped unhandled
}

// DefaultPeerLimit is each peer's message rate to the Host: what a guest
// sends the supervisor is PINGs (rfcom ping, liveness checks), a few a
// second, so 200/s with a burst of a full queue (FICMSlots) never touches
// normal use, while a guest flooding the Host costs it a ring read per
// message and no reply.
func DefaultPeerLimit() tokenbucket.Limit { return tokenbucket.Limit{Rate: 200, Burst: FICMSlots} }

// throttleLogEvery bounds the Host's log lines about one throttled peer.
const throttleLogEvery = time.Minute

type hostCounters struct {
	received, pingsAnswered, pongsMatched, pongsUnexpected, unhonoured,
	notControl, malformed, badFrames, corruptPeers, replyFailures,
	boardSkipped, throttled atomic.Uint64
}

// peerLimit is one peer's message bucket and the state of its log line;
// Run's goroutine only.
type peerLimit struct {
	bucket  *tokenbucket.Bucket
	dropped uint64    // since the last log line
	lastLog time.Time // zero: never logged
}

// pending is a Ping in progress.
type pending struct {
	peer int
	done chan struct{}
}

// Host is peer 0 of the FICM group: the supervisor's endpoint. It publishes
// the board in its info page, sends TEXT and BOARD messages, and answers
// and sends PINGs. Run is its receive loop (one goroutine, the caller's);
// the other methods may be called from any goroutine. The Host lives on the
// region's memory: stop Run (cancel its ctx and wait for it to return)
// before closing the region.
type Host struct {
	r      *Region
	log    *slog.Logger
	board  *board.Writer
	state  *endpoint.StateTable
	ep     *endpoint.Endpoint
	peers  int
	sendMu sync.Mutex // the endpoint's send side is single-goroutine

	pingMu     sync.Mutex
	nextCookie uint64
	pings      map[uint64]pending

	sections [][]byte // every peer's endpoint section
	corrupt  []bool   // peers reported corrupt; Run's goroutine only
	stats    hostCounters

	clock  tokenbucket.Clock
	limits []peerLimit // per peer; Run's goroutine only
}

// FICMVector is the FICM group's doorbell vector: the device's
// state-change vector, so that a guest's sleep on it also ends when the
// state table changes.
const FICMVector = abi.StateChangeVector

// hostDoorbell rings a peer's FICM doorbell.
type hostDoorbell struct{ r *Region }

func (d hostDoorbell) Ring(peer int) error { return d.r.Ring(peer, FICMVector) }

// hostWaiter sleeps on the Host's own doorbell (peer 0), which the VMMs
// also ring when a guest's state changes.
type hostWaiter struct{ r *Region }

func (w hostWaiter) Wait(ctx context.Context) error { return w.r.Wait(ctx, HostPeer, FICMVector) }

// NewHost returns the Host of the FICM region r: its board writer over
// its info page (an existing board is kept, so a restarted supervisor
// continues the seq), its endpoint over the output sections past the info
// page, and the state table, in which it marks itself alive (raising the
// state-change interrupt on the subOSes if it was not). log may be nil (no
// logging).
func NewHost(r *Region, log *slog.Logger) (*Host, error) {
	spec := r.Spec()
	if spec.Protocol != abi.ProtocolFICM {
		return nil, fmt.Errorf("%w: region %q has protocol %#x", ErrNotFICM, spec.Name, spec.Protocol)
	}
	if r.Memory() == nil {
		return nil, ErrClosed
	}
	peers := spec.Layout.Peers
	el, err := endpoint.NewLayout(peers, FICMSlots)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSpec, err)
	}
	if need := uint64(InfoPageSize + el.SectionSize()); spec.Layout.OutputSize < need {
		return nil, fmt.Errorf("%w: region %q: output sections of %d bytes, FICM needs %d", ErrSpec, spec.Name, spec.Layout.OutputSize, need)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sections := make([][]byte, peers)
	for i := range sections {
		out, err := r.Output(i)
		if err != nil {
			return nil, err
		}
		sections[i] = out[InfoPageSize:]
	}
	own, _ := r.Output(HostPeer)
	bw, err := board.NewWriter(own[:InfoPageSize])
	if err != nil {
		return nil, fmt.Errorf("region %q: board: %w", spec.Name, err)
	}
	st, err := endpoint.NewStateTable(r.StateTable(), peers)
	if err != nil {
		return nil, fmt.Errorf("region %q: state table: %w", spec.Name, err)
	}
	ep, err := endpoint.New(endpoint.Config{
		Self:     HostPeer,
		Layout:   el,
		Sections: sections,
		State:    st,
		Doorbell: hostDoorbell{r},
		Waiter:   hostWaiter{r},
	})
	if err != nil {
		return nil, fmt.Errorf("region %q: endpoint: %w", spec.Name, err)
	}
	changed, err := st.SetAlive(HostPeer, true)
	if err != nil {
		return nil, err
	}
	if changed {
		if err := announceState(r, HostPeer); err != nil {
			return nil, err
		}
	}
	return &Host{
		r:          r,
		log:        log.With("region", spec.Name),
		board:      bw,
		state:      st,
		ep:         ep,
		peers:      peers,
		nextCookie: uint64(time.Now().UnixNano()),
		pings:      make(map[uint64]pending),
		corrupt:    make([]bool, peers),
		sections:   sections,
		clock:      tokenbucket.SystemClock{},
		limits:     newPeerLimits(peers, DefaultPeerLimit(), time.Now()),
	}, nil
}

func newPeerLimits(peers int, l tokenbucket.Limit, now time.Time) []peerLimit {
	limits := make([]peerLimit, peers)
	for i := range limits {
		limits[i].bucket = tokenbucket.New(l, now)
	}
	return limits
}

// LimitPeers sets each peer's message rate to the Host (the zero Limit:
// unlimited) and the clock that times it, in place of DefaultPeerLimit
// and the system clock. Call it before Run.
func (h *Host) LimitPeers(l tokenbucket.Limit, clock tokenbucket.Clock) {
	h.clock = clock
	h.limits = newPeerLimits(h.peers, l, clock.Now())
}

// Peers returns the number of peers in the group (the Host included).
func (h *Host) Peers() int { return h.peers }

// BoardSeq returns the seq of the board last published.
func (h *Host) BoardSeq() uint64 { return h.board.Seq() }

// send sends m to peer, serialized with the other senders.
func (h *Host) send(peer int, m queue.Message) error {
	h.sendMu.Lock()
	defer h.sendMu.Unlock()
	return h.ep.Send(peer, m)
}

// Run is the receive loop: it answers PINGs with PONGs, completes Ping
// calls on PONGs, and drops (counting) everything else, including TEXT and
// BOARD from guests. A peer that corrupts its queue to the Host is logged
// once and no longer read. Run returns nil when ctx is done, or the error
// that stopped it (the region was closed, the doorbell failed). Only one Run
// may be active at a time.
func (h *Host) Run(ctx context.Context) error {
	for {
		from, m, err := h.ep.RecvWait(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			var pe *endpoint.PeerError
			if !errors.As(err, &pe) {
				return fmt.Errorf("ficm host: %w", err)
			}
			h.peerFailed(pe)
			continue
		}
		h.stats.received.Add(1)
		if !h.admit(from) {
			continue
		}
		h.handle(from, m)
	}
}

// admit takes a token of peer from's bucket. A message over the rate is
// dropped, not left in the ring: what peers send the Host is PINGs, which
// their senders retry, and a ring left full would still wake the loop,
// where a drained one costs a read per message and no reply. The drop is
// counted, and logged at most once a throttleLogEvery per peer.
func (h *Host) admit(from int) bool {
	if from < 0 || from >= len(h.limits) {
		return true
	}
	pl := &h.limits[from]
	now := h.clock.Now()
	if pl.bucket.Take(now, 1) == 0 {
		return true
	}
	h.stats.throttled.Add(1)
	pl.dropped++
	if pl.lastLog.IsZero() || now.Sub(pl.lastLog) >= throttleLogEvery {
		h.log.Warn("FICM peer sends the supervisor more than its rate; dropping its messages",
			"peer", from, "rate", pl.bucket.Limit().Rate, "dropped_since_last_report", pl.dropped)
		pl.lastLog, pl.dropped = now, 0
	}
	return false
}

// peerFailed accounts a receive error from one peer.
func (h *Host) peerFailed(pe *endpoint.PeerError) {
	switch {
	case errors.Is(pe, ring.ErrCorrupt):
		if pe.Peer >= 0 && pe.Peer < len(h.corrupt) && !h.corrupt[pe.Peer] {
			h.corrupt[pe.Peer] = true
			h.stats.corruptPeers.Add(1)
			h.log.Warn("FICM peer corrupted its queue to the supervisor; no longer reading it", "peer", pe.Peer, "err", pe.Err)
		}
	case errors.Is(pe, queue.ErrBadFrame):
		h.stats.badFrames.Add(1)
	default:
		h.log.Debug("FICM receive error", "peer", pe.Peer, "err", pe.Err)
	}
}

// handle processes one message from peer from.
func (h *Host) handle(from int, m queue.Message) {
	if !control.IsControl(m.Type) {
		h.stats.notControl.Add(1)
		return
	}
	c, err := control.Decode(m)
	if err != nil {
		h.stats.malformed.Add(1)
		return
	}
	switch c.Type {
	case control.TypePing:
		if err := h.send(from, control.Pong(c.Cookie)); err != nil {
			h.stats.replyFailures.Add(1)
			h.log.Debug("cannot answer PING", "peer", from, "err", err)
			return
		}
		h.stats.pingsAnswered.Add(1)
	case control.TypePong:
		h.pingMu.Lock()
		p, ok := h.pings[c.Cookie]
		if ok && p.peer == from {
			delete(h.pings, c.Cookie)
		}
		h.pingMu.Unlock()
		if !ok || p.peer != from {
			h.stats.pongsUnexpected.Add(1)
			return
		}
		close(p.done)
		h.stats.pongsMatched.Add(1)
	default: // TEXT, BOARD: only the supervisor sends them
		h.stats.unhonoured.Add(1)
	}
}

// Publish writes entries as the new board and sends BOARD(seq) to every
// peer marked alive. A peer whose queue is full is skipped (and logged):
// the board itself is the truth. Errors wrap board.ErrInvalid.
func (h *Host) Publish(entries []board.Entry) (seq uint64, err error) {
	for _, e := range entries {
		if e.Peer <= HostPeer || e.Peer >= h.peers {
			return 0, fmt.Errorf("%w: entry %q: peer id %d outside the group's subOS ids 1..%d", board.ErrInvalid, e.Name, e.Peer, h.peers-1)
		}
	}
	// Holding sendMu over the whole publication keeps the BOARD
	// notifications in seq order.
	h.sendMu.Lock()
	defer h.sendMu.Unlock()
	seq, err = h.board.Publish(entries)
	if err != nil {
		return 0, err
	}
	m := control.Board(seq)
	for p := range h.peers {
		if p == HostPeer || !h.state.Alive(p) {
			continue
		}
		if err := h.ep.Send(p, m); err != nil {
			h.stats.boardSkipped.Add(1)
			h.log.Warn("BOARD notification not sent", "peer", p, "seq", seq, "err", err)
		}
	}
	return seq, nil
}

// checkPeer checks that peer is a subOS peer id of the group.
func (h *Host) checkPeer(peer int) error {
	if peer <= HostPeer || peer >= h.peers {
		return fmt.Errorf("%w: peer %d (subOS peers are 1..%d)", ErrRange, peer, h.peers-1)
	}
	return nil
}

// SendText sends an administrator's TEXT message to peer. Errors wrap
// ErrRange (not a subOS peer id), control.ErrTooLong or
// control.ErrMalformed (bad text), endpoint.ErrPeerDown (peer not alive)
// or endpoint.ErrFull (its queue is full).
func (h *Host) SendText(peer int, text string) error {
	if err := h.checkPeer(peer); err != nil {
		return err
	}
	m, err := control.Text(text)
	if err != nil {
		return fmt.Errorf("text to peer %d: %w", peer, err)
	}
	if err := h.send(peer, m); err != nil {
		return fmt.Errorf("text to peer %d: %w", peer, err)
	}
	return nil
}

// Ping sends a PING to peer and waits for its PONG, returning the round
// trip time. Run must be running to receive the PONG. Errors wrap ErrRange,
// endpoint.ErrPeerDown, endpoint.ErrFull or ctx's error.
func (h *Host) Ping(ctx context.Context, peer int) (time.Duration, error) {
	if err := h.checkPeer(peer); err != nil {
		return 0, err
	}
	done := make(chan struct{})
	h.pingMu.Lock()
	h.nextCookie++
	cookie := h.nextCookie
	h.pings[cookie] = pending{peer: peer, done: done}
	h.pingMu.Unlock()
	defer func() {
		h.pingMu.Lock()
		delete(h.pings, cookie)
		h.pingMu.Unlock()
	}()
	start := time.Now()
	if err := h.send(peer, control.Ping(cookie)); err != nil {
		return 0, fmt.Errorf("ping peer %d: %w", peer, err)
	}
	select {
	case <-done:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("ping peer %d: %w", peer, ctx.Err())
	}
}

// SetAlive marks peer alive or dead in the state table (the supervisor
// clears the entry of a subOS that left). When the entry changes it raises
// the state-change interrupt (vector abi.StateChangeVector) on every peer
// but the supervisor and peer, as the device does for a guest that writes
// its STATE register, so that sleeping guests notice at once. Errors wrap
// endpoint.ErrNoPeer, or ErrClosed if the doorbells are gone.
func (h *Host) SetAlive(peer int, alive bool) error {
	changed, err := h.state.SetAlive(peer, alive)
	if err != nil {
		return fmt.Errorf("region %q: %w", h.r.Spec().Name, err)
	}
	if changed {
		return announceState(h.r, peer)
	}
	return nil
}

// announceState raises the state-change interrupt of peer changed's entry
// on every other subOS peer of r's group.
func announceState(r *Region, changed int) error {
	var errs []error
	for p := range r.Spec().Layout.Peers {
		if p == HostPeer || p == changed {
			continue
		}
		if err := r.Ring(p, abi.StateChangeVector); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("region %q: state change of peer %d: %w", r.Spec().Name, changed, err)
	}
	return nil
}

// Alive reports whether the state table marks peer alive.
func (h *Host) Alive(peer int) bool { return h.state.Alive(peer) }

// Stats returns the receive loop's counters.
func (h *Host) Stats() HostStats {
	s := &h.stats
	return HostStats{
		Received:        s.received.Load(),
		PingsAnswered:   s.pingsAnswered.Load(),
		PongsMatched:    s.pongsMatched.Load(),
		PongsUnexpected: s.pongsUnexpected.Load(),
		Unhonoured:      s.unhonoured.Load(),
		NotControl:      s.notControl.Load(),
		Malformed:       s.malformed.Load(),
		BadFrames:       s.badFrames.Load(),
		CorruptPeers:    s.corruptPeers.Load(),
		ReplyFailures:   s.replyFailures.Load(),
		BoardSkipped:    s.boardSkipped.Load(),
		Throttled:       s.throttled.Load(),
	}
}

// Forget drops the messages still queued to peer, which must be gone (its
// state entry dead and its VMM exited), so that a subOS given the slot
// later does not receive what was meant for its predecessor. It consumes
// each queue into peer as peer would have; a queue with corrupt indices is
// left as it is. It returns how many messages were dropped.
func (h *Host) Forget(peer int) (int, error) {
	if peer <= HostPeer || peer >= h.peers {
		return 0, fmt.Errorf("%w: peer %d", ErrRange, peer)
	}
	if h.state.Alive(peer) {
		return 0, fmt.Errorf("forget peer %d: it is alive", peer)
	}
	l := h.ep.Layout()
	dropped := 0
	for from := range h.peers {
		if from == peer {
			continue
		}
		tx, rx, err := l.QueueAreas(h.sections, from, peer)
		if err != nil {
			return dropped, err
		}
		r, err := queue.NewReceiver(tx, rx, l.Slots())
		if err != nil {
			continue // corrupt indices: nothing sensible to drain
		}
		for range l.Slots() {
			if _, ok, err := r.TryPop(); err != nil || !ok {
				break
			}
			dropped++
		}
	}
	return dropped, nil
}
