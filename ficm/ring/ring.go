// Package ring is a single-producer single-consumer (SPSC) ring of raw
// 64-byte slots laid out on plain byte slices, for FICM messaging between
// peers that do not trust each other.
//
// # Wire ABI
//
// A ring is split across two memory areas, so that each side only ever
// writes its own memory and maps the other side's memory read-only:
//
//	tx (the SENDER's memory, written only by the producer), TxSize(slots) bytes:
//	  [0, 4)     producer index, uint32, host byte order (little-endian on x86-64)
//	  [4, 64)    reserved, zero
//	  [64, 64+64*slots)  slot i at 64 + 64*i, 64 raw bytes each
//
//	rx (the RECEIVER's memory, written only by the consumer), RxSize bytes:
//	  [0, 4)     consumer index, uint32, host byte order
//	  [4, 64)    reserved, zero
//
// Both areas must start at least 4-byte aligned; 64-byte (cache line)
// alignment is expected for performance and is what the section layout of
// ficm/endpoint provides. The slot count is a power of two between 1 and
// MaxSlots and is agreed out of band (it is never read from shared memory).
//
// Indices are free-running uint32 counters: slot i lives at index i mod
// slots, the ring holds prod-cons messages (uint32 arithmetic), it is empty
// when prod == cons and full when prod-cons == slots. Index words are
// accessed atomically with sequentially consistent ordering (the producer
// writes a slot, then stores prod; the consumer loads prod, then reads the
// slot; the consumer copies a slot out, then stores cons). A C peer must use
// at least release stores and acquire loads on the index words.
//
// # Validation
//
// Each side keeps its own index privately and only publishes it; the index
// it reads from the peer is untrusted. The consumer rejects a producer index
// with prod-cons > slots, and the producer rejects a consumer index outside
// [prod-slots, prod]; both report ErrCorrupt. No operation loops or indexes
// memory with a peer-controlled value, so a peer writing garbage cannot make
// the other side panic or hang. Slot contents are also untrusted: a consumer
// must copy a slot out before interpreting it (the peer may still be
// writing to it).
package ring

import (
	"errors"
	"fmt"
	"sync/atomic"
)

const (
	// SlotSize is the size of one slot: one cache line.
	SlotSize = 64
	// HeaderSize is the size of the producer header (the producer index
	// cache line) at the start of the tx area.
	HeaderSize = 64
	// RxSize is the size of the consumer area (the consumer index cache line).
	RxSize = 64
	// MaxSlots is the largest slot count a ring may have.
	MaxSlots = 1 << 20

	prodOffset = 0
	consOffset = 0
)

var (
	// ErrCorrupt is returned when the index read from the peer is impossible.
	ErrCorrupt = errors.New("ring: peer index corrupt")
	// ErrLayout is returned when slot count or area sizes are invalid.
	ErrLayout = errors.New("ring: invalid layout")
	// ErrMisaligned is returned when an index word is not suitably aligned.
	ErrMisaligned = errors.New("ring: misaligned index word")
	// ErrTooLong is returned when a message does not fit in a slot.
	ErrTooLong = errors.New("ring: message longer than a slot")
)

// TxSize returns the size of the producer (tx) area of a ring of slots slots.
func TxSize(slots int) int { return HeaderSize + slots*SlotSize }

// CheckSlots reports whether slots is a valid slot count.
func CheckSlots(slots int) error {
	if slots < 1 || slots > MaxSlots || slots&(slots-1) != 0 {
		return fmt.Errorf("%w: slot count %d is not a power of two in [1, %d]", ErrLayout, slots, MaxSlots)
	}
	return nil
}

// areas validates tx, rx and slots and returns the index words.
func areas(tx, rx []byte, slots int) (prod, cons *atomic.Uint32, err error) {
	if err := CheckSlots(slots); err != nil {
		return nil, nil, err
	}
	if len(tx) < TxSize(slots) {
		return nil, nil, fmt.Errorf("%w: tx area %d bytes, need %d", ErrLayout, len(tx), TxSize(slots))
	}
	if len(rx) < RxSize {
		return nil, nil, fmt.Errorf("%w: rx area %d bytes, need %d", ErrLayout, len(rx), RxSize)
	}
	prod, err = Uint32At(tx, prodOffset)
	if err != nil {
		return nil, nil, fmt.Errorf("producer index: %w", err)
	}
	cons, err = Uint32At(rx, consOffset)
	if err != nil {
		return nil, nil, fmt.Errorf("consumer index: %w", err)
	}
	return prod, cons, nil
}

// Producer is the sending side of a ring. It is not safe for concurrent use;
// exactly one Producer may exist per ring.
type Producer struct {
	prodWord *atomic.Uint32 // own memory, published
	consWord *atomic.Uint32 // peer memory, untrusted
	slots    []byte
	count    uint32
	mask     uint32
	prod     uint32 // authoritative producer index
	cons     uint32 // last validated consumer index
	reserved uint32 // slots handed out by Reserve, not yet committed
}

// NewProducer returns the producer of the ring whose producer area is tx
// (writable) and consumer area is rx (the peer's, read-only). The producer
// resumes from the index already stored in tx (zero for fresh memory).
func NewProducer(tx, rx []byte, slots int) (*Producer, error) {
	prod, cons, err := areas(tx, rx, slots)
	if err != nil {
		return nil, err
	}
	n := uint32(slots)
	p := &Producer{
		prodWord: prod,
		consWord: cons,
		slots:    tx[HeaderSize:TxSize(slots)],
		count:    n,
		mask:     n - 1,
		prod:     prod.Load(),
	}
	p.cons = p.prod - n // looks full: the first push reads the real index
	return p, nil
}

// Slots returns the ring's slot count.
func (p *Producer) Slots() int { return int(p.count) }

// refresh reads and validates the consumer index.
func (p *Producer) refresh() error {
	c := p.consWord.Load()
	if p.prod-c > p.count {
		return fmt.Errorf("%w: consumer index %d outside [%d, %d]", ErrCorrupt, c, p.prod-p.count, p.prod)
	}
	p.cons = c
	return nil
}

// Free returns the number of free slots, reading the consumer index afresh.
func (p *Producer) Free() (int, error) {
	if err := p.refresh(); err != nil {
		return 0, err
	}
	return int(p.count - (p.prod - p.cons)), nil
}

// Reserve makes up to max free slots available through Slot, re-reading the
// consumer index only when the cached one shows fewer than max free slots.
// It returns how many slots were reserved (0 when the ring is full). A new
// Reserve replaces an uncommitted earlier one.
func (p *Producer) Reserve(max int) (int, error) {
	p.reserved = 0
	if max <= 0 {
		return 0, nil
	}
	want := p.count
	if max < int(want) {
		want = uint32(max)
	}
	free := p.count - (p.prod - p.cons)
	if free < want {
		if err := p.refresh(); err != nil {
			return 0, err
		}
		free = p.count - (p.prod - p.cons)
	}
	if free > want {
		free = want
	}
	p.reserved = free
	return int(free), nil
}

// Slot returns the i-th reserved slot for writing, 0 <= i < the count
// returned by the last Reserve. It panics outside that range (a programming
// error, never caused by the peer).
func (p *Producer) Slot(i int) *[SlotSize]byte {
	if i < 0 || uint32(i) >= p.reserved {
		panic(fmt.Sprintf("ring: producer slot %d outside reservation of %d", i, p.reserved))
	}
	off := ((p.prod + uint32(i)) & p.mask) * SlotSize
	return (*[SlotSize]byte)(p.slots[off : off+SlotSize])
}

// Span returns the reserved slots from the i-th on as one slice of the
// ring's memory, up to the end of the reservation or of the ring's memory,
// whichever comes first: a multiple of SlotSize bytes, for copying a
// message of many slots without a call per slot. It panics outside the
// reservation, as Slot does.
func (p *Producer) Span(i int) []byte {
	if i < 0 || uint32(i) >= p.reserved {
		panic(fmt.Sprintf("ring: producer span from slot %d outside reservation of %d", i, p.reserved))
	}
	return span(p.slots, (p.prod+uint32(i))&p.mask, p.reserved-uint32(i), p.count)
}

// span is n slots from slot start of slots (count slots in all), cut at
// the end of the memory.
func span(slots []byte, start, n, count uint32) []byte {
	n = min(n, count-start)
	lo, hi := start*SlotSize, (start+n)*SlotSize
	return slots[lo:hi:hi]
}

// Commit publishes the first n reserved slots to the consumer and ends the
// reservation. It panics if n exceeds the reservation.
func (p *Producer) Commit(n int) {
	if n < 0 || uint32(n) > p.reserved {
		panic(fmt.Sprintf("ring: commit of %d slots exceeds reservation of %d", n, p.reserved))
	}
	p.reserved = 0
	if n == 0 {
		return
	}
	p.prod += uint32(n)
	p.prodWord.Store(p.prod)
}

// TryPush copies msg (at most SlotSize bytes, zero-padded) into the next
// slot and publishes it. It returns false when the ring is full.
func (p *Producer) TryPush(msg []byte) (bool, error) {
	if len(msg) > SlotSize {
		return false, fmt.Errorf("%w: %d bytes", ErrTooLong, len(msg))
	}
	n, err := p.Reserve(1)
	if n == 0 {
		return false, err
	}
	s := p.Slot(0)
	copy(s[:], msg)
	clear(s[len(msg):])
	p.Commit(1)
	return true, nil
}

// Consumer is the receiving side of a ring. It is not safe for concurrent
// use; exactly one Consumer may exist per ring.
type Consumer struct {
	prodWord *atomic.Uint32 // peer memory, untrusted
	consWord *atomic.Uint32 // own memory, published
	slots    []byte
	count    uint32
	mask     uint32
	cons     uint32 // authoritative consumer index
	prod     uint32 // last validated producer index
	peeked   uint32 // slots made available by Peek, not yet released
}

// NewConsumer returns the consumer of the ring whose producer area is tx
// (the peer's, read-only) and consumer area is rx (writable). The consumer
// resumes from the index already stored in rx (zero for fresh memory).
func NewConsumer(tx, rx []byte, slots int) (*Consumer, error) {
	prod, cons, err := areas(tx, rx, slots)
	if err != nil {
		return nil, err
	}
	n := uint32(slots)
	c := &Consumer{
		prodWord: prod,
		consWord: cons,
		slots:    tx[HeaderSize:TxSize(slots)],
		count:    n,
		mask:     n - 1,
		cons:     cons.Load(),
	}
	c.prod = c.cons // looks empty: the first pop reads the real index
	return c, nil
}

// Slots returns the ring's slot count.
func (c *Consumer) Slots() int { return int(c.count) }

// refresh reads and validates the producer index.
func (c *Consumer) refresh() error {
	p := c.prodWord.Load()
	if p-c.cons > c.count {
		return fmt.Errorf("%w: producer index %d outside [%d, %d]", ErrCorrupt, p, c.cons, c.cons+c.count)
	}
	c.prod = p
	return nil
}

// Pending returns the number of messages waiting, reading the producer
// index afresh.
func (c *Consumer) Pending() (int, error) {
	if err := c.refresh(); err != nil {
		return 0, err
	}
	return int(c.prod - c.cons), nil
}

// Peek makes up to max waiting messages available through Slot, re-reading
// the producer index only when the cached one shows fewer than max. It
// returns how many (0 when the ring is empty). A new Peek replaces an
// unreleased earlier one.
func (c *Consumer) Peek(max int) (int, error) {
	c.peeked = 0
	if max <= 0 {
		return 0, nil
	}
	want := c.count
	if max < int(want) {
		want = uint32(max)
	}
	avail := c.prod - c.cons
	if avail < want {
		if err := c.refresh(); err != nil {
			return 0, err
		}
		avail = c.prod - c.cons
	}
	if avail > want {
		avail = want
	}
	c.peeked = avail
	return int(avail), nil
}

// Slot returns the i-th peeked slot, 0 <= i < the count returned by the
// last Peek. The slot is the peer's memory: copy it before interpreting it.
// Slot panics outside that range (a programming error, never caused by the
// peer).
func (c *Consumer) Slot(i int) *[SlotSize]byte {
	if i < 0 || uint32(i) >= c.peeked {
		panic(fmt.Sprintf("ring: consumer slot %d outside peek of %d", i, c.peeked))
	}
	off := ((c.cons + uint32(i)) & c.mask) * SlotSize
	return (*[SlotSize]byte)(c.slots[off : off+SlotSize])
}

// Span returns the peeked slots from the i-th on as one slice of the
// ring's memory, up to the end of the peek or of the ring's memory,
// whichever comes first (a multiple of SlotSize bytes). It is the peer's
// memory: copy it before interpreting it. It panics outside the peek, as
// Slot does.
func (c *Consumer) Span(i int) []byte {
	if i < 0 || uint32(i) >= c.peeked {
		panic(fmt.Sprintf("ring: consumer span from slot %d outside peek of %d", i, c.peeked))
	}
	return span(c.slots, (c.cons+uint32(i))&c.mask, c.peeked-uint32(i), c.count)
}

// Release hands the first n peeked slots back to the producer and ends the
// peek. It panics if n exceeds the peek.
func (c *Consumer) Release(n int) {
	if n < 0 || uint32(n) > c.peeked {
		panic(fmt.Sprintf("ring: release of %d slots exceeds peek of %d", n, c.peeked))
	}
	c.peeked = 0
	if n == 0 {
		return
	}
	c.cons += uint32(n)
	c.consWord.Store(c.cons)
}

// TryPop copies the next message into dst and releases its slot. It returns
// false when the ring is empty.
func (c *Consumer) TryPop(dst *[SlotSize]byte) (bool, error) {
	n, err := c.Peek(1)
	if n == 0 {
		return false, err
	}
	*dst = *c.Slot(0)
	c.Release(1)
	return true, nil
}
