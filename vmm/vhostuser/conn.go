// Package vhostuser is the front-end side of the vhost-user protocol: the
// VMM hands a virtio device's queues to a back end in another process (a
// virtiofsd, say) over a Unix socket, and stays off the data path. The
// back end maps guest RAM from the descriptors of the memory table (every
// region of guest RAM is a shareable memfd), waits on the queues' kick
// eventfds, which KVM signals on the guest's notify writes (ioeventfds),
// and signals their call eventfds, which KVM turns into the guest's MSI-X
// interrupts (irqfds).
//
// Conn is one connection: requests go one at a time, each bounded by a
// deadline, and one goroutine reads everything the back end sends. The
// back end is not trusted: a reply of the wrong size, version or request
// id, a message that answers nothing, descriptors where none belong, or a
// reply that does not come in time close the connection with an error,
// and so does the back end going away; Done and Err report it. Nothing it
// sends makes the VMM panic or read more than MaxPayload bytes.
//
// Device is a generic virtio.DeviceModel on top of a Conn: the device
// type's own model (vmm/virtio/fs) adds its configuration space and
// feature policy. Message encoding and decoding are in one place
// (message.go), shared by the front end and test back ends.
package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// DefaultTimeout bounds one request's round trip when its context has no
// deadline of its own.
const DefaultTimeout = 5 * time.Second

// Options tune a Conn.
type Options struct {
	// Timeout bounds each request when its context has no deadline
	// (DefaultTimeout when 0). A request that runs out of time closes
	// the connection: its reply may still come, and would answer the
	// next request.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Conn is the front end's side of one vhost-user connection. Its methods
// are safe for concurrent use; requests are serialized.
type Conn struct {
	c       *net.UnixConn
	log     *slog.Logger
	timeout time.Duration

	reqMu sync.Mutex // one request (and its reply) at a time
	// ack: REPLY_ACK was negotiated, so requests without a reply of
	// their own ask for one. Guarded by reqMu.
	ack bool

	waitMu  sync.Mutex
	want    Request // the request whose reply is awaited, 0 for none
	replies chan Message

	closeOnce sync.Once
	done      chan struct{}
	err       error // why the connection ended; set before done closes
	reader    sync.WaitGroup
}

// Dial connects to the back end's socket at path.
func Dial(ctx context.Context, path string, opts Options) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("vhost-user: connect to %s: %w", path, err)
	}
	return New(c.(*net.UnixConn), opts), nil
}

// New returns the front end on c, a connected Unix stream socket (from
// Dial, or handed to a jailed VMM); the Conn takes charge of it.
func New(c *net.UnixConn, opts Options) *Conn {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cn := &Conn{c: c, log: opts.Logger, timeout: opts.Timeout, replies: make(chan Message, 1), done: make(chan struct{})}
	cn.reader.Add(1)
	go cn.read()
	return cn
}

// read is the connection's reader: every message from the back end must be
// the reply awaited. It ends when the connection does.
func (cn *Conn) read() {
	defer cn.reader.Done()
	for {
		m, err := ReadMessage(cn.c, MaxFDs)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: the back end closed the connection", ErrClosed)
			}
			cn.fail(err)
			return
		}
		cn.waitMu.Lock()
		want := cn.want
		if want != 0 && m.Header.Request == want && m.Header.Flags&FlagReply != 0 {
			cn.want = 0
			cn.replies <- m // room for one: want was set for this reply only
			cn.waitMu.Unlock()
			continue
		}
		cn.waitMu.Unlock()
		closeFDs(m.FDs)
		if want == 0 {
			cn.fail(fmt.Errorf("%w: the back end sent %v (flags %#x) when no reply was awaited", ErrProtocol, m.Header.Request, m.Header.Flags))
		} else {
			cn.fail(fmt.Errorf("%w: the back end sent %v (flags %#x) while the reply to %v was awaited", ErrProtocol, m.Header.Request, m.Header.Flags, want))
		}
		return
	}
}

// fail ends the connection with err (the first reason wins).
func (cn *Conn) fail(err error) {
	cn.closeOnce.Do(func() {
		cn.err = err
		close(cn.done)
		cn.c.Close()
	})
}

// Done is closed once the connection has ended: closed by Close, by the
// back end, or after a protocol error or a timeout (Err says which).
func (cn *Conn) Done() <-chan struct{} { return cn.done }

// Err returns why the connection ended, nil while it is up.
func (cn *Conn) Err() error {
	select {
	case <-cn.done:
		return cn.err
	default:
		return nil
	}
}

// Close closes the connection and waits for its reader.
func (cn *Conn) Close() error {
	cn.fail(fmt.Errorf("%w: closed by the front end", ErrClosed))
	cn.reader.Wait()
	return nil
}

// call sends req with payload and fds and returns the decoded reply (the
// zero Reply for requests without one, when REPLY_ACK is off).
func (cn *Conn) call(ctx context.Context, req Request, payload []byte, fds []int) (Reply, error) {
	cn.reqMu.Lock()
	defer cn.reqMu.Unlock()
	if err := cn.Err(); err != nil {
		return Reply{}, fmt.Errorf("%v: %w", req, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cn.timeout)
		defer cancel()
	}
	h := Header{Request: req, Flags: flagVersion}
	ack := false
	if replyOf(req, false) == replyNone && cn.ack {
		h.Flags |= FlagNeedReply
		ack = true
	}
	kind := replyOf(req, ack)
	if kind != replyNone {
		cn.waitMu.Lock()
		cn.want = req
		cn.waitMu.Unlock()
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = cn.c.SetWriteDeadline(dl) // a closed socket fails the write below
	}
	if err := WriteMessage(cn.c, h, payload, fds); err != nil {
		err = fmt.Errorf("vhost-user: send %v: %w", req, err)
		cn.fail(err)
		return Reply{}, err
	}
	if kind == replyNone {
		return Reply{}, nil
	}
	select {
	case m := <-cn.replies:
		r, err := DecodeReply(req, ack, m)
		if err != nil {
			cn.fail(err)
			return Reply{}, err
		}
		if ack && r.Value != 0 {
			return r, fmt.Errorf("%w: %v: status %d", ErrRefused, req, r.Value)
		}
		return r, nil
	case <-cn.done:
		return Reply{}, fmt.Errorf("%v: %w", req, cn.err)
	case <-ctx.Done():
		err := fmt.Errorf("%w: no reply to %v: %w", ErrClosed, req, ctx.Err())
		cn.fail(err)
		return Reply{}, err
	}
}

// GetFeatures returns the back end's virtio feature bits (with
// FeatureProtocolFeatures when it speaks protocol features).
func (cn *Conn) GetFeatures(ctx context.Context) (uint64, error) {
	r, err := cn.call(ctx, GetFeatures, nil, nil)
	return r.Value, err
}

// SetFeatures sets the features the driver negotiated (with
// FeatureProtocolFeatures when the back end offered it).
func (cn *Conn) SetFeatures(ctx context.Context, features uint64) error {
	_, err := cn.call(ctx, SetFeatures, EncodeU64(features), nil)
	return err
}

// GetProtocolFeatures returns the back end's protocol feature bits (only
// when it offered FeatureProtocolFeatures).
func (cn *Conn) GetProtocolFeatures(ctx context.Context) (uint64, error) {
	r, err := cn.call(ctx, GetProtocolFeatures, nil, nil)
	return r.Value, err
}

// SetProtocolFeatures sets the protocol features to use; from then on,
// with ProtocolReplyAck among them, every request without a reply of its
// own asks for an acknowledgement and fails with ErrRefused when the back
// end reports a failure.
func (cn *Conn) SetProtocolFeatures(ctx context.Context, features uint64) error {
	_, err := cn.call(ctx, SetProtocolFeatures, EncodeU64(features), nil)
	if err != nil {
		return err
	}
	cn.reqMu.Lock()
	cn.ack = features&ProtocolReplyAck != 0
	cn.reqMu.Unlock()
	return nil
}

// GetQueueNum returns how many queues the back end supports (ProtocolMQ).
func (cn *Conn) GetQueueNum(ctx context.Context) (uint64, error) {
	r, err := cn.call(ctx, GetQueueNum, nil, nil)
	return r.Value, err
}

// SetOwner claims the back end for this front end.
func (cn *Conn) SetOwner(ctx context.Context) error {
	_, err := cn.call(ctx, SetOwner, nil, nil)
	return err
}

// ResetOwner is the deprecated reset (RESET_OWNER); prefer ResetDevice.
func (cn *Conn) ResetOwner(ctx context.Context) error {
	_, err := cn.call(ctx, ResetOwner, nil, nil)
	return err
}

// ResetDevice resets the back end's device state (ProtocolResetDevice).
func (cn *Conn) ResetDevice(ctx context.Context) error {
	_, err := cn.call(ctx, ResetDevice, nil, nil)
	return err
}

// SetMemTable sends the memory table: regions, each mapped from the
// descriptor fds[i] at its MmapOffset.
func (cn *Conn) SetMemTable(ctx context.Context, regions []MemoryRegion, fds []int) error {
	if len(fds) != len(regions) {
		return fmt.Errorf("vhost-user: memory table of %d regions with %d descriptors", len(regions), len(fds))
	}
	payload, err := EncodeMemoryTable(regions)
	if err != nil {
		return err
	}
	_, err = cn.call(ctx, SetMemTable, payload, fds)
	return err
}

// SetVringNum sets queue index's size.
func (cn *Conn) SetVringNum(ctx context.Context, index, size uint32) error {
	_, err := cn.call(ctx, SetVringNum, VringState{Index: index, Num: size}.Encode(), nil)
	return err
}

// SetVringBase sets the next available-ring index the back end processes.
func (cn *Conn) SetVringBase(ctx context.Context, index, base uint32) error {
	_, err := cn.call(ctx, SetVringBase, VringState{Index: index, Num: base}.Encode(), nil)
	return err
}

// SetVringAddr sets queue a.Index's ring addresses (front-end addresses).
func (cn *Conn) SetVringAddr(ctx context.Context, a VringAddr) error {
	_, err := cn.call(ctx, SetVringAddr, a.Encode(), nil)
	return err
}

// GetVringBase stops queue index and returns the next available-ring index
// it would have processed.
func (cn *Conn) GetVringBase(ctx context.Context, index uint32) (uint32, error) {
	r, err := cn.call(ctx, GetVringBase, VringState{Index: index}.Encode(), nil)
	if err != nil {
		return 0, err
	}
	if r.State.Index != index {
		err := fmt.Errorf("%w: GET_VRING_BASE for queue %d answered for queue %d", ErrProtocol, index, r.State.Index)
		cn.fail(err)
		return 0, err
	}
	return r.State.Num, nil
}

// SetVringKick gives queue index its kick eventfd (fd < 0: none, the back
// end polls).
func (cn *Conn) SetVringKick(ctx context.Context, index uint32, fd int) error {
	return cn.vringFD(ctx, SetVringKick, index, fd)
}

// SetVringCall gives queue index its call eventfd (fd < 0: none).
func (cn *Conn) SetVringCall(ctx context.Context, index uint32, fd int) error {
	return cn.vringFD(ctx, SetVringCall, index, fd)
}

// SetVringErr gives queue index its error eventfd (fd < 0: none).
func (cn *Conn) SetVringErr(ctx context.Context, index uint32, fd int) error {
	return cn.vringFD(ctx, SetVringErr, index, fd)
}

func (cn *Conn) vringFD(ctx context.Context, req Request, index uint32, fd int) error {
	if index > vringIndexMask {
		return fmt.Errorf("vhost-user: %v: queue %d", req, index)
	}
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	_, err := cn.call(ctx, req, EncodeU64(vringFile(index, fd >= 0)), fds)
	return err
}

// SetVringEnable enables or disables queue index (once protocol features
// are negotiated, rings start disabled).
func (cn *Conn) SetVringEnable(ctx context.Context, index uint32, enable bool) error {
	var v uint32
	if enable {
		v = 1
	}
	_, err := cn.call(ctx, SetVringEnable, VringState{Index: index, Num: v}.Encode(), nil)
	return err
}
