package ivshmem

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testSize = 1 << 20

// fakeClient speaks the client side of the ivshmem protocol.
type fakeClient struct {
	t    *testing.T
	conn *net.UnixConn
	fds  []int // every fd received, closed by close
}

func dial(t *testing.T, path string) *fakeClient {
	t.Helper()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := &fakeClient{t: t, conn: conn}
	t.Cleanup(c.close)
	return c
}

func (c *fakeClient) close() {
	c.conn.Close()
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
}

// recv reads one message: the int64 and its fd (-1 if none).
func (c *fakeClient) recv() (int64, int, error) {
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [8]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	got := 0
	fd := -1
	for got < len(b) {
		n, oobn, _, _, err := c.conn.ReadMsgUnix(b[got:], oob)
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				return 0, -1, perr
			}
			for _, m := range msgs {
				fds, perr := unix.ParseUnixRights(&m)
				if perr != nil {
					return 0, -1, perr
				}
				c.fds = append(c.fds, fds...)
				if len(fds) != 1 || fd >= 0 {
					c.t.Errorf("message carries %d fds (had %d), want at most one", len(fds), fd)
				}
				fd = fds[0]
			}
		}
		if err != nil {
			return 0, -1, err
		}
		if n == 0 {
			return 0, -1, io.EOF
		}
		got += n
	}
	return int64(binary.LittleEndian.Uint64(b[:])), fd, nil
}

// expect receives one message and checks its value and whether it has an fd.
func (c *fakeClient) expect(want int64, wantFD bool) int {
	c.t.Helper()
	v, fd, err := c.recv()
	if err != nil {
		c.t.Fatalf("recv (want %d): %v", want, err)
	}
	if v != want || (fd >= 0) != wantFD {
		c.t.Fatalf("got message %d fd=%d, want %d with fd=%v", v, fd, want, wantFD)
	}
	return fd
}

// expectVectors receives id once per vector, each with an fd.
func (c *fakeClient) expectVectors(id int64, vectors int) []int {
	c.t.Helper()
	var fds []int
	for range vectors {
		fds = append(fds, c.expect(id, true))
	}
	return fds
}

// handshake receives steps 1-3 and returns the shm fd.
func (c *fakeClient) handshake(id int64) int {
	c.t.Helper()
	c.expect(ProtocolVersion, false)
	c.expect(id, false)
	return c.expect(-1, true)
}

func startServer(t *testing.T, cfg Config) (*Server, context.CancelFunc, <-chan error) {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(t.TempDir(), "ivshmem.sock")
	}
	if cfg.Size == 0 {
		cfg.Size = testSize
	}
	if cfg.Vectors == 0 {
		cfg.Vectors = 1
	}
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
		s.Close()
	})
	return s, cancel, errc
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

func waitPeers(t *testing.T, s *Server, want []int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := s.Peers()
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Peers() = %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func signal(t *testing.T, fd int) {
	t.Helper()
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatalf("eventfd write: %v", err)
	}
}

// waitSignal waits up to d for fd to be signalled and returns the counter.
func waitSignal(t *testing.T, fd int, d time.Duration) uint64 {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, int(d/time.Millisecond))
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Poll(pfd, int(d/time.Millisecond))
	}
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	if n == 0 {
		return 0
	}
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil {
		t.Fatalf("eventfd read: %v", err)
	}
	return binary.NativeEndian.Uint64(b[:])
}

func mmapShm(t *testing.T, fd int) []byte {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat shm: %v", err)
	}
	if st.Size != testSize {
		t.Fatalf("shm size %d, want %d", st.Size, testSize)
	}
	m, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	return m
}

func TestTwoClientsProtocol(t *testing.T) {
	const vectors = 2
	s, _, _ := startServer(t, Config{Vectors: vectors})

	c0 := dial(t, s.Addr())
	shm0 := c0.handshake(0)
	own0 := c0.expectVectors(0, vectors)
	waitPeers(t, s, []int{0})

	c1 := dial(t, s.Addr())
	shm1 := c1.handshake(1)
	peer0AtC1 := c1.expectVectors(0, vectors)
	own1 := c1.expectVectors(1, vectors)
	peer1AtC0 := c0.expectVectors(1, vectors)
	waitPeers(t, s, []int{0, 1})

	// Same shared memory through both fds.
	m0, m1 := mmapShm(t, shm0), mmapShm(t, shm1)
	copy(m0[testSize-5:], "hello")
	if got := string(m1[testSize-5:]); got != "hello" {
		t.Fatalf("shm via client 1 reads %q, want hello", got)
	}

	// Client 0 rings peer 1 on vector 1: only client 1's own vector 1 fires.
	signal(t, peer1AtC0[1])
	if v := waitSignal(t, own1[1], 5*time.Second); v != 1 {
		t.Fatalf("client 1 vector 1 counter %d, want 1", v)
	}
	if v := waitSignal(t, own1[0], 0); v != 0 {
		t.Fatalf("client 1 vector 0 fired (%d)", v)
	}
	// And the other way round on vector 0.
	signal(t, peer0AtC1[0])
	if v := waitSignal(t, own0[0], 5*time.Second); v != 1 {
		t.Fatalf("client 0 vector 0 counter %d, want 1", v)
	}

	// Disconnect of client 1 is announced to client 0 without an fd.
	c1.close()
	c0.expect(1, false)
	waitPeers(t, s, []int{0})

	// ID 1 is reused by the next client, which learns about peer 0 first.
	c2 := dial(t, s.Addr())
	c2.handshake(1)
	c2.expectVectors(0, vectors)
	c2.expectVectors(1, vectors)
	c0.expectVectors(1, vectors)
	waitPeers(t, s, []int{0, 1})
}

func TestLowestFreeIDReused(t *testing.T) {
	s, _, _ := startServer(t, Config{})
	c0 := dial(t, s.Addr())
	c0.handshake(0)
	c0.expectVectors(0, 1)
	c1 := dial(t, s.Addr())
	c1.handshake(1)
	c1.expectVectors(0, 1)
	c1.expectVectors(1, 1)
	c0.expectVectors(1, 1)
	c2 := dial(t, s.Addr())
	c2.handshake(2)
	c2.expectVectors(0, 1)
	c2.expectVectors(1, 1)
	c2.expectVectors(2, 1)
	c0.expectVectors(2, 1)
	c1.expectVectors(2, 1)

	c0.close()
	c1.expect(0, false)
	c2.expect(0, false)
	waitPeers(t, s, []int{1, 2})

	c3 := dial(t, s.Addr())
	c3.handshake(0)
	c3.expectVectors(1, 1)
	c3.expectVectors(2, 1)
	c3.expectVectors(0, 1)
	c1.expectVectors(0, 1)
	c2.expectVectors(0, 1)
	waitPeers(t, s, []int{0, 1, 2})
}

func TestGarbageFromClientDropsIt(t *testing.T) {
	s, _, _ := startServer(t, Config{})
	c0 := dial(t, s.Addr())
	c0.handshake(0)
	c0.expectVectors(0, 1)
	c1 := dial(t, s.Addr())
	c1.handshake(1)
	c1.expectVectors(0, 1)
	c1.expectVectors(1, 1)
	c0.expectVectors(1, 1)

	if _, err := c1.conn.Write([]byte("garbage")); err != nil {
		t.Fatalf("write: %v", err)
	}
	c0.expect(1, false)
	if _, _, err := c1.recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("dropped client recv: %v, want EOF", err)
	}
	waitPeers(t, s, []int{0})
}

func TestMaxPeersRefusesExtraClient(t *testing.T) {
	s, _, _ := startServer(t, Config{MaxPeers: 1})
	c0 := dial(t, s.Addr())
	c0.handshake(0)
	c0.expectVectors(0, 1)
	c1 := dial(t, s.Addr())
	if _, _, err := c1.recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("refused client recv: %v, want EOF", err)
	}
	waitPeers(t, s, []int{0})
	// The first client heard nothing about it.
	c0.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [8]byte
	if n, err := c0.conn.Read(b[:]); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client 0 got %d bytes, err %v; want timeout", n, err)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestCancelReleasesEverything(t *testing.T) {
	// Warm up the runtime's network poller so its fds exist before counting.
	if ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "warm.sock")); err == nil {
		ln.Close()
	}
	before := countFDs(t)

	sock := filepath.Join(t.TempDir(), "ivshmem.sock")
	s, err := Listen(Config{Socket: sock, Size: testSize, Vectors: 3})
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()

	c0 := dial(t, sock)
	c0.handshake(0)
	c0.expectVectors(0, 3)
	c1 := dial(t, sock)
	c1.handshake(1)
	c1.expectVectors(0, 3)
	c1.expectVectors(1, 3)
	c0.expectVectors(1, 3)

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	// Clients see EOF after whatever was queued.
	for _, c := range []*fakeClient{c0, c1} {
		if _, _, err := c.recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("client recv after cancel: %v, want EOF", err)
		}
		c.close()
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after Serve: %v", err)
	}
	if err := s.Serve(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Serve: %v, want ErrClosed", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file still there: %v", err)
	}
	if after := countFDs(t); after != before {
		t.Fatalf("fds before %d, after %d", before, after)
	}
}

func TestCloseStopsServe(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ivshmem.sock")
	s, err := Listen(Config{Socket: sock, Size: testSize, Vectors: 1})
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	c0 := dial(t, sock)
	c0.handshake(0)
	c0.expectVectors(0, 1)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close waited for Serve's cleanup: the socket file is already gone.
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file still there after Close: %v", err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	if _, _, err := c0.recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("client recv after Close: %v, want EOF", err)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	s, err := Listen(Config{Socket: stale, Size: testSize, Vectors: 1})
	if err != nil {
		t.Fatalf("Listen over stale socket: %v", err)
	}
	s.Close()

	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Config{Socket: regular, Size: testSize, Vectors: 1}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Listen over regular file: %v, want ErrExist", err)
	}

	sock := filepath.Join(dir, "x.sock")
	for _, cfg := range []Config{
		{Size: testSize, Vectors: 1},
		{Socket: sock, Size: 0, Vectors: 1},
		{Socket: sock, Size: 3 << 12, Vectors: 1},
		{Socket: sock, Size: 100, Vectors: 1},
		{Socket: sock, Size: testSize, Vectors: 0},
		{Socket: sock, Size: testSize, Vectors: MaxVectors + 1},
		{Socket: sock, Size: testSize, Vectors: 1, MaxPeers: -1},
		{Socket: sock, Size: testSize, Vectors: 1, MaxPeers: MaxPeerID + 2},
	} {
		if _, err := Listen(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Listen(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}
