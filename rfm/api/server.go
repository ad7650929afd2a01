// Package api is the supervisor's HTTP/JSON API, served on a Unix socket
// (no network listener) to root and the members of one group (Listen),
// and its client. The API is described by the OpenAPI document served at
// /openapi.json.
package api

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/internal/buildinfo"
	"rainforest/internal/untrusted"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/supervisor"
)

// MaxBody bounds request bodies.
const MaxBody = 64 << 10

//go:embed openapi.json
var openAPI []byte

// Backend is what the API serves (a *supervisor.Supervisor, or a fake in
// tests).
type Backend interface {
	Create(ctx context.Context, spec supervisor.Spec) (supervisor.Info, error)
	Destroy(ctx context.Context, name string) error
	List() []supervisor.Info
	Get(name string) (supervisor.Info, error)
	Events(since uint64, limit int) ([]store.Event, error)
	Check(spec supervisor.Spec) []ledger.Problem
	Inventory() *partitioner.Inventory
	Message(ctx context.Context, name, text string) error
	Board() (board.Board, error)
	AttachDisk(ctx context.Context, name string, d supervisor.Disk) (supervisor.Disk, error)
	DetachDisk(ctx context.Context, name, disk string, timeout time.Duration) error
	Grant(ctx context.Context, name string, g supervisor.SegmentGrant) error
	Revoke(ctx context.Context, name, segment string, timeout time.Duration) error
}

// QuarantineLister is a Backend that lists the ledger records it took out
// of use (a *supervisor.Supervisor does); GET /v1/quarantine answers 404
// for one that is not.
type QuarantineLister interface {
	Quarantined() ([]store.Quarantined, error)
}

// MessageRequest is POST /v1/subos/{name}/message's body.
type MessageRequest struct {
	Text string `json:"text"`
}

// ErrorBody is every error response's body.
type ErrorBody struct {
	Error    string           `json:"error"`
	Problems []ledger.Problem `json:"problems,omitempty"`
	// Partial, on a memory resize the guest made only in part (409),
	// says what was asked and what the subOS holds now.
	Partial *PartialResize `json:"partial,omitempty"`
}

// PartialResize is a memory resize the guest made only in part, in
// bytes: the subOS holds Memory (Plugged of it hotplugged), not
// Requested.
type PartialResize struct {
	Requested uint64 `json:"requested"`
	Memory    uint64 `json:"memory"`
	Plugged   uint64 `json:"plugged"`
}

// CheckResult is POST /v1/check's response.
type CheckResult struct {
	OK       bool             `json:"ok"`
	Problems []ledger.Problem `json:"problems"`
}

// VersionHeader is the response header every API response carries: the
// server's build (buildinfo.Info.String).
const VersionHeader = "X-Rainforest-Version"

// VersionResult is GET /v1/version's response.
type VersionResult struct {
	buildinfo.Info
	// APIVersion is the API document's info.version.
	APIVersion string `json:"api_version"`
}

// APIVersion is the version of the API this server speaks.
const APIVersion = "1"

// Inventory is GET /v1/inventory's response: the machine as discovered,
// and, from a Backend that reports it, what the ledger says of it now.
type Inventory struct {
	*partitioner.Inventory
	Usage *supervisor.Usage `json:"usage,omitempty"`
}

// UsageReporter is a Backend that reports the ledger's usage (a
// *supervisor.Supervisor does); GET /v1/inventory then includes it.
type UsageReporter interface {
	Usage() supervisor.Usage
}

// Handler returns the API's HTTP handler. Streams it serves end with
// their request.
func Handler(b Backend) http.Handler {
	mux, _ := routes(b, nil)
	return withVersion(routeErrors(mux))
}

// withVersion sets VersionHeader on every response of h.
func withVersion(h http.Handler) http.Handler {
	v := buildinfo.Read().String()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(VersionHeader, v)
		h.ServeHTTP(w, r)
	})
}

// routeTable is a ServeMux that remembers its patterns (checked against
// the API document by the tests).
type routeTable struct {
	mux      *http.ServeMux
	patterns []string
}

func (t *routeTable) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	t.patterns = append(t.patterns, pattern)
	t.mux.HandleFunc(pattern, h)
}

// routes returns the API's routes and their patterns ("METHOD /path");
// streams (following a log or the events) also end when stop closes.
func routes(b Backend, stop <-chan struct{}) (*http.ServeMux, []string) {
	mux := &routeTable{mux: http.NewServeMux()}
	mux.HandleFunc("GET /v1/version", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, VersionResult{Info: buildinfo.Read(), APIVersion: APIVersion})
	})
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPI)
	})
	mux.HandleFunc("GET /v1/subos", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, b.List()) })
	mux.HandleFunc("POST /v1/subos", func(w http.ResponseWriter, r *http.Request) {
		var spec supervisor.Spec
		if !decode(w, r, &spec) {
			return
		}
		info, err := b.Create(r.Context(), spec)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusCreated, info)
	})
	mux.HandleFunc("GET /v1/subos/{name}", func(w http.ResponseWriter, r *http.Request) {
		info, err := b.Get(r.PathValue("name"))
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, info)
	})
	mux.HandleFunc("DELETE /v1/subos/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := b.Destroy(r.Context(), r.PathValue("name")); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/subos/{name}/log", func(w http.ResponseWriter, r *http.Request) {
		info, err := b.Get(r.PathValue("name"))
		if err != nil {
			fail(w, err)
			return
		}
		if info.State == supervisor.StateExited {
			reply(w, http.StatusNotFound, ErrorBody{Error: fmt.Sprintf("subOS %q has exited and its console log went with it (rfm inspect %s says how it ended)", info.Name, info.Name)})
			return
		}
		tail, err1 := uintParam(r, "tail", DefaultLogTail)
		follow, err2 := boolParam(r, "follow")
		if err := errors.Join(err1, err2); err != nil {
			reply(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
			return
		}
		if follow {
			followLog(w, r, b, info, int64(min(tail, MaxLogTail)), stop)
			return
		}
		// Only the end of the guest-written log is read, however big.
		b, err := untrusted.ReadTail(info.Log, int64(min(tail, MaxLogTail)))
		if err != nil {
			fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(b)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		limit, err1 := uintParam(r, "limit", 1000)
		follow, err2 := boolParam(r, "follow")
		since, past, err3 := sinceParam(r, b)
		if err := errors.Join(err1, err2, err3); err != nil {
			reply(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
			return
		}
		if follow {
			followEvents(w, r, b, since, past, stop)
			return
		}
		ev, err := b.Events(since, int(min(limit, 10000)))
		if err != nil {
			fail(w, err)
			return
		}
		if ev == nil {
			ev = []store.Event{} // [], not null
		}
		reply(w, http.StatusOK, ev)
	})
	mux.HandleFunc("GET /v1/quarantine", func(w http.ResponseWriter, r *http.Request) {
		ql, ok := b.(QuarantineLister)
		if !ok {
			reply(w, http.StatusNotFound, ErrorBody{Error: "this supervisor keeps no quarantine"})
			return
		}
		qs, err := ql.Quarantined()
		if err != nil {
			fail(w, err)
			return
		}
		if qs == nil {
			qs = []store.Quarantined{}
		}
		reply(w, http.StatusOK, qs)
	})
	mux.HandleFunc("POST /v1/check", func(w http.ResponseWriter, r *http.Request) {
		var spec supervisor.Spec
		if !decode(w, r, &spec) {
			return
		}
		probs := b.Check(spec)
		if probs == nil {
			probs = []ledger.Problem{} // [], not null
		}
		reply(w, http.StatusOK, CheckResult{OK: len(probs) == 0, Problems: probs})
	})
	mux.HandleFunc("GET /v1/inventory", func(w http.ResponseWriter, r *http.Request) {
		inv := Inventory{Inventory: withLists(b.Inventory())}
		if ur, ok := b.(UsageReporter); ok {
			u := ur.Usage()
			inv.Usage = &u
		}
		reply(w, http.StatusOK, inv)
	})
	mux.HandleFunc("POST /v1/subos/{name}/message", func(w http.ResponseWriter, r *http.Request) {
		var m MessageRequest
		if !decode(w, r, &m) {
			return
		}
		if err := b.Message(r.Context(), r.PathValue("name"), m.Text); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/subos/{name}/disks", func(w http.ResponseWriter, r *http.Request) {
		var d supervisor.Disk
		if !decode(w, r, &d) {
			return
		}
		d, err := b.AttachDisk(r.Context(), r.PathValue("name"), d)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusCreated, d)
	})
	mux.HandleFunc("DELETE /v1/subos/{name}/disks/{disk}", func(w http.ResponseWriter, r *http.Request) {
		timeout, ok := timeoutParam(w, r)
		if !ok {
			return
		}
		if err := b.DetachDisk(r.Context(), r.PathValue("name"), r.PathValue("disk"), timeout); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/subos/{name}/segments", func(w http.ResponseWriter, r *http.Request) {
		var g supervisor.SegmentGrant
		if !decode(w, r, &g) {
			return
		}
		if err := b.Grant(r.Context(), r.PathValue("name"), g); err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusCreated, g)
	})
	mux.HandleFunc("DELETE /v1/subos/{name}/segments/{segment}", func(w http.ResponseWriter, r *http.Request) {
		timeout, ok := timeoutParam(w, r)
		if !ok {
			return
		}
		if err := b.Revoke(r.Context(), r.PathValue("name"), r.PathValue("segment"), timeout); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	agentRoutes(mux, b, stop)
	elasticRoutes(mux, b)
	autoscaleRoutes(mux, b)
	shareRoutes(mux, b)
	mux.HandleFunc("GET /v1/board", func(w http.ResponseWriter, r *http.Request) {
		bd, err := b.Board()
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, bd)
	})
	return mux.mux, mux.patterns
}

// routeErrors answers the requests no route takes (no such path, a method
// the path does not have, a path not in canonical form) with a JSON
// ErrorBody like every other error, instead of ServeMux's plain-text 404
// and 405 and its redirects: 405 with the Allow header for a known path,
// 404 otherwise. (Found by FuzzHandler.)
func routeErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		// A route ("METHOD /path") for a canonical path; ServeMux
		// redirects the others.
		if strings.Contains(pattern, " ") && r.URL.Path == canonicalPath(r.URL.Path) {
			mux.ServeHTTP(w, r)
			return
		}
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, r)
		if probe.code == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", probe.header.Get("Allow"))
			reply(w, http.StatusMethodNotAllowed, ErrorBody{Error: fmt.Sprintf("method %q not allowed on %s (allowed: %s)", r.Method, r.URL.Path, probe.header.Get("Allow"))})
			return
		}
		reply(w, http.StatusNotFound, ErrorBody{Error: fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
	})
}

// canonicalPath is p cleaned as ServeMux cleans it (a trailing slash
// kept).
func canonicalPath(p string) string {
	c := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// statusProbe is a ResponseWriter that keeps the status and headers a
// handler answers with and drops the body.
type statusProbe struct {
	header http.Header
	code   int
}

func (p *statusProbe) Header() http.Header { return p.header }

func (p *statusProbe) WriteHeader(code int) {
	if p.code == 0 {
		p.code = code
	}
}

func (p *statusProbe) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return len(b), nil
}

func uintParam(r *http.Request, name string, def uint64) (uint64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("query parameter %s: %q is not a non-negative integer", name, v)
	}
	return n, nil
}

// timeoutParam reads the optional ?timeout= query parameter (a Go
// duration such as 30s), answering 400 when it is malformed.
func timeoutParam(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	v := r.URL.Query().Get("timeout")
	if v == "" {
		return 0, true
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		reply(w, http.StatusBadRequest, ErrorBody{Error: fmt.Sprintf("query parameter timeout: %q is not a positive duration such as 30s", v)})
		return 0, false
	}
	return d, true
}

// decode reads a strict JSON body: bounded, no unknown fields, one value.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			reply(w, http.StatusRequestEntityTooLarge, ErrorBody{Error: fmt.Sprintf("request body larger than %d bytes", MaxBody)})
			return false
		}
		reply(w, http.StatusBadRequest, ErrorBody{Error: "malformed request body: " + err.Error()})
		return false
	}
	if dec.More() {
		reply(w, http.StatusBadRequest, ErrorBody{Error: "malformed request body: more than one JSON value"})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// fail maps errors to status codes.
func fail(w http.ResponseWriter, err error) {
	body := ErrorBody{Error: err.Error()}
	var pe *supervisor.ProblemsError
	if errors.As(err, &pe) {
		body.Problems = pe.Problems
	}
	var lp *ledger.RequestError
	if errors.As(err, &lp) {
		body.Problems = lp.Problems
	}
	var partial *supervisor.PartialError
	if errors.As(err, &partial) {
		body.Partial = &PartialResize{Requested: partial.Requested, Memory: partial.Memory, Plugged: partial.Plugged}
	}
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, supervisor.ErrNotFound), errors.Is(err, supervisor.ErrNoDevice), errors.Is(err, ledger.ErrNotFound), errors.Is(err, ledger.ErrNoLoan), errors.Is(err, os.ErrNotExist):
		code = http.StatusNotFound
	case errors.Is(err, supervisor.ErrExists), errors.Is(err, ledger.ErrExists), errors.Is(err, supervisor.ErrNotListening), errors.Is(err, supervisor.ErrNoAgent), errors.Is(err, endpoint.ErrFull),
		errors.Is(err, supervisor.ErrDeviceExists), errors.Is(err, supervisor.ErrInUse), errors.Is(err, supervisor.ErrGuestRefused), errors.Is(err, supervisor.ErrPartial), errors.Is(err, errors.ErrUnsupported):
		code = http.StatusConflict
	case errors.Is(err, ledger.ErrNoCores), errors.Is(err, ledger.ErrNoMemory), errors.Is(err, supervisor.ErrNoPeerSlot):
		code = http.StatusInsufficientStorage
	case errors.Is(err, supervisor.ErrInvalid), errors.Is(err, ledger.ErrInvalid), errors.Is(err, ledger.ErrDevice),
		errors.Is(err, control.ErrTooLong), errors.Is(err, control.ErrMalformed):
		code = http.StatusUnprocessableEntity
	}
	reply(w, code, body)
}

// Serve serves the API on ln until ctx ends, within DefaultLimits.
func Serve(ctx context.Context, ln net.Listener, b Backend) error {
	return ServeLimited(ctx, ln, b, DefaultLimits())
}

// ServeLimited serves the API on ln until ctx ends, within lim.
func ServeLimited(ctx context.Context, ln net.Listener, b Backend, lim Limits) error {
	// Streams end when the server shuts down (Shutdown waits for requests
	// to end, and a stream would not on its own).
	stopStreams := make(chan struct{})
	mux, _ := routes(b, stopStreams)
	srv := &http.Server{Handler: withVersion(lim.limitRequests(routeErrors(mux))), ReadHeaderTimeout: lim.ReadHeaderTimeout,
		MaxHeaderBytes: lim.MaxHeaderBytes, IdleTimeout: lim.IdleTimeout, ConnState: lim.connState(),
		// The audit log names who asked: the client's credentials.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return lim.withConnBucket(supervisor.WithActor(ctx, PeerName(c)))
		}}
	srv.RegisterOnShutdown(func() { close(stopStreams) })
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// withLists is a copy of inv whose empty lists are [] rather than null, as
// the API document has them.
func withLists(inv *partitioner.Inventory) *partitioner.Inventory {
	if inv == nil {
		return nil
	}
	c := *inv
	if c.CPUs == nil {
		c.CPUs = []partitioner.CPU{}
	}
	if c.Nodes == nil {
		c.Nodes = []partitioner.Node{}
	}
	if c.Devices == nil {
		c.Devices = []partitioner.PCIDevice{}
	}
	return &c
}
