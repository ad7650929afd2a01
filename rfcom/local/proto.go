package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"rainforest/ficm/board"
	"rainforest/rfcom"
)

// Protocol limits and defaults.
const (
	// DefaultSocket is the daemon's socket path.
	DefaultSocket = "/run/rfcom.sock"
	// MaxRequest bounds a request message.
	MaxRequest = 1024
	// MaxReply bounds a reply or control message.
	MaxReply = 64 << 10
	// PendingControls is how many control messages the daemon keeps for
	// the next subscriber, and how far a subscriber may fall behind.
	PendingControls = 64
	// DefaultMaxClients bounds the daemon's concurrent connections.
	DefaultMaxClients = 1024
	// requestTimeout bounds the wait for a client's request.
	requestTimeout = 10 * time.Second
	// replyTimeout bounds writing a reply.
	replyTimeout = 10 * time.Second
)

// Operations.
const (
	opDial    = "dial"
	opAccept  = "accept"
	opControl = "control"
	opInfo    = "info"
)

// Error codes of a reply.
const (
	codeBadRequest   = "bad-request"
	codeRefused      = "refused"
	codePeerGone     = "peer-gone"
	codeNoPeer       = "no-peer"
	codeUnknownName  = "unknown-name"
	codePortInUse    = "port-in-use"
	codeClosed       = "closed"
	codeTooMany      = "too-many-clients"
	codeBoardCorrupt = "board-corrupt"
	codeBoardBusy    = "board-busy"
	codeFailed       = "failed"
)

var (
	// ErrNoDaemon means no daemon listens on the socket (it does not exist
	// or refuses connections: a stale socket).
	ErrNoDaemon = errors.New("rfcom/local: no rfcom daemon")
	// ErrBadRequest means the daemon rejected a malformed request.
	ErrBadRequest = errors.New("rfcom/local: bad request")
	// ErrTooManyClients means the daemon serves too many connections.
	ErrTooManyClients = errors.New("rfcom/local: too many clients")
	// ErrDaemonGone means the daemon closed a control subscription.
	ErrDaemonGone = errors.New("rfcom/local: the daemon closed the connection")
	// ErrProtocol means the daemon sent something this client does not
	// understand.
	ErrProtocol = errors.New("rfcom/local: protocol error")
)

// request is a client's first message.
type request struct {
	Op   string `json:"op"`
	Peer *int   `json:"peer,omitempty"`
	To   string `json:"to,omitempty"`
	Port *int   `json:"port,omitempty"`
}

// reply is the union of every reply body.
type reply struct {
	Error          string     `json:"error,omitempty"`
	Code           string     `json:"code,omitempty"`
	Peer           *int       `json:"peer,omitempty"`
	Self           *int       `json:"self,omitempty"`
	Peers          *int       `json:"peers,omitempty"`
	Address        string     `json:"address,omitempty"`
	Board          *jsonBoard `json:"board,omitempty"`
	BoardError     string     `json:"board_error,omitempty"`
	BoardErrorCode string     `json:"board_error_code,omitempty"`
}

// controlMessage is one control message sent to a subscriber.
type controlMessage struct {
	Type string `json:"type"`
	Text string `json:"text,omitempty"`
	Seq  uint64 `json:"seq,omitempty"`
}

type jsonEntry struct {
	Peer      int    `json:"peer"`
	State     uint8  `json:"state"`
	CommCores []int  `json:"comm_cores,omitempty"`
	MAC       string `json:"mac,omitempty"`
	Name      string `json:"name"`
}

type jsonBoard struct {
	Seq        uint64      `json:"seq"`
	Supervisor int         `json:"supervisor"`
	Entries    []jsonEntry `json:"entries"`
}

func boardJSON(b board.Board) *jsonBoard {
	j := &jsonBoard{Seq: b.Seq, Supervisor: b.Supervisor, Entries: []jsonEntry{}}
	for _, e := range b.Entries {
		je := jsonEntry{Peer: e.Peer, State: e.State, CommCores: e.CommCores, Name: e.Name}
		if e.MAC != ([6]byte{}) {
			je.MAC = net.HardwareAddr(e.MAC[:]).String()
		}
		j.Entries = append(j.Entries, je)
	}
	return j
}

func (j *jsonBoard) board() (board.Board, error) {
	if len(j.Entries) > board.MaxEntries {
		return board.Board{}, fmt.Errorf("%w: board of %d entries", ErrProtocol, len(j.Entries))
	}
	b := board.Board{Seq: j.Seq, Supervisor: j.Supervisor}
	for _, je := range j.Entries {
		e := board.Entry{Peer: je.Peer, State: je.State, CommCores: je.CommCores, Name: je.Name}
		if je.MAC != "" {
			mac, err := net.ParseMAC(je.MAC)
			if err != nil || len(mac) != 6 {
				return board.Board{}, fmt.Errorf("%w: board MAC %q", ErrProtocol, je.MAC)
			}
			copy(e.MAC[:], mac)
		}
		b.Entries = append(b.Entries, e)
	}
	return b, nil
}

// parseRequest decodes and validates a request message.
func parseRequest(msg []byte) (request, error) {
	var r request
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return request{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return request{}, fmt.Errorf("%w: data after the JSON object", ErrBadRequest)
	}
	port := func() error {
		if r.Port == nil || *r.Port < 0 || *r.Port > 0xFFFF {
			return fmt.Errorf("%w: %s needs a port 0..65535", ErrBadRequest, r.Op)
		}
		return nil
	}
	none := func() error {
		if r.Peer != nil || r.To != "" || r.Port != nil {
			return fmt.Errorf("%w: %s takes no peer, to or port", ErrBadRequest, r.Op)
		}
		return nil
	}
	switch r.Op {
	case opDial:
		switch {
		case (r.Peer == nil) == (r.To == ""):
			return request{}, fmt.Errorf("%w: dial needs one of peer and to", ErrBadRequest)
		case r.Peer != nil && (*r.Peer < 0 || *r.Peer > 0xFFFF):
			return request{}, fmt.Errorf("%w: peer %d", ErrBadRequest, *r.Peer)
		}
		return r, port()
	case opAccept:
		if r.Peer != nil || r.To != "" {
			return request{}, fmt.Errorf("%w: accept takes no peer or to", ErrBadRequest)
		}
		return r, port()
	case opControl, opInfo:
		return r, none()
	case "":
		return request{}, fmt.Errorf("%w: no op", ErrBadRequest)
	}
	return request{}, fmt.Errorf("%w: unknown op %q", ErrBadRequest, r.Op)
}

// codeOf returns the reply code of err.
func codeOf(err error) string {
	for _, c := range codeTable() {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codeFailed
}

type codeError struct {
	code string
	err  error
}

// codeTable maps reply codes to sentinel errors.
func codeTable() []codeError {
	return []codeError{
		{codeBadRequest, ErrBadRequest},
		{codeRefused, rfcom.ErrRefused},
		{codePeerGone, rfcom.ErrPeerGone},
		{codeNoPeer, rfcom.ErrNoPeer},
		{codeUnknownName, rfcom.ErrUnknownName},
		{codePortInUse, rfcom.ErrPortInUse},
		{codeClosed, rfcom.ErrClosed},
		{codeTooMany, ErrTooManyClients},
		{codeBoardCorrupt, board.ErrCorrupt},
		{codeBoardBusy, board.ErrBusy},
	}
}

// RemoteError is an error the daemon replied with. Its message is the
// daemon's; it unwraps to the matching sentinel (rfcom.ErrRefused,
// rfcom.ErrPeerGone, ErrBadRequest, board.ErrCorrupt, ...) if any.
type RemoteError struct {
	Code string
	Msg  string
}

func (e *RemoteError) Error() string { return e.Msg }

// Unwrap returns the sentinel error of e's code (nil if none).
func (e *RemoteError) Unwrap() error {
	for _, c := range codeTable() {
		if c.code == e.Code {
			return c.err
		}
	}
	return nil
}

func remoteError(code, msg string) error {
	if msg == "" {
		msg = "rfcom daemon: error " + code
	}
	return &RemoteError{Code: code, Msg: strings.ToValidUTF8(msg, "?")}
}

// longAgo returns a deadline in the past: it interrupts blocked I/O.
func longAgo() time.Time { return time.Unix(1, 0) }

// withContext runs do, interrupting it through setDeadline when ctx ends;
// an I/O error caused by ctx is replaced with ctx's error.
func withContext(ctx context.Context, setDeadline func(time.Time) error, do func() error) error {
	if ctx.Done() == nil {
		return do()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = setDeadline(longAgo())
		close(fired)
	})
	err := do()
	if !stop() {
		<-fired
		_ = setDeadline(time.Time{})
		if err != nil {
			return ctx.Err()
		}
	}
	return err
}
