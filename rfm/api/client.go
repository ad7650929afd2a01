package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"rainforest/ficm/board"
	"rainforest/internal/buildinfo"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/supervisor"
)

// DefaultSocket is where rfm serve listens.
const DefaultSocket = "/run/rainforest/rfm.sock"

// Errors a caller branches on (errors.Is): the request's outcome, whatever
// the message.
var (
	// ErrNotFound: the supervisor answered 404 (no such subOS, disk,
	// segment or endpoint).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the supervisor answered 409 (the name is taken, the
	// device busy, the guest did not release it).
	ErrConflict = errors.New("conflict")
	// ErrPermission: the socket's permissions refused this user, or the
	// supervisor answered 403.
	ErrPermission = errors.New("permission denied")
	// ErrNotReachable: no supervisor listens on the socket.
	ErrNotReachable = errors.New("supervisor not reachable")
	// ErrVersionMismatch: a request failed and the supervisor is another
	// build than this client.
	ErrVersionMismatch = errors.New("supervisor of another version")
)

// Client talks to a supervisor over its Unix socket.
type Client struct {
	http    *http.Client
	socket  string
	version string // this client's build (buildinfo.Info.String)
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{http: &http.Client{Transport: tr}, socket: path, version: buildinfo.Read().String()}
}

// APIError is a non-2xx answer. errors.Is matches ErrNotFound (404),
// ErrConflict (409) and ErrPermission (403).
type APIError struct {
	Status int
	Body   ErrorBody
}

func (e *APIError) Error() string { return e.Body.Error }

// Is reports whether the status is the one target stands for.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrPermission:
		return e.Status == http.StatusForbidden
	}
	return false
}

// SocketError is a request that did not reach the supervisor, or whose
// answer was cut off. Its message says what to do, without the transport's
// detail; errors.Is matches ErrNotReachable or ErrPermission where one
// applies, and the underlying system error.
type SocketError struct {
	Socket string
	Err    error // the transport's error
}

func (e *SocketError) Error() string {
	switch {
	case errors.Is(e.Err, ErrPermission):
		return fmt.Sprintf("permission denied on %s: run as root or join the rainforest group", e.Socket)
	case errors.Is(e.Err, ErrNotReachable):
		return fmt.Sprintf("no supervisor is listening on %s: start it with `rfm serve`", e.Socket)
	case errors.Is(e.Err, io.EOF), errors.Is(e.Err, io.ErrUnexpectedEOF), errors.Is(e.Err, syscall.ECONNRESET), errors.Is(e.Err, syscall.EPIPE):
		return fmt.Sprintf("the supervisor on %s closed the connection before answering: see its log", e.Socket)
	}
	var errno syscall.Errno
	if errors.As(e.Err, &errno) {
		return fmt.Sprintf("cannot talk to the supervisor on %s: %s", e.Socket, errno.Error())
	}
	return fmt.Sprintf("cannot talk to the supervisor on %s", e.Socket)
}

func (e *SocketError) Unwrap() error { return e.Err }

// socketError classifies a transport error.
func (c *Client) socketError(err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		err = errors.Join(ErrPermission, err)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOTDIR):
		err = errors.Join(ErrNotReachable, err)
	}
	return &SocketError{Socket: c.socket, Err: err}
}

// VersionError is a failed request to a supervisor of another build: the
// likely reason it failed. errors.Is matches ErrVersionMismatch and the
// failure's own errors.
type VersionError struct {
	Server, Client string
	Err            error // the request's failure
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("the supervisor runs rainforest %s but this rfm is %s: use the rfm of the supervisor's build or restart rfm serve from this one (%v)", e.Server, e.Client, e.Err)
}

func (e *VersionError) Unwrap() []error { return []error{ErrVersionMismatch, e.Err} }

// decodeError describes an answer that does not decode, without Go type
// names.
func decodeError(method, path string, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("the supervisor's answer to %s %s does not fit this rfm: %s holds a JSON %s", method, path, te.Field, te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("the supervisor's answer to %s %s is not complete JSON", method, path)
	}
	return fmt.Errorf("the supervisor's answer to %s %s: %w", method, path, err)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://rfm"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s: interrupted", method, path)
		}
		return c.socketError(err)
	}
	defer resp.Body.Close()
	err = c.answer(resp, method, path, out)
	if sv := resp.Header.Get(VersionHeader); err != nil && buildinfo.Differ(sv, c.version) {
		return &VersionError{Server: sv, Client: c.version, Err: err}
	}
	return err
}

// answer reads a response into out (a writer takes the body as it is).
func (c *Client) answer(resp *http.Response, method, path string, out any) error {
	if resp.StatusCode >= 300 {
		e := &APIError{Status: resp.StatusCode}
		if err := json.NewDecoder(resp.Body).Decode(&e.Body); err != nil || e.Body.Error == "" {
			e.Body.Error = fmt.Sprintf("%s %s: the supervisor answered %s", method, path, resp.Status)
		}
		return e
	}
	if out == nil {
		return nil
	}
	if read, ok := out.(func(io.Reader) error); ok { // a stream, read as it comes
		return read(resp.Body)
	}
	if w, ok := out.(io.Writer); ok {
		if _, err := io.Copy(w, resp.Body); err != nil {
			return c.socketError(err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return decodeError(method, path, err)
	}
	return nil
}

// Create creates a subOS.
func (c *Client) Create(ctx context.Context, spec supervisor.Spec) (supervisor.Info, error) {
	var info supervisor.Info
	err := c.do(ctx, http.MethodPost, "/v1/subos", spec, &info)
	return info, err
}

// Destroy destroys a subOS.
func (c *Client) Destroy(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/subos/"+url.PathEscape(name), nil, nil)
}

// List lists subOSes.
func (c *Client) List(ctx context.Context) ([]supervisor.Info, error) {
	var out []supervisor.Info
	err := c.do(ctx, http.MethodGet, "/v1/subos", nil, &out)
	return out, err
}

// Get inspects a subOS.
func (c *Client) Get(ctx context.Context, name string) (supervisor.Info, error) {
	var info supervisor.Info
	err := c.do(ctx, http.MethodGet, "/v1/subos/"+url.PathEscape(name), nil, &info)
	return info, err
}

// Log copies the last DefaultLogTail bytes of a subOS's console log to w,
// as the guest wrote them (see untrusted.EscapeTerminal before printing
// them to a terminal).
func (c *Client) Log(ctx context.Context, name string, w io.Writer) error {
	return c.do(ctx, http.MethodGet, "/v1/subos/"+url.PathEscape(name)+"/log", nil, w)
}

// LogTail copies the last tail bytes (at most MaxLogTail) of a subOS's
// console log to w, as the guest wrote them.
func (c *Client) LogTail(ctx context.Context, name string, tail uint64, w io.Writer) error {
	return c.do(ctx, http.MethodGet, "/v1/subos/"+url.PathEscape(name)+"/log?tail="+strconv.FormatUint(tail, 10), nil, w)
}

// Bounds of a log request: the server reads only the log's end.
const (
	DefaultLogTail = 256 << 10 // bytes
	MaxLogTail     = 16 << 20  // bytes
)

// Events returns audit events after since.
func (c *Client) Events(ctx context.Context, since uint64, limit int) ([]store.Event, error) {
	return c.EventsMatching(ctx, EventQuery{Since: since, Limit: limit})
}

// Quarantined returns the ledger records the supervisor took out of use.
func (c *Client) Quarantined(ctx context.Context) ([]store.Quarantined, error) {
	var qs []store.Quarantined
	err := c.do(ctx, http.MethodGet, "/v1/quarantine", nil, &qs)
	return qs, err
}

// Check validates a spec against the supervisor's ledger.
func (c *Client) Check(ctx context.Context, spec supervisor.Spec) (CheckResult, error) {
	var r CheckResult
	err := c.do(ctx, http.MethodPost, "/v1/check", spec, &r)
	return r, err
}

// Inventory returns the discovered machine.
func (c *Client) Inventory(ctx context.Context) (*partitioner.Inventory, error) {
	rep, err := c.InventoryReport(ctx)
	if err != nil {
		return nil, err
	}
	return rep.Inventory, nil
}

// Message sends a control text message to a subOS over FICM.
func (c *Client) Message(ctx context.Context, name, text string) error {
	return c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/message", MessageRequest{Text: text}, nil)
}

// Board returns the supervisor's published board.
func (c *Client) Board(ctx context.Context) (board.Board, error) {
	var b board.Board
	err := c.do(ctx, http.MethodGet, "/v1/board", nil, &b)
	return b, err
}

// AttachDisk hot-adds a disk to a running subOS (POST
// /v1/subos/{name}/disks) and returns it with its id.
func (c *Client) AttachDisk(ctx context.Context, name string, d supervisor.Disk) (supervisor.Disk, error) {
	var out supervisor.Disk
	err := c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/disks", d, &out)
	return out, err
}

// DetachDisk removes a disk (by id or path) from a running subOS once the
// guest released it; timeout 0 is the supervisor's default.
func (c *Client) DetachDisk(ctx context.Context, name, disk string, timeout time.Duration) error {
	return c.do(ctx, http.MethodDelete, "/v1/subos/"+url.PathEscape(name)+"/disks/"+url.PathEscape(disk)+timeoutQuery(timeout), nil, nil)
}

// Grant grants a running subOS a shared segment.
func (c *Client) Grant(ctx context.Context, name string, g supervisor.SegmentGrant) error {
	return c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/segments", g, nil)
}

// Revoke takes a segment back from a running subOS once the guest released
// it; timeout 0 is the supervisor's default.
func (c *Client) Revoke(ctx context.Context, name, segment string, timeout time.Duration) error {
	return c.do(ctx, http.MethodDelete, "/v1/subos/"+url.PathEscape(name)+"/segments/"+url.PathEscape(segment)+timeoutQuery(timeout), nil, nil)
}

func timeoutQuery(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return "?timeout=" + url.QueryEscape(d.String())
}
