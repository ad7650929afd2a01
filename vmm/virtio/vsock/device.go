// Package vsock is the virtio-vsock device model (virtio device type 19)
// with stream sockets between the guest and host processes, in the way
// Firecracker and Cloud Hypervisor connect them: over Unix sockets.
//
// Queue 0 (rx) carries packets to the guest, queue 1 (tx) packets from
// it; queue 2 (event) is never used (no transport resets: there is no
// migration). The config space is the guest's CID.
//
// Host side (see Options):
//   - host-initiated: a host process connects to the device's Unix
//     listener and writes "CONNECT <port>\n"; the device opens a guest
//     connection to that port and, once the guest accepts, answers
//     "OK <hostport>\n"; bytes then flow both ways. A refused connection
//     is closed without an answer.
//   - guest-initiated: a guest connecting to the host (CID 2) port P is
//     handed to Options.Dial (by default the Unix socket "<path>_<P>");
//     where that fails the guest gets RST.
//
// The guest is untrusted: every header is checked (Header.CheckGuest);
// anything malformed, unknown or out of order gets RST, and only
// well-formed chains too short for a header are dropped. Connections are
// bounded (MaxConns), so are the bytes held per connection each way
// (BufAlloc from the guest, MaxHostPending towards it), and the RSTs
// owed to the guest (maxRST; the device stops reading the tx queue while
// that many are unsent). Flow control is virtio-vsock's credit both ways:
// the device honours the guest's buf_alloc and fwd_cnt, and advertises
// BufAlloc with the count of bytes it has written to the host peer, so a
// slow host peer stops the guest's sender rather than growing a buffer.
//
// Threads: QueueNotify only wakes the device's goroutine, which does all
// queue work; every host socket has a reader and a writer goroutine; all
// of them belong to the device and stop on Close. No vCPU thread ever
// waits for a host peer.
package vsock

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"

	"rainforest/vmm/virtio"
)

// Queue indices and sizes.
const (
	RxQueue    = 0
	TxQueue    = 1
	EventQueue = 2
	QueueSize  = 256

	configLen = 8 // guest_cid
)

// Bounds.
const (
	// MaxPacket bounds a packet's payload (the Linux driver's largest).
	MaxPacket = 64 << 10
	// BufAlloc is the receive buffer the device advertises per
	// connection: the most guest bytes it holds for the host peer.
	BufAlloc = 256 << 10
	// MaxHostPending bounds the host peer's bytes held per connection
	// until the guest has credit and receive buffers for them.
	MaxHostPending = 64 << 10
	// MaxConns bounds the connections, established or being set up.
	MaxConns = 64
	// maxRST bounds the RSTs owed to the guest.
	maxRST = 128
	// creditThreshold: a CREDIT_UPDATE is sent once this many bytes were
	// forwarded since the guest last heard our fwd_cnt (see
	// writeHost: at most MaxPacket is ever missing, so a sender never
	// stalls on stale credit).
	creditThreshold = BufAlloc / 4
)

// Options configure a device.
type Options struct {
	// CID is the guest's context ID (MinGuestCID..MaxGuestCID).
	CID uint64
	// Listener, when set, takes host-initiated connections; the device
	// takes charge of it (Close closes it).
	Listener *net.UnixListener
	// Dial, when set, connects a guest-initiated connection to host port
	// port (see DialUnix); nil refuses them all with RST.
	Dial func(ctx context.Context, port uint32) (net.Conn, error)
	// Logger, when set, gets connection events (debug) and refusals.
	Logger *slog.Logger
}

// Stats are the device's counters.
type Stats struct {
	Conns     int // connections open now
	Malformed int // guest packets refused (RST or dropped)
	RSTSent   int // RSTs sent to the guest
	Accepted  int // host-initiated connections established
	Dialed    int // guest-initiated connections established
}

type connKey struct{ host, guest uint32 }

// Connection states.
const (
	stateConnecting  = iota // host-initiated: waiting for the guest's RESPONSE
	stateDialing            // guest-initiated: dialing the host peer
	stateEstablished        // bytes flow
)

// conn is one stream connection. Fields are guarded by Device.mu.
type conn struct {
	key   connKey
	host  net.Conn
	state int

	// The guest's receive buffer and what it has taken out of it.
	peerBufAlloc, peerFwdCnt uint32
	txCnt                    uint32 // bytes sent to the guest

	rxCnt       uint32 // guest bytes received
	fwdCnt      uint32 // guest bytes written to the host peer
	lastFwdSent uint32 // fwdCnt the guest last heard

	in          []byte // host bytes for the guest
	out         []byte // bytes for the host peer
	outPreamble int    // leading bytes of out that are not the guest's (the OK line)

	hostEOF       bool // the host peer sends no more
	guestShutSend bool // the guest sends no more
	guestShutRcv  bool // the guest receives no more
	hostWriteShut bool // the host peer's write side was shut
	sendRequest   bool
	sendResponse  bool
	sendCredit    bool
	sendShutdown  bool
	shutdownSent  bool
	closed        bool
	wake, room    chan struct{} // writer and reader wake-ups (capacity 1)
}

// Device is a virtio-vsock device model.
type Device struct {
	cid    uint64
	dial   func(ctx context.Context, port uint32) (net.Conn, error)
	ln     *net.UnixListener
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}
	sync   chan chan struct{}

	mu         sync.Mutex
	rx, tx     *virtio.Queue
	irq        virtio.Interrupts
	conns      map[connKey]*conn
	order      []*conn // round-robin order of delivery
	rr         int
	rst        []Header
	handshakes map[net.Conn]struct{}
	nextPort   uint32
	stats      Stats
	closing    bool
}

var _ virtio.DeviceModel = (*Device)(nil)

// ErrBadCID means Options.CID is not a guest CID.
var ErrBadCID = errors.New("vsock: guest CID out of range")

// New returns a device and starts its goroutines (Close stops them).
func New(opts Options) (*Device, error) {
	if opts.CID < MinGuestCID || opts.CID > MaxGuestCID {
		if opts.Listener != nil {
			opts.Listener.Close()
		}
		return nil, ErrBadCID
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{
		cid: opts.CID, dial: opts.Dial, ln: opts.Listener, log: log,
		ctx: ctx, cancel: cancel,
		kick: make(chan struct{}, 1), sync: make(chan chan struct{}),
		conns: map[connKey]*conn{}, handshakes: map[net.Conn]struct{}{},
		nextPort: 1 << 30,
	}
	d.wg.Add(1)
	go d.run()
	if d.ln != nil {
		d.wg.Add(1)
		go d.accept()
	}
	return d, nil
}

// Close stops the device's goroutines, closes the listener and every
// host connection.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return nil
	}
	d.closing = true
	d.cancel()
	if d.ln != nil {
		d.ln.Close()
	}
	for hc := range d.handshakes {
		hc.Close()
	}
	for _, c := range d.order {
		d.dropLocked(c, false)
	}
	d.mu.Unlock()
	d.wg.Wait()
	return nil
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Conns = len(d.conns)
	return s
}

// Sync waits until the device's goroutine has handled every notification
// made before the call (tests use it instead of waiting on a clock).
func (d *Device) Sync() {
	done := make(chan struct{})
	select {
	case d.sync <- done:
		<-done
	case <-d.ctx.Done():
	}
}

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return virtio.TypeVsock }

// Features implements virtio.DeviceModel: stream only.
func (d *Device) Features() uint64 { return 0 }

// NumQueues implements virtio.DeviceModel.
func (d *Device) NumQueues() int { return 3 }

// QueueMax implements virtio.DeviceModel.
func (d *Device) QueueMax(int) uint16 { return QueueSize }

// ReadConfig implements virtio.DeviceModel: guest_cid, little endian.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [configLen]byte
	binary.LittleEndian.PutUint64(cfg[:], d.cid)
	clear(data)
	if offset < configLen {
		copy(data, cfg[offset:])
	}
}

// WriteConfig implements virtio.DeviceModel (the config is read-only).
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(a.Queues) > RxQueue {
		d.rx = a.Queues[RxQueue]
	}
	if len(a.Queues) > TxQueue {
		d.tx = a.Queues[TxQueue]
	}
	d.irq = a.IRQ
	d.kickLocked()
	return nil
}

// Reset implements virtio.DeviceModel: the guest forgets its sockets, so
// every connection is closed.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rx, d.tx, d.irq = nil, nil, nil
	for _, c := range append([]*conn(nil), d.order...) {
		d.dropLocked(c, false)
	}
	d.rst = nil
}

// QueueNotify implements virtio.DeviceModel: it wakes the device's
// goroutine and returns.
func (d *Device) QueueNotify(int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kickLocked()
}

func (d *Device) kickLocked() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run is the device's goroutine: all queue work.
func (d *Device) run() {
	defer d.wg.Done()
	for {
		var done chan struct{}
		select {
		case <-d.ctx.Done():
			return
		case <-d.kick:
		case done = <-d.sync:
		}
		d.mu.Lock()
		d.processLocked()
		d.mu.Unlock()
		if done != nil {
			close(done)
		}
	}
}

// processLocked reads the tx queue and fills the rx queue until neither
// has work, then signals the guest.
func (d *Device) processLocked() {
	var txUsed, rxUsed bool
	for {
		t := d.transmitLocked()
		r := d.deliverLocked()
		txUsed, rxUsed = txUsed || t, rxUsed || r
		if !t && !r {
			break
		}
	}
	if txUsed && d.tx != nil && d.tx.NeedsNotify() {
		_ = d.irq.UsedBuffer(TxQueue) // nothing better to do when delivery fails
	}
	if rxUsed && d.rx != nil && d.rx.NeedsNotify() {
		_ = d.irq.UsedBuffer(RxQueue)
	}
}

// broken gives up on the queues after a malformed ring.
func (d *Device) brokenLocked() {
	d.rx, d.tx = nil, nil
	d.irq.NeedsReset()
}

// transmitLocked handles the guest's packets while RSTs can still be
// owed; it reports whether it completed any chain.
func (d *Device) transmitLocked() bool {
	if d.tx == nil {
		return false
	}
	used := false
	for len(d.rst) < maxRST {
		c, ok, err := d.tx.Pop()
		if err != nil {
			d.brokenLocked()
			return used
		}
		if !ok {
			break
		}
		d.handleLocked(c.Readable)
		if err := d.tx.Push(c.Head, 0); err != nil {
			d.brokenLocked()
			return used
		}
		used = true
	}
	return used
}

// rstFor returns the RST answering h.
func (d *Device) rstFor(h Header) Header {
	return Header{SrcCID: HostCID, DstCID: d.cid, SrcPort: h.DstPort, DstPort: h.SrcPort, Type: TypeStream, Op: OpRST}
}

// refuseLocked answers h with RST (never an RST with one).
func (d *Device) refuseLocked(h Header) {
	d.stats.Malformed++
	if h.Op != OpRST {
		d.rst = append(d.rst, d.rstFor(h))
	}
}

// handleLocked handles one guest packet.
func (d *Device) handleLocked(bufs [][]byte) {
	var total uint64
	for _, b := range bufs {
		total += uint64(len(b))
	}
	var hb [HeaderLen]byte
	if virtio.ReadBuffers(bufs, 0, hb[:]) < HeaderLen {
		d.stats.Malformed++ // no header to answer
		return
	}
	h, _ := DecodeHeader(hb[:])
	key := connKey{host: h.DstPort, guest: h.SrcPort}
	c := d.conns[key]
	if err := h.CheckGuest(d.cid, total-HeaderLen); err != nil {
		d.log.Debug("vsock: guest packet refused", "err", err)
		if c != nil && h.SrcCID == d.cid {
			d.dropLocked(c, false)
		}
		d.refuseLocked(h)
		return
	}
	if h.Op == OpRequest {
		d.requestLocked(h, key, c)
		return
	}
	if c == nil {
		d.refuseLocked(h)
		return
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case OpRST:
		d.dropLocked(c, false)
	case OpResponse:
		if c.state != stateConnecting {
			d.dropLocked(c, false)
			d.refuseLocked(h)
			return
		}
		c.state = stateEstablished
		d.stats.Accepted++
		line := []byte("OK " + uitoa(c.key.host) + "\n")
		c.out = append(line, c.out...)
		c.outPreamble = len(line)
		signal(c.wake)
	case OpRW:
		if c.state != stateEstablished || c.guestShutSend || c.rxCnt-c.fwdCnt+h.Len > BufAlloc {
			// Data before the connection is up, after the guest's
			// shutdown, or beyond the credit we gave.
			d.dropLocked(c, false)
			d.refuseLocked(h)
			return
		}
		start := len(c.out)
		c.out = append(c.out, make([]byte, h.Len)...)
		virtio.ReadBuffers(bufs, HeaderLen, c.out[start:])
		c.rxCnt += h.Len
		signal(c.wake)
	case OpShutdown:
		if c.state != stateEstablished {
			d.dropLocked(c, true)
			return
		}
		if h.Flags&ShutdownSend != 0 {
			c.guestShutSend = true
		}
		if h.Flags&ShutdownRcv != 0 {
			c.guestShutRcv = true
			c.in = nil
			signal(c.room)
		}
		d.settleLocked(c)
	case OpCreditUpdate:
		// The credit was taken above.
	case OpCreditRequest:
		c.sendCredit = true
	}
}

// requestLocked handles a guest's REQUEST: a new guest-initiated
// connection, dialed on a goroutine.
func (d *Device) requestLocked(h Header, key connKey, c *conn) {
	if c != nil {
		d.dropLocked(c, false) // a second REQUEST on the same ports
		d.refuseLocked(h)
		return
	}
	if d.dial == nil || d.closing || len(d.conns)+len(d.handshakes) >= MaxConns {
		d.refuseLocked(h)
		return
	}
	c = d.addLocked(key, nil, stateDialing)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	d.wg.Add(1)
	go d.dialHost(c)
}

// addLocked records a new connection.
func (d *Device) addLocked(key connKey, host net.Conn, state int) *conn {
	c := &conn{key: key, host: host, state: state,
		wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
	d.conns[key] = c
	d.order = append(d.order, c)
	return c
}

// dropLocked closes c (and its host socket), owing the guest an RST when
// rst is set.
func (d *Device) dropLocked(c *conn, rst bool) {
	if c.closed {
		return
	}
	c.closed = true
	if c.host != nil {
		c.host.Close()
	}
	delete(d.conns, c.key)
	for i, o := range d.order {
		if o == c {
			d.order = append(d.order[:i], d.order[i+1:]...)
			break
		}
	}
	signal(c.wake)
	signal(c.room)
	if rst && d.rx != nil {
		d.rst = append(d.rst, Header{SrcCID: HostCID, DstCID: d.cid, SrcPort: c.key.host, DstPort: c.key.guest,
			Type: TypeStream, Op: OpRST})
	}
	d.kickLocked()
}

// settleLocked moves c on after its buffers drained: the host peer's
// write side is shut once the guest sent everything, the guest hears
// SHUTDOWN once the host peer did, and the connection ends (RST) when
// both sides are done.
func (d *Device) settleLocked(c *conn) {
	if c.closed || c.state != stateEstablished {
		return
	}
	if c.guestShutSend && len(c.out) == 0 && !c.hostWriteShut {
		c.hostWriteShut = true
		if cw, ok := c.host.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite() // the peer may be gone; the reader will see it
		}
	}
	if c.hostEOF && len(c.in) == 0 && !c.shutdownSent {
		c.sendShutdown = true
	}
	guestDone := c.guestShutSend && len(c.out) == 0
	hostDone := c.hostEOF && c.shutdownSent
	if guestDone && (hostDone || c.guestShutRcv) {
		d.dropLocked(c, true)
	}
}

// credit is how many bytes the guest can take on c now.
func (c *conn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight > c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// hasData reports whether c has bytes the guest can take now.
func (c *conn) hasData() bool {
	return c.state == stateEstablished && len(c.in) > 0 && !c.guestShutRcv && c.credit() > 0
}

func (c *conn) hasOutput() bool {
	return c.sendRequest || c.sendResponse || c.sendCredit || c.sendShutdown || c.hasData()
}

// hasOutputLocked reports whether some packet is waiting for the guest.
func (d *Device) hasOutputLocked() bool {
	if len(d.rst) > 0 {
		return true
	}
	for _, c := range d.order {
		if c.hasOutput() {
			return true
		}
	}
	return false
}

// deliverLocked fills the guest's receive buffers; it reports whether it
// completed any chain.
func (d *Device) deliverLocked() bool {
	used := false
	for d.rx != nil && d.hasOutputLocked() {
		ch, ok, err := d.rx.Pop()
		if err != nil {
			d.brokenLocked()
			return used
		}
		if !ok {
			break
		}
		var n uint32
		if ch.WritableLen() >= HeaderLen {
			room := min(ch.WritableLen()-HeaderLen, MaxPacket)
			h, data := d.nextPacketLocked(uint32(room))
			var hb [HeaderLen]byte
			h.Encode(hb[:])
			virtio.WriteBuffers(ch.Writable, 0, hb[:])
			virtio.WriteBuffers(ch.Writable, HeaderLen, data)
			n = HeaderLen + h.Len
		}
		if err := d.rx.Push(ch.Head, n); err != nil {
			d.brokenLocked()
			return used
		}
		used = true
	}
	return used
}

// nextPacketLocked takes the next packet for the guest (hasOutputLocked
// said there is one), with at most room bytes of payload.
func (d *Device) nextPacketLocked(room uint32) (Header, []byte) {
	if len(d.rst) > 0 {
		h := d.rst[0]
		d.rst = d.rst[1:]
		if len(d.rst) == 0 {
			d.rst = nil
		}
		d.stats.RSTSent++
		return h, nil
	}
	for i := range d.order {
		c := d.order[(d.rr+i)%len(d.order)]
		if !c.hasOutput() {
			continue
		}
		d.rr = (d.rr + i + 1) % len(d.order)
		h := Header{SrcCID: HostCID, DstCID: d.cid, SrcPort: c.key.host, DstPort: c.key.guest,
			Type: TypeStream, BufAlloc: BufAlloc, FwdCnt: c.fwdCnt}
		c.lastFwdSent, c.sendCredit = c.fwdCnt, false
		var data []byte
		switch {
		case c.sendRequest:
			h.Op, c.sendRequest = OpRequest, false
		case c.sendResponse:
			h.Op, c.sendResponse = OpResponse, false
		case c.hasData() && room > 0:
			n := min(uint32(len(c.in)), c.credit(), room)
			h.Op, h.Len = OpRW, n
			data = c.in[:n]
			c.in = c.in[n:]
			if len(c.in) == 0 {
				c.in = nil
			}
			c.txCnt += n
			signal(c.room)
			d.settleLocked(c)
		case c.sendShutdown:
			h.Op, h.Flags = OpShutdown, ShutdownSend
			c.sendShutdown, c.shutdownSent = false, true
			d.settleLocked(c)
		default:
			h.Op = OpCreditUpdate
		}
		return h, data
	}
	// Unreachable after hasOutputLocked; a credit update harms no one.
	return Header{SrcCID: HostCID, DstCID: d.cid, Type: TypeStream, Op: OpCreditUpdate, BufAlloc: BufAlloc}, nil
}

func uitoa(v uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}
