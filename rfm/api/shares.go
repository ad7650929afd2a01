package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"rainforest/rfm/supervisor"
)

// ShareBackend is a Backend that shares host directories with running
// subOSes (a *supervisor.Supervisor does); without it the share routes
// answer 409.
type ShareBackend interface {
	AddShare(ctx context.Context, name string, s supervisor.ShareSpec) (supervisor.ShareSpec, error)
	RemoveShare(ctx context.Context, name, share string, timeout time.Duration) error
}

// errNoShares answers the share routes of a backend without shares.
var errNoShares = fmt.Errorf("%w: this supervisor does not share directories", errors.ErrUnsupported)

func shareRoutes(mux *routeTable, b Backend) {
	sb, _ := b.(ShareBackend)
	guard := guarded(sb != nil, errNoShares)
	mux.HandleFunc("POST /v1/subos/{name}/shares", guard(func(w http.ResponseWriter, r *http.Request) {
		var s supervisor.ShareSpec
		if !decode(w, r, &s) {
			return
		}
		s, err := sb.AddShare(r.Context(), r.PathValue("name"), s)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusCreated, s)
	}))
	mux.HandleFunc("DELETE /v1/subos/{name}/shares/{share}", guard(func(w http.ResponseWriter, r *http.Request) {
		timeout, ok := timeoutParam(w, r)
		if !ok {
			return
		}
		if err := sb.RemoveShare(r.Context(), r.PathValue("name"), r.PathValue("share"), timeout); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
}

// AddShare shares a host directory with a running subOS (POST
// /v1/subos/{name}/shares) and returns the share with its id.
func (c *Client) AddShare(ctx context.Context, name string, s supervisor.ShareSpec) (supervisor.ShareSpec, error) {
	var out supervisor.ShareSpec
	err := c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/shares", s, &out)
	return out, err
}

// RemoveShare removes a share (by tag or id) from a running subOS once
// the guest released it; timeout 0 is the supervisor's default.
func (c *Client) RemoveShare(ctx context.Context, name, share string, timeout time.Duration) error {
	return c.do(ctx, http.MethodDelete, "/v1/subos/"+url.PathEscape(name)+"/shares/"+url.PathEscape(share)+timeoutQuery(timeout), nil, nil)
}
