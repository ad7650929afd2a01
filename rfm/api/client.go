package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"rainforest/ficm/board"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/supervisor"
)

// DefaultSocket is where rfm serve listens.
const DefaultSocket = "/run/rainforest/rfm.sock"

// Client talks to a supervisor over its Unix socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{http: &http.Client{Transport: tr}}
}

// APIError is a non-2xx answer.
type APIError struct {
	Status int
	Body   ErrorBody
}

func (e *APIError) Error() string { return e.Body.Error }

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
		return fmt.Errorf("supervisor not reachable (is rfm serve running?): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		e := &APIError{Status: resp.StatusCode}
		if err := json.NewDecoder(resp.Body).Decode(&e.Body); err != nil {
			e.Body.Error = resp.Status
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
		_, err := io.Copy(w, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
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
	var ev []store.Event
	err := c.do(ctx, http.MethodGet, "/v1/events?since="+strconv.FormatUint(since, 10)+"&limit="+strconv.Itoa(limit), nil, &ev)
	return ev, err
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
	var inv partitioner.Inventory
	err := c.do(ctx, http.MethodGet, "/v1/inventory", nil, &inv)
	return &inv, err
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
