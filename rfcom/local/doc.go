// Package local lets several programs of one subOS share its RFcom Node:
// a daemon (Serve) owns the Node, the only user of the FICM group's rings
// for this peer, and multiplexes local clients over a Unix SOCK_SEQPACKET
// socket (DefaultSocket, mode 0600, made by Listen), like a socket layer.
// The client side is Dial, DialName, Accept, Control and Info.
//
// # Local protocol
//
// Every socket message is one datagram-like record (SOCK_SEQPACKET keeps
// message boundaries). A client connection starts with one JSON request
// message (at most MaxRequest bytes); the daemon answers with one JSON
// reply message, either an error
//
//	{"error": "rfcom: connection refused: ...", "code": "refused"}
//
// after which it closes the connection, or the operation's success body:
//
//	{"op":"dial","peer":N,"port":P}   reply {"peer":N}, then a frame pipe
//	{"op":"dial","to":"NAME","port":P}  (NAME resolved on the board)
//	{"op":"accept","port":P}          reply {"peer":N}, then a frame pipe
//	{"op":"control"}                  reply {}, then control messages
//	{"op":"info"}                     reply {"self":N,"peers":N,"address":A,
//	                                  "board":{...}} or with "board_error"
//
// Error codes: bad-request, refused, peer-gone, no-peer, unknown-name,
// port-in-use, closed, too-many-clients, board-corrupt, board-busy, failed.
// Unknown fields, a missing or out-of-range field, an unknown op or a
// request that is not one JSON object are bad-request. A client must wait
// for the reply before it sends anything else; one that sends or leaves
// while the daemon dials or waits for a channel gives up the operation.
//
// Frame pipe: every message from the client is one frame written to the
// RFcom channel (1..rfcom.MaxFrame bytes; a longer one ends the
// connection), every frame read from the channel is sent to the client as
// one message. The client's end of stream (close or shutdown of its
// sending side; an empty message reads as one too) closes the channel
// after the frames before it were sent. The channel's end (the peer
// closed it, died, or an error) ends the daemon's stream to the client
// after the frames received (logged); the daemon then discards what the
// client sends until the client's end of stream, and closes the
// connection. So a client that shuts down its sending side and reads
// until end of stream knows its frames went out; one that closes with
// frames unread aborts (the socket is reset and frames in flight may be
// lost). The pipe carries no status: a failure reads as end of stream.
// Each channel has its own credit window, so a client that does not read
// only stalls its own channel.
//
// Accept: the daemon listens on the port while at least one client waits
// there, and for a second after the last one left (one rfcom.Listener per
// port shared by its waiters), and hands each waiter one channel. A
// channel opened while nobody waits is taken by the next waiter within
// that second, or closed.
//
// Control: the daemon takes every supervisor control message (TEXT and
// BOARD) from the Node, logs it, and sends it to every subscriber as
// {"type":"text","text":"..."} or {"type":"board","seq":N}. While nobody
// subscribes it keeps the last PendingControls messages for the next
// subscriber. A subscriber that falls PendingControls messages behind is
// disconnected.
//
// Only clients running as root or as the daemon's user are served (peer
// credentials), on top of the socket's mode.
package local
