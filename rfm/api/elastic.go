package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"rainforest/ledger"
	"rainforest/rfm/supervisor"
)

// ElasticBackend is a Backend whose subOSes change size while they run (a
// *supervisor.Supervisor is); without it the resize and loan routes
// answer 409.
type ElasticBackend interface {
	ResizeCPUs(ctx context.Context, name string, n int) (supervisor.Info, error)
	ResizeMemory(ctx context.Context, name string, bytes uint64) (supervisor.Info, error)
	Lend(ctx context.Context, r supervisor.LendRequest) (ledger.Loan, error)
	Return(ctx context.Context, r supervisor.ReturnRequest) error
	Loans() []ledger.Loan
}

// ResizeRequest is POST /v1/subos/{name}/resize's body: cores, memory
// or both (cores first).
type ResizeRequest struct {
	// CPUs is the number of cores the subOS is to hold (0: unchanged).
	CPUs int `json:"cpus,omitempty"`
	// Memory is the memory the subOS is to hold, in bytes: its boot
	// memory plus a multiple of its hotplug block (0: unchanged).
	Memory uint64 `json:"memory,omitempty"`
}

// errNotElastic answers the elastic routes of a backend that is not.
var errNotElastic = fmt.Errorf("%w: this supervisor does not resize subOSes", errors.ErrUnsupported)

// guarded wraps the handlers of an optional backend interface: where the
// Backend lacks it (available false) they answer err instead.
func guarded(available bool, err error) func(http.HandlerFunc) http.HandlerFunc {
	return func(h http.HandlerFunc) http.HandlerFunc {
		if available {
			return h
		}
		return func(w http.ResponseWriter, _ *http.Request) { fail(w, err) }
	}
}

func elasticRoutes(mux *routeTable, b Backend) {
	eb, _ := b.(ElasticBackend)
	guard := guarded(eb != nil, errNotElastic)
	mux.HandleFunc("POST /v1/subos/{name}/resize", guard(func(w http.ResponseWriter, r *http.Request) {
		var req ResizeRequest
		if !decode(w, r, &req) {
			return
		}
		switch {
		case req.CPUs < 0:
			reply(w, http.StatusUnprocessableEntity, ErrorBody{Error: fmt.Sprintf("cpus: %d; a subOS needs at least one", req.CPUs)})
			return
		case req.CPUs == 0 && req.Memory == 0:
			reply(w, http.StatusUnprocessableEntity, ErrorBody{Error: "say what to resize: cpus, memory or both"})
			return
		}
		name := r.PathValue("name")
		var info supervisor.Info
		var err error
		if req.CPUs > 0 {
			info, err = eb.ResizeCPUs(r.Context(), name, req.CPUs)
		}
		if err == nil && req.Memory > 0 {
			info, err = eb.ResizeMemory(r.Context(), name, req.Memory)
		}
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, info)
	}))
	mux.HandleFunc("GET /v1/loans", guard(func(w http.ResponseWriter, r *http.Request) {
		loans := eb.Loans()
		if loans == nil {
			loans = []ledger.Loan{}
		}
		reply(w, http.StatusOK, loans)
	}))
	mux.HandleFunc("POST /v1/loans", guard(func(w http.ResponseWriter, r *http.Request) {
		var req supervisor.LendRequest
		if !decode(w, r, &req) {
			return
		}
		loan, err := eb.Lend(r.Context(), req)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusCreated, loan)
	}))
	mux.HandleFunc("POST /v1/loans/return", guard(func(w http.ResponseWriter, r *http.Request) {
		var req supervisor.ReturnRequest
		if !decode(w, r, &req) {
			return
		}
		if err := eb.Return(r.Context(), req); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
}

// ResizeCPUs makes a running subOS hold n cores.
func (c *Client) ResizeCPUs(ctx context.Context, name string, n int) (supervisor.Info, error) {
	var out supervisor.Info
	err := c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/resize", ResizeRequest{CPUs: n}, &out)
	return out, err
}

// ResizeMemory makes a running subOS hold bytes of memory; a guest that
// got only part of the way is an *APIError (409) whose Body.Partial says
// where it stopped.
func (c *Client) ResizeMemory(ctx context.Context, name string, bytes uint64) (supervisor.Info, error) {
	var out supervisor.Info
	err := c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/resize", ResizeRequest{Memory: bytes}, &out)
	return out, err
}

// Lend moves cores from one running subOS to another, as a loan.
func (c *Client) Lend(ctx context.Context, r supervisor.LendRequest) (ledger.Loan, error) {
	var out ledger.Loan
	err := c.do(ctx, http.MethodPost, "/v1/loans", r, &out)
	return out, err
}

// Return gives borrowed cores back to their lender.
func (c *Client) Return(ctx context.Context, r supervisor.ReturnRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/loans/return", r, nil)
}

// Loans lists the loans between subOSes.
func (c *Client) Loans(ctx context.Context) ([]ledger.Loan, error) {
	var out []ledger.Loan
	err := c.do(ctx, http.MethodGet, "/v1/loans", nil, &out)
	return out, err
}
