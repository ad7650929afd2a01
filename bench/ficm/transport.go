package main

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// msgSize is the size of one FICM message: one cache line.
const msgSize = 64

// message is one 64-byte message. Word 0 is the sequence number, word 1
// the sender's CLOCK_REALTIME in ns, word 2 the one-way delay the
// receiver measured for the message it answers.
type message [msgSize]byte

// transport carries 64-byte messages one way in each direction between
// the bench and its child process.
type transport interface {
	send(m *message) error
	recv(m *message) error
	close() error
}

// pinThread locks the calling goroutine to its OS thread and that thread
// to core. The caller must not unlock it: the thread then ends with the
// goroutine instead of going back to the runtime pinned.
func pinThread(core int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(core)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to core %d: %w", core, err)
	}
	return nil
}

// fdTransport sends and receives on blocking file descriptors (pipes,
// sockets) with one write and read per message.
type fdTransport struct{ rfd, wfd int }

func (t fdTransport) send(m *message) error {
	for b := m[:]; len(b) > 0; {
		n, err := unix.Write(t.wfd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		b = b[n:]
	}
	return nil
}

func (t fdTransport) recv(m *message) error {
	for b := m[:]; len(b) > 0; {
		n, err := unix.Read(t.rfd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

func (t fdTransport) close() error {
	err := unix.Close(t.rfd)
	if t.wfd != t.rfd {
		err = errors.Join(err, unix.Close(t.wfd))
	}
	return err
}

// Shared-memory ring layout: a single-producer single-consumer ring of
// 64-byte slots. The head (and the consumer's "sleeping" flag) share a
// line written by the producer; the tail (and the producer's flag) a line
// written by the consumer. Head and tail are free-running 32-bit counters,
// and each is the futex word its waiter sleeps on.
const (
	ringHead      = 0
	ringConsWait  = 4
	ringTail      = 64
	ringProdWait  = 68
	ringSlots     = 128
	ringSlotCount = 64
	ringBytes     = ringSlots + ringSlotCount*msgSize
	shmRingStride = 16 << 10 // p2c ring at 0, c2p ring at 16 KiB
	shmBytes      = 2 * shmRingStride
)

// shmRing is one direction of the futex-woken shared-memory ring.
type shmRing struct {
	mem                            []byte
	head, tail, consWait, prodWait *atomic.Uint32
	// peerGone is checked whenever a wait times out, so that a dead or
	// stopped peer cannot leave this side asleep for ever.
	peerGone func() error
}

// ringWaitTimeout bounds one futex sleep between peerGone checks.
const ringWaitTimeout = 100 * time.Millisecond

func newSHMRing(mem []byte, peerGone func() error) (*shmRing, error) {
	if len(mem) < ringBytes {
		return nil, fmt.Errorf("ring needs %d bytes, have %d", ringBytes, len(mem))
	}
	head, err := u32At(mem, ringHead)
	if err != nil {
		return nil, err
	}
	tail, err := u32At(mem, ringTail)
	if err != nil {
		return nil, err
	}
	cw, err := u32At(mem, ringConsWait)
	if err != nil {
		return nil, err
	}
	pw, err := u32At(mem, ringProdWait)
	if err != nil {
		return nil, err
	}
	return &shmRing{mem: mem, head: head, tail: tail, consWait: cw, prodWait: pw, peerGone: peerGone}, nil
}

func (r *shmRing) slot(i uint32) []byte {
	off := ringSlots + int(i%ringSlotCount)*msgSize
	return r.mem[off : off+msgSize]
}

func (r *shmRing) send(m *message) error {
	h := r.head.Load()
	for h-r.tail.Load() >= ringSlotCount {
		r.prodWait.Store(1)
		if t := r.tail.Load(); h-t >= ringSlotCount {
			if err := futexWait(r.tail, t, ringWaitTimeout); err != nil {
				return err
			}
			if err := r.peerGone(); err != nil {
				return err
			}
		}
		r.prodWait.Store(0)
	}
	copy(r.slot(h), m[:])
	r.head.Store(h + 1)
	if r.consWait.Load() != 0 {
		return futexWake(r.head)
	}
	return nil
}

func (r *shmRing) recv(m *message) error {
	t := r.tail.Load()
	for r.head.Load() == t {
		r.consWait.Store(1)
		if r.head.Load() == t {
			if err := futexWait(r.head, t, ringWaitTimeout); err != nil {
				return err
			}
			if err := r.peerGone(); err != nil {
				return err
			}
		}
		r.consWait.Store(0)
	}
	copy(m[:], r.slot(t))
	r.tail.Store(t + 1)
	if r.prodWait.Load() != 0 {
		return futexWake(r.tail)
	}
	return nil
}

// shmTransport is a pair of rings in one shared mapping.
type shmTransport struct {
	mem     []byte
	tx, rx  *shmRing
	aborted atomic.Bool
}

// errAborted is returned by a transport's waits after abort.
var errAborted = errors.New("transport aborted")

// newSHMTransport maps fd; the parent sends on the first ring, the child
// on the second. The child gives up when its parent is gone.
func newSHMTransport(fd int, child bool) (*shmTransport, error) {
	t := &shmTransport{}
	ppid := unix.Getppid()
	peerGone := func() error {
		if t.aborted.Load() {
			return errAborted
		}
		if child && unix.Getppid() != ppid {
			return errors.New("parent process gone")
		}
		return nil
	}
	mem, err := unix.Mmap(fd, 0, shmBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map shared ring: %w", err)
	}
	t.mem = mem
	p2c, err := newSHMRing(mem[:shmRingStride], peerGone)
	if err != nil {
		return nil, errors.Join(err, unix.Munmap(mem))
	}
	c2p, err := newSHMRing(mem[shmRingStride:], peerGone)
	if err != nil {
		return nil, errors.Join(err, unix.Munmap(mem))
	}
	t.tx, t.rx = p2c, c2p
	if child {
		t.tx, t.rx = c2p, p2c
	}
	return t, nil
}

// abort makes the transport's current and later waits fail (within
// ringWaitTimeout); the parent calls it when its child is killed.
func (t *shmTransport) abort() { t.aborted.Store(true) }

func (t *shmTransport) send(m *message) error { return t.tx.send(m) }
func (t *shmTransport) recv(m *message) error { return t.rx.recv(m) }
func (t *shmTransport) close() error          { return unix.Munmap(t.mem) }
