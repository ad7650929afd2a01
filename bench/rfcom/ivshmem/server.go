// Package ivshmem implements a server for QEMU's ivshmem-doorbell device.
//
// QEMU's ivshmem-doorbell device (-device ivshmem-doorbell,chardev=ID)
// obtains its shared memory and its interrupt eventfds from an "ivshmem
// server" reached through a Unix stream socket chardev. This package is
// an independent implementation of the server side of that protocol as
// described in QEMU's docs/specs/ivshmem-spec.rst ("The ivshmem
// Client-Server Protocol").
//
// The connection is one-way: the server sends 8-byte little-endian signed
// integers, each in its own sendmsg call, optionally carrying one file
// descriptor (SCM_RIGHTS). On connect a client receives, in order:
//
//  1. the protocol version (0), no fd;
//  2. its own peer ID, no fd;
//  3. -1 with the shared-memory fd;
//  4. for every existing peer, that peer's ID once per vector, each with the
//     eventfd used to interrupt that peer on that vector;
//  5. its own ID once per vector, each with its own eventfd for that vector.
//
// Existing peers are told about the new client (its ID once per vector with
// its eventfds) before step 4. When a client disconnects, every other
// client receives its ID without an fd. Clients never send anything; a
// client that does is treated as broken and dropped.
package ivshmem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ProtocolVersion is the ivshmem client-server protocol version sent first.
const ProtocolVersion = 0

// Limits and defaults for Config.
const (
	// MaxVectors is the largest number of interrupt vectors per peer.
	MaxVectors = 64
	// MaxPeerID is the largest peer ID; the doorbell register holds 16 bits.
	MaxPeerID = 65535
	// DefaultMaxPeers is used when Config.MaxPeers is 0.
	DefaultMaxPeers = 16
	// SendTimeout bounds one message send; a client that does not drain
	// its socket for this long is dropped.
	SendTimeout = 5 * time.Second
)

// Errors returned by the server.
var (
	// ErrInvalidConfig reports a Config that cannot be served.
	ErrInvalidConfig = errors.New("ivshmem: invalid config")
	// ErrClosed is returned by Serve on a server that was already closed
	// or already served.
	ErrClosed = errors.New("ivshmem: server closed")
)

// Config describes an ivshmem server.
type Config struct {
	// Socket is the path of the Unix stream socket to listen on. A stale
	// socket file at that path is replaced.
	Socket string
	// Size is the shared memory size in bytes. QEMU maps it as a PCI BAR,
	// so it must be a power of two and a multiple of the page size.
	Size uint64
	// Vectors is the number of interrupt vectors (eventfds) per peer,
	// 1..MaxVectors.
	Vectors int
	// MaxPeers limits the number of simultaneously connected peers,
	// 1..MaxPeerID+1; 0 means DefaultMaxPeers.
	MaxPeers int
	// Log receives connection events; nil discards them.
	Log *slog.Logger
}

// Server is an ivshmem server. Create it with Listen, run it with Serve.
type Server struct {
	cfg Config
	log *slog.Logger
	ln  *net.UnixListener
	shm int // memfd; owned by the server, closed exactly once

	mu      sync.Mutex
	closed  bool          // Close called or Serve finished
	serving bool          // Serve is running and owns cleanup of shm
	done    chan struct{} // closed when Serve returns (nil if never served)
	peerIDs []int         // snapshot of connected peer IDs, sorted
}

// peer is one connected client. Only the Serve loop touches its fields.
type peer struct {
	id       int
	conn     *net.UnixConn
	eventfds []int
}

func (c *Config) validate() error {
	page := uint64(os.Getpagesize())
	switch {
	case c.Socket == "":
		return fmt.Errorf("%w: empty socket path", ErrInvalidConfig)
	case c.Size == 0 || c.Size&(c.Size-1) != 0 || c.Size%page != 0:
		return fmt.Errorf("%w: size %d is not a power of two multiple of the page size %d", ErrInvalidConfig, c.Size, page)
	case c.Vectors < 1 || c.Vectors > MaxVectors:
		return fmt.Errorf("%w: vectors %d not in 1..%d", ErrInvalidConfig, c.Vectors, MaxVectors)
	case c.MaxPeers < 0 || c.MaxPeers > MaxPeerID+1:
		return fmt.Errorf("%w: max peers %d not in 1..%d", ErrInvalidConfig, c.MaxPeers, MaxPeerID+1)
	}
	return nil
}

// Listen validates cfg, creates the shared memory (a memfd of cfg.Size
// bytes) and listens on cfg.Socket, replacing a stale socket file there.
// It refuses to replace a file that is not a socket.
func Listen(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.MaxPeers == 0 {
		cfg.MaxPeers = DefaultMaxPeers
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	shm, err := unix.MemfdCreate("ivshmem", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("ivshmem: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(shm, int64(cfg.Size)); err != nil {
		unix.Close(shm)
		return nil, fmt.Errorf("ivshmem: ftruncate shared memory to %d: %w", cfg.Size, err)
	}
	if err := removeStaleSocket(cfg.Socket); err != nil {
		unix.Close(shm)
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Socket, Net: "unix"})
	if err != nil {
		unix.Close(shm)
		return nil, fmt.Errorf("ivshmem: listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return &Server{cfg: cfg, log: log, ln: ln, shm: shm}, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ivshmem: stat socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("ivshmem: %s exists and is not a socket: %w", path, fs.ErrExist)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("ivshmem: remove stale socket: %w", err)
	}
	return nil
}

// Addr returns the path the server listens on.
func (s *Server) Addr() string { return s.cfg.Socket }

// Peers returns the IDs of the currently connected peers in ascending order.
func (s *Server) Peers() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.peerIDs)
}

// Close stops the server. If Serve is running, Close makes it return and
// waits until it has disconnected all clients and released all resources.
// Close is idempotent and safe to call concurrently.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		done := s.done
		s.mu.Unlock()
		if done != nil {
			<-done
		}
		return nil
	}
	s.closed = true
	serving, done := s.serving, s.done
	err := s.ln.Close()
	if !serving {
		unix.Close(s.shm)
	}
	s.mu.Unlock()
	if serving {
		<-done
		return nil
	}
	if err != nil {
		return fmt.Errorf("ivshmem: close listener: %w", err)
	}
	return nil
}

// event is something that happened to the server, handled by the Serve loop.
type event struct {
	conn *net.UnixConn // new connection, or
	gone *peer         // a peer whose socket became readable or failed
	err  error         // accept failed permanently
}

// Serve accepts clients and runs the protocol until ctx is done or Close
// is called. Before returning it disconnects every client, closes all
// eventfds, the shared memory and the socket; the server cannot be served
// again. It returns nil when stopped by ctx or Close.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed || s.done != nil {
		s.mu.Unlock()
		return ErrClosed
	}
	s.serving = true
	s.done = make(chan struct{})
	s.mu.Unlock()

	quit := make(chan struct{})
	events := make(chan event)
	var wg sync.WaitGroup
	peers := make(map[int]*peer)

	defer func() {
		s.mu.Lock()
		s.closed = true
		s.ln.Close()
		s.mu.Unlock()
		for _, p := range peers {
			p.close()
		}
		close(quit)
		wg.Wait()
		s.mu.Lock()
		unix.Close(s.shm)
		s.serving = false
		s.peerIDs = nil
		close(s.done)
		s.mu.Unlock()
		s.log.Info("ivshmem server stopped")
	}()

	post := func(ev event) {
		select {
		case events <- ev:
		case <-quit:
		}
	}
	wg.Go(func() {
		for {
			conn, err := s.ln.AcceptUnix()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					post(event{err: fmt.Errorf("ivshmem: accept: %w", err)})
					return
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ECONNABORTED) {
					s.log.Warn("accept failed, retrying", "err", err)
					select {
					case <-time.After(100 * time.Millisecond):
						continue
					case <-quit:
						return
					}
				}
				post(event{err: fmt.Errorf("ivshmem: accept: %w", err)})
				return
			}
			select {
			case events <- event{conn: conn}:
			case <-quit:
				conn.Close()
				return
			}
		}
	})
	watch := func(p *peer) {
		wg.Go(func() {
			// Clients never send; any byte, EOF or error means the
			// client is gone or broken.
			var b [64]byte
			_, err := p.conn.Read(b[:])
			if err == nil {
				err = errors.New("unexpected data from client")
			}
			s.log.Debug("peer socket event", "id", p.id, "err", err)
			post(event{gone: p})
		})
	}
	snapshot := func() {
		ids := make([]int, 0, len(peers))
		for id := range peers {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		s.mu.Lock()
		s.peerIDs = ids
		s.mu.Unlock()
	}
	// drop removes the peers in queue, telling the others; peers that
	// fail to take the notification are dropped in turn.
	drop := func(queue []*peer) {
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if peers[p.id] != p {
				continue
			}
			delete(peers, p.id)
			p.close()
			s.log.Info("peer disconnected", "id", p.id)
			for _, o := range peers {
				if err := o.send(int64(p.id), -1); err != nil {
					s.log.Warn("peer failed to take disconnect notification", "id", o.id, "err", err)
					queue = append(queue, o)
				}
			}
		}
		snapshot()
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			switch {
			case ev.err != nil:
				s.mu.Lock()
				closed := s.closed
				s.mu.Unlock()
				if closed {
					return nil
				}
				return ev.err
			case ev.gone != nil:
				drop([]*peer{ev.gone})
			case ev.conn != nil:
				p, failed := s.admit(ev.conn, peers)
				if p != nil {
					watch(p)
				}
				drop(failed)
			}
		}
	}
}

// admit runs the connect sequence for a new client. It returns the new
// peer (nil if it was refused) and the peers that must be dropped because
// sending to them failed. On success the new peer is in peers.
func (s *Server) admit(conn *net.UnixConn, peers map[int]*peer) (*peer, []*peer) {
	id := -1
	for i := 0; i < s.cfg.MaxPeers; i++ {
		if peers[i] == nil {
			id = i
			break
		}
	}
	if id < 0 {
		s.log.Warn("refusing client: too many peers", "max", s.cfg.MaxPeers)
		conn.Close()
		return nil, nil
	}
	p := &peer{id: id, conn: conn}
	for range s.cfg.Vectors {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			s.log.Error("refusing client: eventfd", "err", err)
			p.close()
			return nil, nil
		}
		p.eventfds = append(p.eventfds, fd)
	}
	// Steps 1-3: version, ID, shared memory.
	err := p.send(ProtocolVersion, -1)
	if err == nil {
		err = p.send(int64(id), -1)
	}
	if err == nil {
		err = p.send(-1, s.shm)
	}
	if err != nil {
		s.log.Warn("client failed during setup", "id", id, "err", err)
		p.close()
		return nil, nil
	}
	var failed []*peer
	// Tell existing peers about the new one (in ID order, for determinism).
	others := make([]*peer, 0, len(peers))
	for _, o := range peers {
		others = append(others, o)
	}
	slices.SortFunc(others, func(a, b *peer) int { return a.id - b.id })
	peers[id] = p
	for _, o := range others {
		for _, fd := range p.eventfds {
			if err := o.send(int64(id), fd); err != nil {
				s.log.Warn("peer failed to take connect notification", "id", o.id, "err", err)
				failed = append(failed, o)
				break
			}
		}
	}
	// Step 4: existing peers to the new one; step 5: its own vectors.
	err = nil
	for _, o := range others {
		for _, fd := range o.eventfds {
			if err == nil {
				err = p.send(int64(o.id), fd)
			}
		}
	}
	for _, fd := range p.eventfds {
		if err == nil {
			err = p.send(int64(id), fd)
		}
	}
	if err != nil {
		s.log.Warn("client failed during setup", "id", id, "err", err)
		failed = append(failed, p)
	} else {
		s.log.Info("peer connected", "id", id, "vectors", len(p.eventfds))
	}
	return p, failed
}

// send writes one protocol message: v as a little-endian int64, with fd
// attached via SCM_RIGHTS when fd >= 0.
func (p *peer) send(v int64, fd int) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(v))
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if err := p.conn.SetWriteDeadline(time.Now().Add(SendTimeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	n, oobn, err := p.conn.WriteMsgUnix(b[:], oob, nil)
	if err != nil {
		return fmt.Errorf("send %d: %w", v, err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("send %d: short write (%d/%d bytes, %d/%d oob)", v, n, len(b), oobn, len(oob))
	}
	return nil
}

// close closes the peer's connection and eventfds. Safe to call twice.
func (p *peer) close() {
	p.conn.Close()
	for _, fd := range p.eventfds {
		unix.Close(fd)
	}
	p.eventfds = nil
}
