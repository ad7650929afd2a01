// Package rfcom is the RFcom library for programs running in a subOS:
// socket-like, framed, flow-controlled channels between subOSes over the
// machine-wide FICM group, raw datagrams, the supervisor's control messages
// and board, and the mapping of shared segments granted by the supervisor.
//
// # Transport
//
// A Node runs a rainforest/ficm/endpoint over the FICM group's shared-memory
// PCI function (protocol 1, rainforest/rfcom/device): every peer's output
// section holds a 4096-byte info page (the supervisor's holds the board,
// package ficm/board) followed by the endpoint section (64 slots per ring),
// doorbell vector 0. The supervisor is peer 0; subOSes are peers 1..N-1.
// Open writes STATE=1 (abi.StateAlive) and Close STATE=0; a peer whose
// state-table entry is not alive is gone.
//
// One dispatcher goroutine per Node receives every message; sends from all
// goroutines are serialized by a mutex. A full ring makes a sender retry
// (yield, then short sleeps), never drop. When there is nothing to receive
// the dispatcher sleeps on vector 0 with no timer: peers' doorbells and the
// device's state-change interrupt (a peer's state-table entry changed, see
// rainforest/vmm/shmem/abi) are all that wake it, unless replies it could
// not send yet wait for room in a full ring.
//
// # Message types (queue.Message.Type)
//
//	0x01..0x3F  RFcom channel protocol, below
//	0x40..0x4F  supervisor control (package ficm/control): TEXT and BOARD
//	            honoured only from peer 0; PING answered with PONG
//	0x80..0xFF  application datagrams (Send, Recv), payload 0..62 bytes
//
// Anything else, and any malformed message, is dropped and counted (Stats).
//
// # Channel protocol (payloads little-endian)
//
// A channel joins a local channel id on each side (u16, 1..65535, chosen by
// the side that owns it); every message names the RECEIVER's id (dst).
//
//	0x01 OPEN        u16 port, u16 src, u32 window
//	0x02 ACCEPT      u16 dst, u16 src, u32 window
//	0x03 REFUSE      u16 dst, u8 reason (1 no listener, 2 backlog full,
//	                 3 no free channel id)
//	0x04 DATA_FIRST  u16 dst, u16 frame length - 1, then 0..58 data bytes
//	0x05 DATA        u16 dst, then 1..60 data bytes
//	0x06 CREDIT      u16 dst, u32 bytes
//	0x07 CLOSE       u16 dst
//
// Dial sends OPEN with its new channel id (src) and the bytes it will
// buffer for the channel (window, at least MaxFrame). The listener's node
// answers ACCEPT (its own id and window) or REFUSE. A frame (1..MaxFrame
// bytes) is one DATA_FIRST carrying the total length and the first bytes,
// then DATA messages with the rest, in order; fragments of different
// frames of one channel never interleave. A DATA without a frame in
// progress, a DATA_FIRST while one is, or more bytes than announced is a
// malformed frame: the partial frame is dropped and counted.
//
// Flow control is by credit, in data bytes: a sender starts with the
// peer's window and spends a fragment's data length on each fragment; it
// waits while it has less credit than the fragment needs. The receiver
// buffers at most window bytes per channel (the dispatcher never blocks,
// so a channel nobody reads never stalls the shared ring) and returns
// credit with CREDIT as the application reads frames, once a quarter of the
// window is owed or its buffer runs empty.
//
// CLOSE ends the sender's direction and its use of the channel: the peer's
// Read returns the frames already received, then io.EOF; its Write fails.
// Each side sends CLOSE once; an id is freed when both CLOSEs were seen (or
// the peer is gone). A peer that is marked dead in the state table, or
// whose queue the endpoint reports corrupt (an *endpoint.PeerError), is
// gone: blocked and later calls on its channels return ErrPeerGone.
//
// # Many programs in one subOS
//
// A FICM group's rings are single-producer single-consumer per pair of
// peers, so one Node per subOS at a time may use the device. To share it,
// run `rfcom daemon`: it owns the Node and serves local programs over a
// Unix socket (package rainforest/rfcom/local).
package rfcom
