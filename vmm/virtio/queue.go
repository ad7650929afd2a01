package virtio

import (
	"errors"
	"fmt"
	"sync/atomic"

	"rainforest/vmm/guestmem"
)

// Split virtqueue constants.
const (
	// MaxQueueSize is the largest queue size a device may offer.
	MaxQueueSize = 256

	DescFlagNext     = 1
	DescFlagWrite    = 2
	DescFlagIndirect = 4

	descSize = 16

	availFlagNoInterrupt = 1
)

// Sentinel errors of the virtqueue.
var (
	// ErrMalformed: the guest put an invalid value in the rings or the
	// descriptor table. The queue is broken from then on.
	ErrMalformed = errors.New("virtio: malformed virtqueue")
	// ErrBroken: an earlier error broke the queue; the driver must reset.
	ErrBroken = errors.New("virtio: virtqueue broken, reset needed")
)

// QueueConfig is what the driver programmed for a queue.
type QueueConfig struct {
	Size   uint16 // power of two, 1..MaxQueueSize
	Desc   uint64 // descriptor table GPA
	Driver uint64 // available ring GPA
	Device uint64 // used ring GPA
}

// Chain is one descriptor chain taken from the available ring. Readable and
// Writable are the device-readable and device-writable buffers, in order,
// as slices aliasing guest memory (the guest may change them at any time).
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
}

// ReadableLen returns the total length of the readable buffers.
func (c *Chain) ReadableLen() uint64 { return buffersLen(c.Readable) }

// WritableLen returns the total length of the writable buffers.
func (c *Chain) WritableLen() uint64 { return buffersLen(c.Writable) }

func buffersLen(bs [][]byte) uint64 {
	var n uint64
	for _, b := range bs {
		n += uint64(len(b))
	}
	return n
}

// Queue is the device side of a split virtqueue in guest memory. It is not
// safe for concurrent use: a device model serializes access per queue.
type Queue struct {
	mem       *guestmem.Memory
	cfg       QueueConfig
	eventIdx  bool
	indirect  bool
	lastAvail uint16
	usedIdx   uint16
	signalled uint16 // used index at the last NeedsNotify
	broken    bool
	fence     atomic.Uint32
}

// NewQueue checks cfg and returns a queue on mem. features are the
// negotiated feature bits (FeatureIndirectDesc, FeatureEventIdx matter).
func NewQueue(mem *guestmem.Memory, cfg QueueConfig, features uint64) (*Queue, error) {
	n := uint64(cfg.Size)
	if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("%w: queue size %d", ErrMalformed, n)
	}
	if cfg.Desc%16 != 0 || cfg.Driver%2 != 0 || cfg.Device%4 != 0 {
		return nil, fmt.Errorf("%w: misaligned rings %#x %#x %#x", ErrMalformed, cfg.Desc, cfg.Driver, cfg.Device)
	}
	// Avail: flags, idx, ring[n], used_event. Used: flags, idx,
	// ring[n]{id,len}, avail_event.
	for _, r := range []struct{ gpa, n uint64 }{
		{cfg.Desc, descSize * n}, {cfg.Driver, 6 + 2*n}, {cfg.Device, 6 + 8*n},
	} {
		if _, err := mem.Slice(r.gpa, r.n); err != nil {
			return nil, fmt.Errorf("%w: ring outside memory: %w", ErrMalformed, err)
		}
	}
	q := &Queue{
		mem:      mem,
		cfg:      cfg,
		eventIdx: features&FeatureEventIdx != 0,
		indirect: features&FeatureIndirectDesc != 0,
	}
	// A newly enabled queue starts at index 0 on both rings.
	return q, nil
}

// Size returns the queue size.
func (q *Queue) Size() uint16 { return q.cfg.Size }

// Resume continues a queue another process served so far (a vhost-user
// back end that failed) from where its used ring stands: the next chain
// taken is the one at the used index in the available ring. For a server
// that returned chains in the order it took them, the chains from there
// to the available index are exactly the ones it had not returned.
func (q *Queue) Resume() error {
	used, err := q.mem.Uint16(q.cfg.Device + 2)
	if err != nil {
		return q.fail("used idx: %w", err)
	}
	q.lastAvail, q.usedIdx, q.signalled = used, used, used
	return nil
}

// Config returns what the driver programmed for the queue (checked by
// NewQueue: the rings lie in guest memory).
func (q *Queue) Config() QueueConfig { return q.cfg }

func (q *Queue) fail(format string, args ...any) error {
	q.broken = true
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func (q *Queue) readDesc(table uint64, i uint16) (desc, error) {
	b, err := q.mem.Slice(table+uint64(i)*descSize, descSize)
	if err != nil {
		return desc{}, err
	}
	return desc{
		addr:  le64(b[0:]),
		len:   le32(b[8:]),
		flags: le16(b[12:]),
		next:  le16(b[14:]),
	}, nil
}

// Pop takes the next available chain. ok is false when the ring is empty.
// A malformed chain or ring returns an error wrapping ErrMalformed and
// breaks the queue (later calls return ErrBroken); the device should then
// set DEVICE_NEEDS_RESET.
func (q *Queue) Pop() (c Chain, ok bool, err error) {
	if q.broken {
		return Chain{}, false, ErrBroken
	}
	availIdx, err := q.mem.Uint16(q.cfg.Driver + 2)
	if err != nil {
		return Chain{}, false, q.fail("avail idx: %w", err)
	}
	if availIdx == q.lastAvail && q.eventIdx {
		// Ask for a notification on the next buffer, then look again
		// in case the driver added one meanwhile.
		if err := q.mem.PutUint16(q.availEventAddr(), q.lastAvail); err != nil {
			return Chain{}, false, q.fail("avail_event: %w", err)
		}
		q.fence.Add(1) // full barrier (locked instruction) before re-reading
		if availIdx, err = q.mem.Uint16(q.cfg.Driver + 2); err != nil {
			return Chain{}, false, q.fail("avail idx: %w", err)
		}
	}
	if availIdx == q.lastAvail {
		return Chain{}, false, nil
	}
	if uint16(availIdx-q.lastAvail) > q.cfg.Size {
		return Chain{}, false, q.fail("avail idx %d runs %d ahead of %d", availIdx, uint16(availIdx-q.lastAvail), q.lastAvail)
	}
	slot := uint64(q.lastAvail % q.cfg.Size)
	head, err := q.mem.Uint16(q.cfg.Driver + 4 + 2*slot)
	if err != nil {
		return Chain{}, false, q.fail("avail ring: %w", err)
	}
	q.lastAvail++
	c, err = q.walk(head)
	if err != nil {
		return Chain{Head: head}, false, err
	}
	return c, true, nil
}

// walk follows the chain starting at head.
func (q *Queue) walk(head uint16) (Chain, error) {
	c := Chain{Head: head}
	size := q.cfg.Size
	if head >= size {
		return c, q.fail("head %d >= size %d", head, size)
	}
	table, tableSize := q.cfg.Desc, size
	inIndirect := false
	idx := head
	budget := int(size) // buffer descriptors allowed, direct and indirect
	for {
		d, err := q.readDesc(table, idx)
		if err != nil {
			return c, q.fail("descriptor %d: %w", idx, err)
		}
		if d.flags&DescFlagIndirect != 0 {
			if !q.indirect || inIndirect || d.flags&DescFlagNext != 0 {
				return c, q.fail("descriptor %d: bad indirect flags %#x", idx, d.flags)
			}
			if d.len == 0 || d.len%descSize != 0 || uint64(d.len)/descSize > uint64(size) {
				return c, q.fail("descriptor %d: indirect table length %d", idx, d.len)
			}
			if _, err := q.mem.Slice(d.addr, uint64(d.len)); err != nil {
				return c, q.fail("indirect table: %w", err)
			}
			table, tableSize, inIndirect, idx = d.addr, uint16(d.len/descSize), true, 0
			continue
		}
		// Every buffer descriptor counts; the one indirect descriptor
		// does not, so an indirect table may hold a full queue's worth.
		if budget == 0 {
			return c, q.fail("chain from %d longer than queue size %d", head, size)
		}
		budget--
		buf, err := q.mem.Slice(d.addr, uint64(d.len))
		if err != nil {
			return c, q.fail("descriptor %d buffer: %w", idx, err)
		}
		if d.flags&DescFlagWrite != 0 {
			c.Writable = append(c.Writable, buf)
		} else {
			if len(c.Writable) != 0 {
				return c, q.fail("descriptor %d: readable after writable", idx)
			}
			c.Readable = append(c.Readable, buf)
		}
		if d.flags&DescFlagNext == 0 {
			return c, nil
		}
		if d.next >= tableSize {
			return c, q.fail("descriptor %d: next %d >= %d", idx, d.next, tableSize)
		}
		idx = d.next
	}
}

func (q *Queue) availEventAddr() uint64 { return q.cfg.Device + 4 + 8*uint64(q.cfg.Size) }
func (q *Queue) usedEventAddr() uint64  { return q.cfg.Driver + 4 + 2*uint64(q.cfg.Size) }

// Push returns chain head to the driver with written bytes written into
// its writable buffers.
func (q *Queue) Push(head uint16, written uint32) error {
	if q.broken {
		return ErrBroken
	}
	if head >= q.cfg.Size {
		return fmt.Errorf("%w: push head %d >= size %d", ErrMalformed, head, q.cfg.Size)
	}
	elem := q.cfg.Device + 4 + 8*uint64(q.usedIdx%q.cfg.Size)
	if err := q.mem.PutUint32(elem, uint32(head)); err != nil {
		return q.fail("used ring: %w", err)
	}
	if err := q.mem.PutUint32(elem+4, written); err != nil {
		return q.fail("used ring: %w", err)
	}
	q.usedIdx++
	q.fence.Add(1) // the element is visible before the index
	if err := q.mem.PutUint16(q.cfg.Device+2, q.usedIdx); err != nil {
		return q.fail("used idx: %w", err)
	}
	return nil
}

// Used is one element of the used ring: a chain's head and the count of
// bytes written into its writable buffers.
type Used struct {
	Head uint16
	Len  uint32
}

// PushMany returns the chains used to the driver, in order, and publishes
// them with one write of the used index: the driver sees all of them or
// none (a frame spread over several receive buffers arrives whole). A
// head out of range returns ErrMalformed before anything is written.
func (q *Queue) PushMany(used []Used) error {
	if q.broken {
		return ErrBroken
	}
	for _, u := range used {
		if u.Head >= q.cfg.Size {
			return fmt.Errorf("%w: push head %d >= size %d", ErrMalformed, u.Head, q.cfg.Size)
		}
	}
	if len(used) == 0 {
		return nil
	}
	idx := q.usedIdx
	for _, u := range used {
		elem := q.cfg.Device + 4 + 8*uint64(idx%q.cfg.Size)
		if err := q.mem.PutUint32(elem, uint32(u.Head)); err != nil {
			return q.fail("used ring: %w", err)
		}
		if err := q.mem.PutUint32(elem+4, u.Len); err != nil {
			return q.fail("used ring: %w", err)
		}
		idx++
	}
	q.usedIdx = idx
	q.fence.Add(1) // the elements are visible before the index
	if err := q.mem.PutUint16(q.cfg.Device+2, q.usedIdx); err != nil {
		return q.fail("used idx: %w", err)
	}
	return nil
}

// NeedsNotify reports whether the driver wants a used-buffer notification
// for the buffers pushed since the last call.
func (q *Queue) NeedsNotify() bool {
	q.fence.Add(1) // used idx is visible before reading the driver's wish
	old := q.signalled
	q.signalled = q.usedIdx
	if old == q.usedIdx {
		return false
	}
	if q.eventIdx {
		ev, err := q.mem.Uint16(q.usedEventAddr())
		if err != nil {
			return true
		}
		return q.usedIdx-ev-1 < q.usedIdx-old
	}
	flags, err := q.mem.Uint16(q.cfg.Driver)
	if err != nil {
		return true
	}
	return flags&availFlagNoInterrupt == 0
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }
