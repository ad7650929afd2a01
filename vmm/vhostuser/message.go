package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a vhost-user request type (the header's request field).
type Request uint32

// Front-end requests (the vhost-user specification's numbering).
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFD            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	GetConfig           Request = 24
	SetConfig           Request = 25
	ResetDevice         Request = 34
	GetMaxMemSlots      Request = 36
)

var requestNames = map[Request]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER",
	ResetOwner: "RESET_OWNER", SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE",
	SetLogFD: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM", SetVringAddr: "SET_VRING_ADDR",
	SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE", SetVringKick: "SET_VRING_KICK",
	SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES", SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE", GetConfig: "GET_CONFIG",
	SetConfig: "SET_CONFIG", ResetDevice: "RESET_DEVICE", GetMaxMemSlots: "GET_MAX_MEM_SLOTS",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", uint32(r))
}

// Protocol feature bits (GET_PROTOCOL_FEATURES).
const (
	ProtocolMQ          uint64 = 1 << 0
	ProtocolLogShmFD    uint64 = 1 << 1
	ProtocolReplyAck    uint64 = 1 << 3
	ProtocolBackendReq  uint64 = 1 << 5
	ProtocolConfig      uint64 = 1 << 9
	ProtocolResetDevice uint64 = 1 << 13
	ProtocolMemSlots    uint64 = 1 << 15
)

// FeatureProtocolFeatures is VHOST_USER_F_PROTOCOL_FEATURES, the virtio
// feature bit by which a back end says it speaks protocol features; once
// it is set with SET_FEATURES, rings start disabled until
// SET_VRING_ENABLE.
const FeatureProtocolFeatures uint64 = 1 << 30

// Header flags.
const (
	flagVersion     = 0x1 // the only protocol version
	flagVersionMask = 0x3
	// FlagReply marks a reply.
	FlagReply = 0x4
	// FlagNeedReply asks for a REPLY_ACK reply.
	FlagNeedReply = 0x8
)

// Sizes and bounds of messages.
const (
	// HeaderSize is the size of a message header.
	HeaderSize = 12
	// MaxPayload bounds the payload of every message this package reads
	// or writes; a header announcing more is an error, and nothing more is
	// read.
	MaxPayload = 4096
	// MaxMemoryRegions is the most regions SET_MEM_TABLE carries (each
	// with its descriptor).
	MaxMemoryRegions = 8
	// MaxFDs bounds the descriptors one message carries.
	MaxFDs = MaxMemoryRegions

	vringStateSize   = 8
	vringAddrSize    = 40
	memoryRegionSize = 32
	memoryTableHead  = 8
	u64Size          = 8
)

// Flags of a vring descriptor-index payload (SET_VRING_KICK, _CALL, _ERR).
const (
	vringIndexMask = 0xFF
	// vringNoFD says no descriptor comes with the message.
	vringNoFD = 1 << 8
)

// Errors callers branch on.
var (
	// ErrProtocol: the back end sent something the protocol does not
	// allow (a bad size, version or request id, a reply to nothing,
	// descriptors where none belong). The connection is closed.
	ErrProtocol = errors.New("vhost-user: protocol error")
	// ErrRefused: the back end answered a request with a failure status
	// (REPLY_ACK).
	ErrRefused = errors.New("vhost-user: request refused by the back end")
	// ErrClosed: the connection is closed, or the back end is gone.
	ErrClosed = errors.New("vhost-user: connection closed")
)

// Header is a message header.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32 // payload bytes that follow
}

// Encode returns the header's wire form.
func (h Header) Encode() [HeaderSize]byte {
	var b [HeaderSize]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Request))
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
	return b
}

// ParseHeader decodes a header and checks its version and that its
// payload size is within MaxPayload.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrProtocol, len(b))
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&flagVersionMask != flagVersion {
		return Header{}, fmt.Errorf("%w: %v: version %d", ErrProtocol, h.Request, h.Flags&flagVersionMask)
	}
	if h.Size > MaxPayload {
		return Header{}, fmt.Errorf("%w: %v: payload of %d bytes, at most %d", ErrProtocol, h.Request, h.Size, MaxPayload)
	}
	return h, nil
}

// Message is one message: its header, its payload and the descriptors
// that came with it (the receiver owns and closes them).
type Message struct {
	Header  Header
	Payload []byte
	FDs     []int
}

// VringState is the payload of SET_VRING_NUM, SET_VRING_BASE,
// GET_VRING_BASE and SET_VRING_ENABLE.
type VringState struct {
	Index uint32
	Num   uint32
}

// Encode returns the payload's wire form.
func (s VringState) Encode() []byte {
	b := make([]byte, vringStateSize)
	binary.LittleEndian.PutUint32(b[0:], s.Index)
	binary.LittleEndian.PutUint32(b[4:], s.Num)
	return b
}

// ParseVringState decodes a vring state payload of exactly its size.
func ParseVringState(b []byte) (VringState, error) {
	if len(b) != vringStateSize {
		return VringState{}, fmt.Errorf("%w: vring state of %d bytes, want %d", ErrProtocol, len(b), vringStateSize)
	}
	return VringState{Index: binary.LittleEndian.Uint32(b[0:]), Num: binary.LittleEndian.Uint32(b[4:])}, nil
}

// VringAddr is the payload of SET_VRING_ADDR: the rings' addresses in the
// front end's address space (translated by the back end through the
// memory table's UserAddr).
type VringAddr struct {
	Index uint32
	Flags uint32 // bit 0: log the used ring (unused here)
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// Encode returns the payload's wire form.
func (a VringAddr) Encode() []byte {
	b := make([]byte, vringAddrSize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], a.Index)
	le.PutUint32(b[4:], a.Flags)
	le.PutUint64(b[8:], a.Desc)
	le.PutUint64(b[16:], a.Used)
	le.PutUint64(b[24:], a.Avail)
	le.PutUint64(b[32:], a.Log)
	return b
}

// ParseVringAddr decodes a vring address payload of exactly its size.
func ParseVringAddr(b []byte) (VringAddr, error) {
	if len(b) != vringAddrSize {
		return VringAddr{}, fmt.Errorf("%w: vring address of %d bytes, want %d", ErrProtocol, len(b), vringAddrSize)
	}
	le := binary.LittleEndian
	return VringAddr{Index: le.Uint32(b[0:]), Flags: le.Uint32(b[4:]), Desc: le.Uint64(b[8:]),
		Used: le.Uint64(b[16:]), Avail: le.Uint64(b[24:]), Log: le.Uint64(b[32:])}, nil
}

// MemoryRegion is one region of SET_MEM_TABLE: guest physical addresses
// [GPA, GPA+Size) are the front end's addresses [UserAddr, UserAddr+Size)
// and the bytes from MmapOffset of the region's descriptor.
type MemoryRegion struct {
	GPA        uint64
	Size       uint64
	UserAddr   uint64
	MmapOffset uint64
}

// EncodeMemoryTable returns the payload of SET_MEM_TABLE for regions (at
// most MaxMemoryRegions; their descriptors go with it, in order).
func EncodeMemoryTable(regions []MemoryRegion) ([]byte, error) {
	if len(regions) == 0 || len(regions) > MaxMemoryRegions {
		return nil, fmt.Errorf("vhost-user: memory table of %d regions (1..%d)", len(regions), MaxMemoryRegions)
	}
	b := make([]byte, memoryTableHead+memoryRegionSize*len(regions))
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(len(regions)))
	for i, r := range regions {
		o := memoryTableHead + memoryRegionSize*i
		le.PutUint64(b[o:], r.GPA)
		le.PutUint64(b[o+8:], r.Size)
		le.PutUint64(b[o+16:], r.UserAddr)
		le.PutUint64(b[o+24:], r.MmapOffset)
	}
	return b, nil
}

// ParseMemoryTable decodes a SET_MEM_TABLE payload (for back ends and
// tests): the count must match the size exactly.
func ParseMemoryTable(b []byte) ([]MemoryRegion, error) {
	if len(b) < memoryTableHead {
		return nil, fmt.Errorf("%w: memory table of %d bytes", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	n := le.Uint32(b[0:])
	if n == 0 || n > MaxMemoryRegions || uint64(len(b)) != memoryTableHead+memoryRegionSize*uint64(n) {
		return nil, fmt.Errorf("%w: memory table of %d regions in %d bytes", ErrProtocol, n, len(b))
	}
	out := make([]MemoryRegion, n)
	for i := range out {
		o := memoryTableHead + memoryRegionSize*i
		out[i] = MemoryRegion{GPA: le.Uint64(b[o:]), Size: le.Uint64(b[o+8:]), UserAddr: le.Uint64(b[o+16:]), MmapOffset: le.Uint64(b[o+24:])}
	}
	return out, nil
}

// EncodeU64 returns a u64 payload.
func EncodeU64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// ParseU64 decodes a u64 payload of exactly 8 bytes.
func ParseU64(b []byte) (uint64, error) {
	if len(b) != u64Size {
		return 0, fmt.Errorf("%w: u64 payload of %d bytes", ErrProtocol, len(b))
	}
	return binary.LittleEndian.Uint64(b), nil
}

// vringFile is the u64 payload of SET_VRING_KICK, _CALL and _ERR: the
// queue index, and vringNoFD when no descriptor comes with it.
func vringFile(index uint32, hasFD bool) uint64 {
	v := uint64(index) & vringIndexMask
	if !hasFD {
		v |= vringNoFD
	}
	return v
}

// ParseVringFile decodes the payload of SET_VRING_KICK, _CALL and _ERR:
// the queue index and whether a descriptor comes with it.
func ParseVringFile(b []byte) (index uint32, hasFD bool, err error) {
	v, err := ParseU64(b)
	if err != nil {
		return 0, false, err
	}
	if v&^(vringIndexMask|vringNoFD) != 0 {
		return 0, false, fmt.Errorf("%w: vring descriptor payload %#x", ErrProtocol, v)
	}
	return uint32(v & vringIndexMask), v&vringNoFD == 0, nil
}

// Reply is a decoded reply from the back end.
type Reply struct {
	Request Request
	// Value is the u64 of GET_FEATURES, GET_PROTOCOL_FEATURES,
	// GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, and the status of a REPLY_ACK
	// (0: success).
	Value uint64
	// State is the vring state of GET_VRING_BASE.
	State VringState
}

// replyKind says what payload a reply to a request carries.
type replyKind int

const (
	replyNone replyKind = iota
	replyU64
	replyState
)

// replyOf returns what the back end answers req with (ack: the request
// asked for a REPLY_ACK).
func replyOf(req Request, ack bool) replyKind {
	switch req {
	case GetFeatures, GetProtocolFeatures, GetQueueNum, GetMaxMemSlots:
		return replyU64
	case GetVringBase:
		return replyState
	}
	if ack {
		return replyU64
	}
	return replyNone
}

// DecodeReply checks m as the back end's reply to req (ack: req was sent
// with FlagNeedReply) and decodes it. Everything is checked, as the back
// end is not trusted: the reply flag and version, the request id, the
// exact payload size, and that no descriptors came with it. It never
// panics, whatever m holds.
func DecodeReply(req Request, ack bool, m Message) (Reply, error) {
	h := m.Header
	kind := replyOf(req, ack)
	switch {
	case kind == replyNone:
		return Reply{}, fmt.Errorf("%w: a reply to %v, which has none", ErrProtocol, req)
	case h.Flags&flagVersionMask != flagVersion:
		return Reply{}, fmt.Errorf("%w: reply to %v: version %d", ErrProtocol, req, h.Flags&flagVersionMask)
	case h.Flags&FlagReply == 0:
		return Reply{}, fmt.Errorf("%w: %v sent while awaiting the reply to %v", ErrProtocol, h.Request, req)
	case h.Request != req:
		return Reply{}, fmt.Errorf("%w: reply to %v while awaiting the reply to %v", ErrProtocol, h.Request, req)
	case uint64(h.Size) != uint64(len(m.Payload)):
		return Reply{}, fmt.Errorf("%w: reply to %v: header says %d bytes, %d came", ErrProtocol, req, h.Size, len(m.Payload))
	case len(m.FDs) != 0:
		return Reply{}, fmt.Errorf("%w: reply to %v carries %d descriptors", ErrProtocol, req, len(m.FDs))
	}
	r := Reply{Request: req}
	var err error
	switch kind {
	case replyU64:
		r.Value, err = ParseU64(m.Payload)
	case replyState:
		r.State, err = ParseVringState(m.Payload)
	}
	if err != nil {
		return Reply{}, fmt.Errorf("reply to %v: %w", req, err)
	}
	return r, nil
}

// EncodeReply returns the wire form of a reply (for back ends and tests):
// the header with FlagReply, then the payload.
func EncodeReply(r Reply, ack bool) []byte {
	var payload []byte
	switch replyOf(r.Request, ack) {
	case replyU64:
		payload = EncodeU64(r.Value)
	case replyState:
		payload = r.State.Encode()
	}
	h := Header{Request: r.Request, Flags: flagVersion | FlagReply, Size: uint32(len(payload))}
	hb := h.Encode()
	return append(hb[:], payload...)
}
