// Package control defines the supervisor control messages of a FICM group:
// FICM message types 0x40..0x4F, exchanged between the supervisor (peer 0)
// and the subOSes next to the RFcom channel protocol (0x01..0x3F) and the
// application datagrams (0x80..0xFF).
//
// # Wire format (payload of a queue.Message, little-endian)
//
//	0x40 TEXT   UTF-8 text, 1..62 bytes: an administrator's message
//	0x41 BOARD  u64 board sequence number: the published board changed
//	0x42 PING   u64 cookie
//	0x43 PONG   u64 cookie, echoing a PING (either direction)
//
// 0x44..0x4F are reserved. TEXT and BOARD are only honoured from the
// supervisor; receivers drop them when they come from another peer (the
// guests are untrusted). A PING from any peer is answered with a PONG.
// Decode validates everything and never panics on a peer's message.
package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"rainforest/ficm/queue"
)

// Message types.
const (
	TypeText  uint8 = 0x40
	TypeBoard uint8 = 0x41
	TypePing  uint8 = 0x42
	TypePong  uint8 = 0x43

	// FirstType and LastType bound the control range.
	FirstType uint8 = 0x40
	LastType  uint8 = 0x4F

	// MaxText is the longest TEXT payload in bytes.
	MaxText = queue.MaxPayload
)

var (
	// ErrTooLong means a TEXT message is longer than MaxText bytes.
	ErrTooLong = errors.New("control: text longer than 62 bytes")
	// ErrMalformed means a message is not a valid control message.
	ErrMalformed = errors.New("control: malformed message")
)

// IsControl reports whether t is in the control range 0x40..0x4F.
func IsControl(t uint8) bool { return t >= FirstType && t <= LastType }

// Text returns a TEXT message carrying s (1..62 bytes of valid UTF-8).
func Text(s string) (queue.Message, error) {
	if len(s) > MaxText {
		return queue.Message{}, fmt.Errorf("%w: %d bytes", ErrTooLong, len(s))
	}
	if s == "" || !utf8.ValidString(s) {
		return queue.Message{}, fmt.Errorf("%w: text must be 1..%d bytes of UTF-8", ErrMalformed, MaxText)
	}
	return queue.NewMessage(TypeText, []byte(s))
}

func u64Message(t uint8, v uint64) queue.Message {
	m := queue.Message{Type: t, Len: 8}
	binary.LittleEndian.PutUint64(m.Data[:], v)
	return m
}

// Board returns a BOARD message announcing board sequence seq.
func Board(seq uint64) queue.Message { return u64Message(TypeBoard, seq) }

// Ping returns a PING message with cookie.
func Ping(cookie uint64) queue.Message { return u64Message(TypePing, cookie) }

// Pong returns a PONG message echoing cookie.
func Pong(cookie uint64) queue.Message { return u64Message(TypePong, cookie) }

// Control is a decoded control message. Text is set for TEXT, Seq for
// BOARD, Cookie for PING and PONG.
type Control struct {
	Type   uint8
	Text   string
	Seq    uint64
	Cookie uint64
}

// String describes c in one line.
func (c Control) String() string {
	switch c.Type {
	case TypeText:
		return fmt.Sprintf("text %q", c.Text)
	case TypeBoard:
		return fmt.Sprintf("board seq %d", c.Seq)
	case TypePing:
		return fmt.Sprintf("ping %#x", c.Cookie)
	case TypePong:
		return fmt.Sprintf("pong %#x", c.Cookie)
	}
	return fmt.Sprintf("control type %#x", c.Type)
}

// Decode validates and decodes m (an untrusted peer's message). Errors wrap
// ErrMalformed: a type outside the known control types, a length not
// matching the type, or text that is empty or not UTF-8.
func Decode(m queue.Message) (Control, error) {
	n := int(m.Len)
	if n > queue.MaxPayload {
		return Control{}, fmt.Errorf("%w: length %d", ErrMalformed, n)
	}
	p := m.Data[:n]
	switch m.Type {
	case TypeText:
		if n == 0 || !utf8.Valid(p) {
			return Control{}, fmt.Errorf("%w: TEXT of %d bytes is empty or not UTF-8", ErrMalformed, n)
		}
		return Control{Type: TypeText, Text: string(p)}, nil
	case TypeBoard, TypePing, TypePong:
		if n != 8 {
			return Control{}, fmt.Errorf("%w: type %#x with %d payload bytes, want 8", ErrMalformed, m.Type, n)
		}
		v := binary.LittleEndian.Uint64(p)
		c := Control{Type: m.Type}
		if m.Type == TypeBoard {
			c.Seq = v
		} else {
			c.Cookie = v
		}
		return c, nil
	}
	if IsControl(m.Type) {
		return Control{}, fmt.Errorf("%w: reserved control type %#x", ErrMalformed, m.Type)
	}
	return Control{}, fmt.Errorf("%w: type %#x is not a control type", ErrMalformed, m.Type)
}
