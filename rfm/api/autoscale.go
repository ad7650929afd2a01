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

// AutoscaleBackend is a Backend with the latency-driven autoscaler (a
// *supervisor.Supervisor is); without it the autoscale and latency routes
// answer 409.
type AutoscaleBackend interface {
	SetAutoscale(ctx context.Context, name string, a *supervisor.AutoscaleSpec) (supervisor.Info, error)
	ReportLatency(ctx context.Context, name string, p99 time.Duration) error
}

// LatencyReport is POST /v1/subos/{name}/latency's body: a p99 latency
// measured now, in microseconds.
type LatencyReport struct {
	P99US *uint64 `json:"p99_us"`
}

var errNoAutoscaler = fmt.Errorf("%w: this supervisor has no autoscaler", errors.ErrUnsupported)

func autoscaleRoutes(mux *routeTable, b Backend) {
	ab, _ := b.(AutoscaleBackend)
	guard := guarded(ab != nil, errNoAutoscaler)
	mux.HandleFunc("PUT /v1/subos/{name}/autoscale", guard(func(w http.ResponseWriter, r *http.Request) {
		var req supervisor.AutoscaleSpec
		if !decode(w, r, &req) {
			return
		}
		info, err := ab.SetAutoscale(r.Context(), r.PathValue("name"), &req)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, info)
	}))
	mux.HandleFunc("DELETE /v1/subos/{name}/autoscale", guard(func(w http.ResponseWriter, r *http.Request) {
		info, err := ab.SetAutoscale(r.Context(), r.PathValue("name"), nil)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, info)
	}))
	mux.HandleFunc("POST /v1/subos/{name}/latency", guard(func(w http.ResponseWriter, r *http.Request) {
		var req LatencyReport
		if !decode(w, r, &req) {
			return
		}
		if req.P99US == nil {
			reply(w, http.StatusUnprocessableEntity, ErrorBody{Error: "p99_us: required"})
			return
		}
		if *req.P99US > uint64(supervisor.MaxLatency/time.Microsecond) {
			reply(w, http.StatusUnprocessableEntity, ErrorBody{Error: fmt.Sprintf("p99_us: %d is over %d", *req.P99US, supervisor.MaxLatency/time.Microsecond)})
			return
		}
		if err := ab.ReportLatency(r.Context(), r.PathValue("name"), time.Duration(*req.P99US)*time.Microsecond); err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
}

// SetAutoscale sets a running subOS's autoscaling policy; nil turns it off.
func (c *Client) SetAutoscale(ctx context.Context, name string, a *supervisor.AutoscaleSpec) (supervisor.Info, error) {
	var out supervisor.Info
	path := "/v1/subos/" + url.PathEscape(name) + "/autoscale"
	var err error
	if a == nil {
		err = c.do(ctx, http.MethodDelete, path, nil, &out)
	} else {
		err = c.do(ctx, http.MethodPut, path, a, &out)
	}
	return out, err
}

// ReportLatency reports a p99 latency of a running subOS, measured now.
func (c *Client) ReportLatency(ctx context.Context, name string, p99 time.Duration) error {
	us := uint64(p99.Microseconds())
	return c.do(ctx, http.MethodPost, "/v1/subos/"+url.PathEscape(name)+"/latency", LatencyReport{P99US: &us}, nil)
}
