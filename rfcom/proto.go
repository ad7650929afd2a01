package rfcom

import (
	"encoding/binary"
	"errors"
	"fmt"

	"rainforest/ficm/queue"
)

// Channel protocol message types.
const (
	TypeOpen      uint8 = 0x01
	TypeAccept    uint8 = 0x02
	TypeRefuse    uint8 = 0x03
	TypeDataFirst uint8 = 0x04
	TypeData      uint8 = 0x05
	TypeCredit    uint8 = 0x06
	TypeClose     uint8 = 0x07

	// FirstChannelType and LastChannelType bound the channel protocol's
	// type range.
	FirstChannelType uint8 = 0x01
	LastChannelType  uint8 = 0x3F
	// FirstDatagramType is the first application datagram type (to 0xFF).
	FirstDatagramType uint8 = 0x80
)

// REFUSE reasons.
const (
	RefuseNoListener  uint8 = 1
	RefuseBacklogFull uint8 = 2
	RefuseNoChannelID uint8 = 3
)

// Frame and window sizes.
const (
	// MaxFrame is the largest frame a channel carries.
	MaxFrame = 64 << 10
	// FirstFragmentData is the data carried by a DATA_FIRST message.
	FirstFragmentData = queue.MaxPayload - 4
	// FragmentData is the data carried by a DATA message.
	FragmentData = queue.MaxPayload - 2
	// DefaultWindow is the bytes a node buffers per channel by default.
	DefaultWindow = 256 << 10
	// MaxWindow bounds a window (announced or configured).
	MaxWindow = 1 << 30
	// MaxDatagram is the largest datagram payload.
	MaxDatagram = queue.MaxPayload
)

// errMalformed marks a malformed channel protocol message (internal: such
// messages are dropped and counted).
var errMalformed = errors.New("rfcom: malformed message")

// wire is a decoded channel protocol message.
type wire struct {
	typ    uint8
	dst    uint16 // receiver's channel id (OPEN: unused)
	src    uint16 // OPEN, ACCEPT: sender's channel id
	port   uint16 // OPEN
	window uint32 // OPEN, ACCEPT
	reason uint8  // REFUSE
	length int    // DATA_FIRST: total frame length
	credit uint32 // CREDIT
	data   []byte // DATA_FIRST, DATA (aliases the message)
}

func msg(typ uint8, n int) queue.Message { return queue.Message{Type: typ, Len: uint8(n)} }

func openMsg(port, src uint16, window uint32) queue.Message {
	m := msg(TypeOpen, 8)
	binary.LittleEndian.PutUint16(m.Data[0:], port)
	binary.LittleEndian.PutUint16(m.Data[2:], src)
	binary.LittleEndian.PutUint32(m.Data[4:], window)
	return m
}

func acceptMsg(dst, src uint16, window uint32) queue.Message {
	m := msg(TypeAccept, 8)
	binary.LittleEndian.PutUint16(m.Data[0:], dst)
	binary.LittleEndian.PutUint16(m.Data[2:], src)
	binary.LittleEndian.PutUint32(m.Data[4:], window)
	return m
}

func refuseMsg(dst uint16, reason uint8) queue.Message {
	m := msg(TypeRefuse, 3)
	binary.LittleEndian.PutUint16(m.Data[0:], dst)
	m.Data[2] = reason
	return m
}

func creditMsg(dst uint16, n uint32) queue.Message {
	m := msg(TypeCredit, 6)
	binary.LittleEndian.PutUint16(m.Data[0:], dst)
	binary.LittleEndian.PutUint32(m.Data[2:], n)
	return m
}

func closeMsg(dst uint16) queue.Message {
	m := msg(TypeClose, 2)
	binary.LittleEndian.PutUint16(m.Data[0:], dst)
	return m
}

// dataMsg returns the fragment of frame starting at off and the number of
// frame bytes it carries.
func dataMsg(dst uint16, frame []byte, off int) (queue.Message, int) {
	if off == 0 {
		m := msg(TypeDataFirst, 0)
		binary.LittleEndian.PutUint16(m.Data[0:], dst)
		binary.LittleEndian.PutUint16(m.Data[2:], uint16(len(frame)-1))
		n := copy(m.Data[4:], frame)
		m.Len = uint8(4 + n)
		return m, n
	}
	m := msg(TypeData, 0)
	binary.LittleEndian.PutUint16(m.Data[0:], dst)
	n := copy(m.Data[2:], frame[off:])
	m.Len = uint8(2 + n)
	return m, n
}

// decodeWire validates a channel protocol message from a peer.
func decodeWire(m *queue.Message) (wire, error) {
	n := int(m.Len)
	if n > queue.MaxPayload {
		return wire{}, fmt.Errorf("%w: length %d", errMalformed, n)
	}
	p := m.Data[:n]
	w := wire{typ: m.Type}
	switch m.Type {
	case TypeOpen, TypeAccept, TypeRefuse, TypeCredit, TypeClose:
		if want := fixedLen(m.Type); n != want {
			return wire{}, fmt.Errorf("%w: type %#x with %d bytes, want %d", errMalformed, m.Type, n, want)
		}
	case TypeDataFirst:
		if n < 4 {
			return wire{}, fmt.Errorf("%w: DATA_FIRST of %d bytes", errMalformed, n)
		}
	case TypeData:
		if n < 3 {
			return wire{}, fmt.Errorf("%w: DATA of %d bytes", errMalformed, n)
		}
	default:
		return wire{}, fmt.Errorf("%w: unknown channel message type %#x", errMalformed, m.Type)
	}
	switch m.Type {
	case TypeOpen:
		w.port = binary.LittleEndian.Uint16(p[0:])
		w.src = binary.LittleEndian.Uint16(p[2:])
		w.window = binary.LittleEndian.Uint32(p[4:])
	case TypeAccept:
		w.dst = binary.LittleEndian.Uint16(p[0:])
		w.src = binary.LittleEndian.Uint16(p[2:])
		w.window = binary.LittleEndian.Uint32(p[4:])
	case TypeRefuse:
		w.dst = binary.LittleEndian.Uint16(p[0:])
		w.reason = p[2]
	case TypeCredit:
		w.dst = binary.LittleEndian.Uint16(p[0:])
		w.credit = binary.LittleEndian.Uint32(p[2:])
	case TypeClose:
		w.dst = binary.LittleEndian.Uint16(p[0:])
	case TypeDataFirst:
		w.dst = binary.LittleEndian.Uint16(p[0:])
		w.length = int(binary.LittleEndian.Uint16(p[2:])) + 1
		w.data = p[4:]
		if len(w.data) > w.length {
			return wire{}, fmt.Errorf("%w: DATA_FIRST carries %d bytes of a %d-byte frame", errMalformed, len(w.data), w.length)
		}
	case TypeData:
		w.dst = binary.LittleEndian.Uint16(p[0:])
		w.data = p[2:]
	}
	if (m.Type == TypeOpen && w.src == 0) || (m.Type == TypeAccept && w.src == 0) || (m.Type != TypeOpen && w.dst == 0) {
		return wire{}, fmt.Errorf("%w: channel id 0", errMalformed)
	}
	if (m.Type == TypeOpen || m.Type == TypeAccept) && (w.window < MaxFrame || w.window > MaxWindow) {
		return wire{}, fmt.Errorf("%w: window %d outside [%d, %d]", errMalformed, w.window, MaxFrame, MaxWindow)
	}
	return w, nil
}

// fixedLen is the payload length of the fixed-size channel messages.
func fixedLen(t uint8) int {
	switch t {
	case TypeOpen, TypeAccept:
		return 8
	case TypeRefuse:
		return 3
	case TypeCredit:
		return 6
	case TypeClose:
		return 2
	}
	return -1
}
