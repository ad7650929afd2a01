// Package queue frames FICM messages into the 64-byte slots of a ficm/ring
// ring, batches them, and implements the "needs doorbell" (NAPI) protocol
// that lets a receiver sleep without losing a wake-up.
//
// # Slot framing (wire ABI)
//
//	byte 0      Type: application-defined message type
//	byte 1      Len: payload length, 0..MaxPayload (62)
//	bytes 2..63 payload; bytes past Len are zero when sent and ignored when
//	            received
//
// A slot whose Len exceeds MaxPayload is a bad frame: it is consumed and
// reported as ErrBadFrame, so a misbehaving sender cannot block the queue.
//
// # Areas (wire ABI)
//
// The sender's area (tx) is exactly the ring's producer area,
// ring.TxSize(slots) bytes. The receiver's area (rx) is RxSize bytes: the
// ring's consumer-index cache line at [0, 64), then the "armed" cache line
// at [ArmedOffset, ArmedOffset+64) whose first uint32 (host byte order)
// is the armed word. Bit 0 set means the receiver is, or is about to go,
// asleep and must be woken by a doorbell; the other bits are reserved and
// written as zero. Only the receiver writes the armed word.
//
// # Doorbell protocol
//
// The receiver, having found the queue empty:
//
//  1. stores armed = 1,
//  2. re-reads the producer index; if the queue is not empty it stores
//     armed = 0 and keeps polling,
//  3. otherwise sleeps until a doorbell, then stores armed = 0 and polls.
//
// The sender, after publishing messages (storing the producer index):
//
//  1. loads the armed word; if bit 0 is set it rings the receiver's doorbell.
//
// The sender never clears the flag. Both sides use sequentially consistent
// atomics (on x86 the store is a locked instruction, i.e. a full fence), so
// of the receiver's "store armed; load prod" and the sender's "store prod;
// load armed" at least one sees the other's store: either the receiver sees
// the new message in step 2, or the sender sees the flag and rings. A C peer
// needs a full barrier (e.g. mfence or a locked op) between the store and
// the load on both sides. Spurious doorbells are possible and harmless.
package queue

import (
	"errors"
	"fmt"
	"sync/atomic"

	"rainforest/ficm/ring"
)

const (
	// HeaderSize is the number of framing bytes at the start of a slot.
	HeaderSize = 2
	// MaxPayload is the largest payload of one message.
	MaxPayload = ring.SlotSize - HeaderSize
	// ArmedOffset is the offset of the armed word in the receiver's area.
	ArmedOffset = ring.RxSize
	// RxSize is the size of the receiver's area of one queue.
	RxSize = ring.RxSize + 64

	armedBit = 1
)

var (
	// ErrTooLong is returned when a payload exceeds MaxPayload.
	ErrTooLong = errors.New("queue: payload longer than 62 bytes")
	// ErrBadFrame is returned when a received slot has an invalid length.
	ErrBadFrame = errors.New("queue: bad frame")
)

// TxSize returns the size of the sender's area of a queue of slots slots.
func TxSize(slots int) int { return ring.TxSize(slots) }

// Message is one FICM message: a type and up to MaxPayload bytes. Its
// in-memory layout matches the slot framing.
type Message struct {
	Type uint8
	Len  uint8
	Data [MaxPayload]byte
}

// NewMessage returns a message of type typ carrying payload.
func NewMessage(typ uint8, payload []byte) (Message, error) {
	m := Message{Type: typ}
	if err := m.SetPayload(payload); err != nil {
		return Message{}, err
	}
	return m, nil
}

// SetPayload copies p into the message and sets its length.
func (m *Message) SetPayload(p []byte) error {
	if len(p) > MaxPayload {
		return fmt.Errorf("%w: %d bytes", ErrTooLong, len(p))
	}
	m.Len = uint8(copy(m.Data[:], p))
	clear(m.Data[m.Len:])
	return nil
}

// Payload returns the message's payload (aliasing m.Data).
func (m *Message) Payload() []byte { return m.Data[:min(int(m.Len), MaxPayload)] }

// encode writes m into a slot; m.Len must be valid.
func encode(s *[ring.SlotSize]byte, m *Message) {
	s[0] = m.Type
	s[1] = m.Len
	n := copy(s[HeaderSize:], m.Data[:m.Len])
	clear(s[HeaderSize+n:])
}

// decode copies a slot (peer memory, read once) into m and validates it.
func decode(m *Message, s *[ring.SlotSize]byte) error {
	var b [ring.SlotSize]byte = *s
	m.Type = b[0]
	m.Len = b[1]
	if m.Len > MaxPayload {
		bad := m.Len
		*m = Message{}
		return fmt.Errorf("%w: length %d", ErrBadFrame, bad)
	}
	copy(m.Data[:], b[HeaderSize:])
	clear(m.Data[m.Len:])
	return nil
}

// Sender is the sending side of a queue. It is not safe for concurrent use.
type Sender struct {
	prod  *ring.Producer
	armed *atomic.Uint32 // receiver's memory, untrusted
}

// NewSender returns the sender of the queue with sender area tx (writable)
// and receiver area rx (the peer's, read-only) of slots slots.
func NewSender(tx, rx []byte, slots int) (*Sender, error) {
	if len(rx) < RxSize {
		return nil, fmt.Errorf("%w: receiver area %d bytes, need %d", ring.ErrLayout, len(rx), RxSize)
	}
	p, err := ring.NewProducer(tx, rx, slots)
	if err != nil {
		return nil, err
	}
	armed, err := ring.Uint32At(rx, ArmedOffset)
	if err != nil {
		return nil, fmt.Errorf("armed word: %w", err)
	}
	return &Sender{prod: p, armed: armed}, nil
}

// TryPush sends m. ok is false when the queue is full; doorbell is true
// when the receiver is armed and must be woken with a doorbell.
func (s *Sender) TryPush(m Message) (ok, doorbell bool, err error) {
	n, doorbell, err := s.PushBatch([]Message{m})
	return n == 1, doorbell, err
}

// PushBatch sends as many of ms, in order, as fit, publishing them with one
// index update. It returns how many were sent and whether a doorbell is
// needed. No message is sent if any has an invalid length.
func (s *Sender) PushBatch(ms []Message) (n int, doorbell bool, err error) {
	for i := range ms {
		if ms[i].Len > MaxPayload {
			return 0, false, fmt.Errorf("%w: message %d has length %d", ErrTooLong, i, ms[i].Len)
		}
	}
	n, err = s.prod.Reserve(len(ms))
	if n == 0 {
		return 0, false, err
	}
	for i := range n {
		encode(s.prod.Slot(i), &ms[i])
	}
	s.prod.Commit(n)
	return n, s.armed.Load()&armedBit != 0, nil
}

// Free returns the number of messages that can be sent without blocking.
func (s *Sender) Free() (int, error) { return s.prod.Free() }

// Receiver is the receiving side of a queue. It is not safe for concurrent
// use.
type Receiver struct {
	cons    *ring.Consumer
	armed   *atomic.Uint32 // own memory
	isArmed bool
}

// NewReceiver returns the receiver of the queue with sender area tx (the
// peer's, read-only) and receiver area rx (writable) of slots slots. It
// starts disarmed.
func NewReceiver(tx, rx []byte, slots int) (*Receiver, error) {
	if len(rx) < RxSize {
		return nil, fmt.Errorf("%w: receiver area %d bytes, need %d", ring.ErrLayout, len(rx), RxSize)
	}
	c, err := ring.NewConsumer(tx, rx, slots)
	if err != nil {
		return nil, err
	}
	armed, err := ring.Uint32At(rx, ArmedOffset)
	if err != nil {
		return nil, fmt.Errorf("armed word: %w", err)
	}
	armed.Store(0)
	return &Receiver{cons: c, armed: armed}, nil
}

// TryPop receives one message; ok is false when the queue is empty. A bad
// frame is consumed and reported as ErrBadFrame.
func (r *Receiver) TryPop() (m Message, ok bool, err error) {
	n, err := r.cons.Peek(1)
	if n == 0 {
		return Message{}, false, err
	}
	err = decode(&m, r.cons.Slot(0))
	r.cons.Release(1)
	if err != nil {
		return Message{}, false, err
	}
	return m, true, nil
}

// PopBatch receives up to len(dst) messages into dst and returns how many,
// releasing their slots with one index update. On a bad frame it stops after
// consuming that slot, returning the good messages before it and
// ErrBadFrame.
func (r *Receiver) PopBatch(dst []Message) (int, error) {
	n, err := r.cons.Peek(len(dst))
	if n == 0 {
		return 0, err
	}
	for i := range n {
		if err := decode(&dst[i], r.cons.Slot(i)); err != nil {
			r.cons.Release(i + 1)
			return i, err
		}
	}
	r.cons.Release(n)
	return n, nil
}

// Poll receives up to budget messages, calling handle for each, and returns
// how many were handled. Slots are released after the batch. It stops at a
// bad frame (consumed) with ErrBadFrame.
func (r *Receiver) Poll(budget int, handle func(Message)) (int, error) {
	n, err := r.cons.Peek(budget)
	if n == 0 {
		return 0, err
	}
	var m Message
	for i := range n {
		if err := decode(&m, r.cons.Slot(i)); err != nil {
			r.cons.Release(i + 1)
			return i, err
		}
		handle(m)
	}
	r.cons.Release(n)
	return n, nil
}

// Pending returns how many messages are waiting (fresh read of the index).
func (r *Receiver) Pending() (int, error) { return r.cons.Pending() }

// Arm publishes that the receiver is about to sleep, then re-checks the
// queue. It returns idle=true when the queue is still empty: the receiver
// may sleep and the sender will request a doorbell for the next message.
// Otherwise (messages arrived, or the index is corrupt) it disarms again and
// returns idle=false.
func (r *Receiver) Arm() (idle bool, err error) {
	if !r.isArmed {
		r.armed.Store(armedBit)
		r.isArmed = true
	}
	n, err := r.cons.Pending()
	if err != nil || n > 0 {
		r.Disarm()
		return false, err
	}
	return true, nil
}

// Disarm withdraws the request for doorbells; call it after waking.
func (r *Receiver) Disarm() {
	if r.isArmed {
		r.armed.Store(0)
		r.isArmed = false
	}
}

// Armed reports whether the receiver is armed.
func (r *Receiver) Armed() bool { return r.isArmed }
