package uplink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrFrameTooLong is returned by ReadFrame for a frame longer than the
// buffer it was given: the frame is dropped whole and the next ReadFrame
// reads the one after it.
var ErrFrameTooLong = errors.New("uplink: frame longer than the buffer")

// FrameConn carries Ethernet frames (destination MAC first, no preamble,
// no frame check sequence, no virtio-net header) between the guest's NIC
// and the uplink, one frame per call. Like a net.Conn it takes no context:
// Close unblocks a ReadFrame or WriteFrame in progress, which then returns
// an error. ReadFrame is called by one goroutine at a time, WriteFrame by
// one goroutine at a time; the two may run together.
type FrameConn interface {
	// ReadFrame reads the next frame into b and returns its length. It
	// returns ErrFrameTooLong (and drops the frame) when b is too short,
	// and io.EOF once the peer closed its end.
	ReadFrame(b []byte) (int, error)
	// WriteFrame sends one frame. It may block while the peer's queue is
	// full.
	WriteFrame(frame []byte) error
	// Close releases the connection.
	Close() error
}

// SeqpacketConn is a FrameConn over a connected AF_UNIX SOCK_SEQPACKET
// socket, one frame per message: one end of a socketpair(2) handed to the
// uplink process, or a connection on a socket path. Message boundaries
// are kept by the kernel, so no framing is needed, and the socket's buffer
// bounds what is queued.
type SeqpacketConn struct {
	c *net.UnixConn
}

// NewSeqpacketConn returns a FrameConn over f, which must be a connected
// SOCK_SEQPACKET Unix socket (an inherited descriptor). It takes a
// duplicate of f's descriptor; the caller closes f.
func NewSeqpacketConn(f *os.File) (*SeqpacketConn, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("frame socket %s: %w", f.Name(), err)
	}
	typ, family := -1, -1
	var serr error
	if err := sc.Control(func(fd uintptr) {
		if typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); serr != nil {
			return
		}
		family, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return nil, fmt.Errorf("frame socket %s: %w", f.Name(), err)
	}
	if serr != nil {
		return nil, fmt.Errorf("frame socket %s: not a socket: %w", f.Name(), serr)
	}
	if family != unix.AF_UNIX || typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("frame socket %s: not an AF_UNIX SOCK_SEQPACKET socket (domain %d, type %d)", f.Name(), family, typ)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("frame socket %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("frame socket %s: not a Unix socket", f.Name())
	}
	return &SeqpacketConn{c: uc}, nil
}

// SeqpacketPair returns the two ends of a new SOCK_SEQPACKET socketpair
// as files: one for the uplink (NewSeqpacketConn) and one for the VMM or
// the process that starts both. Both are close-on-exec; a child gets one
// through exec.Cmd.ExtraFiles.
func SeqpacketPair() (a, b *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("frame socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "frames"), os.NewFile(uintptr(fds[1]), "frames"), nil
}

// SeqpacketListener is a Unix socket path on which the uplink waits for
// the VMM's frame connection.
type SeqpacketListener struct {
	l    *net.UnixListener
	path string
}

// ListenSeqpacket listens on the Unix socket path, which must not exist;
// Close removes it.
func ListenSeqpacket(path string) (*SeqpacketListener, error) {
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("frame socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	return &SeqpacketListener{l: l, path: path}, nil
}

// Accept waits for one connection (the VMM's) and returns it, or ctx's
// error if ctx ends first.
func (s *SeqpacketListener) Accept(ctx context.Context) (*SeqpacketConn, error) {
	stop := context.AfterFunc(ctx, func() { s.l.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c, err := s.l.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("frame socket %s: %w", s.path, ctx.Err())
		}
		return nil, fmt.Errorf("frame socket %s: %w", s.path, err)
	}
	return &SeqpacketConn{c: c}, nil
}

// Close stops listening and removes the path.
func (s *SeqpacketListener) Close() error { return s.l.Close() }

// DialSeqpacket connects to an uplink listening on path (ListenSeqpacket):
// the VMM's side.
func DialSeqpacket(ctx context.Context, path string) (*SeqpacketConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("frame socket: %w", err)
	}
	return &SeqpacketConn{c: c.(*net.UnixConn)}, nil
}

// ReadFrame reads one message.
func (s *SeqpacketConn) ReadFrame(b []byte) (int, error) {
	n, _, flags, _, err := s.c.ReadMsgUnix(b, nil)
	if err != nil {
		return 0, err
	}
	if flags&unix.MSG_TRUNC != 0 {
		return 0, ErrFrameTooLong
	}
	if n == 0 {
		// A zero-length read on a SOCK_SEQPACKET socket is the peer's
		// shutdown; an empty message is no frame either.
		return 0, io.EOF
	}
	return n, nil
}

// WriteFrame sends frame as one message.
func (s *SeqpacketConn) WriteFrame(frame []byte) error {
	_, err := s.c.Write(frame)
	return err
}

// Close closes the socket.
func (s *SeqpacketConn) Close() error { return s.c.Close() }

// ErrPipeClosed is returned by a Pipe end's ReadFrame and WriteFrame once
// either end was closed.
var ErrPipeClosed = errors.New("uplink: frame pipe closed")

// Pipe returns two connected in-memory FrameConns, each direction holding
// up to queue frames (at least one): what one end writes the other reads.
// WriteFrame copies the frame and blocks while the queue is full, as a
// socket's send does. Tests and an in-process VMM use it.
func Pipe(queue int) (FrameConn, FrameConn) {
	queue = max(queue, 1)
	done := &pipeDone{ch: make(chan struct{})}
	ab := make(chan []byte, queue)
	ba := make(chan []byte, queue)
	return &pipeEnd{rx: ba, tx: ab, done: done}, &pipeEnd{rx: ab, tx: ba, done: done}
}

// pipeDone is closed when either end of a Pipe is.
type pipeDone struct {
	once sync.Once
	ch   chan struct{}
}

// pipeEnd is one end of a Pipe.
type pipeEnd struct {
	rx, tx chan []byte
	done   *pipeDone
}

func (p *pipeEnd) ReadFrame(b []byte) (int, error) {
	select {
	case f := <-p.rx:
		if len(f) > len(b) {
			return 0, ErrFrameTooLong
		}
		return copy(b, f), nil
	case <-p.done.ch:
		// Frames already queued are still read, as from a socket whose
		// peer closed.
		select {
		case f := <-p.rx:
			if len(f) > len(b) {
				return 0, ErrFrameTooLong
			}
			return copy(b, f), nil
		default:
			return 0, io.EOF
		}
	}
}

func (p *pipeEnd) WriteFrame(frame []byte) error {
	select {
	case <-p.done.ch:
		return ErrPipeClosed
	default:
	}
	select {
	case p.tx <- append([]byte(nil), frame...):
		return nil
	case <-p.done.ch:
		return ErrPipeClosed
	}
}

func (p *pipeEnd) Close() error {
	p.done.once.Do(func() { close(p.done.ch) })
	return nil
}
