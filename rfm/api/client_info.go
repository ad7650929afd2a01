package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"rainforest/ledger/store"
)

// Version returns the server's build (GET /v1/version).
func (c *Client) Version(ctx context.Context) (VersionResult, error) {
	var v VersionResult
	err := c.do(ctx, http.MethodGet, "/v1/version", nil, &v)
	return v, err
}

// InventoryReport returns the discovered machine with the ledger's usage
// of it (GET /v1/inventory; Usage is nil from a server that does not
// report it).
func (c *Client) InventoryReport(ctx context.Context) (Inventory, error) {
	var inv Inventory
	err := c.do(ctx, http.MethodGet, "/v1/inventory", nil, &inv)
	return inv, err
}

// FollowLog copies a subOS's console log to w from its last tail bytes
// (at most MaxLogTail) on, as it grows, as the guest wrote it (see
// untrusted.EscapeWriter before printing it to a terminal). It returns nil
// when the subOS ends, ctx's error when ctx ends first.
func (c *Client) FollowLog(ctx context.Context, name string, tail uint64, w io.Writer) error {
	err := c.do(ctx, http.MethodGet, "/v1/subos/"+url.PathEscape(name)+"/log?follow=1&tail="+strconv.FormatUint(tail, 10), nil, w)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// EventQuery selects audit events: those after seq Since, or, when
// SinceTime is set, those from SinceTime on.
type EventQuery struct {
	Since     uint64
	SinceTime time.Time
	// Limit bounds a listing (0: the server's default); a stream has none.
	Limit int
	// Past makes a stream start with the past events after Since, also
	// when Since is 0 (Since > 0 or SinceTime imply it).
	Past bool
}

// values is q as query parameters; a stream without since (past false)
// sends only new events.
func (q EventQuery) values(past bool) url.Values {
	v := url.Values{}
	if past || q.Past || q.Since > 0 {
		v.Set("since", strconv.FormatUint(q.Since, 10))
	}
	if !q.SinceTime.IsZero() {
		v.Set("since_time", q.SinceTime.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// EventsMatching lists the audit events q selects.
func (c *Client) EventsMatching(ctx context.Context, q EventQuery) ([]store.Event, error) {
	var ev []store.Event
	err := c.do(ctx, http.MethodGet, "/v1/events?"+q.values(true).Encode(), nil, &ev)
	return ev, err
}

// ErrStreamEnded is FollowEvents' error when the server ended the stream
// (it stopped, or this client fell too far behind).
var ErrStreamEnded = errors.New("the supervisor ended the event stream")

// FollowEvents calls each for every audit event q selects (only new ones
// when q selects none of the past: Since 0, no SinceTime, Past false), then for
// each new one as it happens, until ctx ends (its error is returned), each
// fails, or the stream ends (ErrStreamEnded). q.Limit is ignored. To
// resume, pass Since the last Seq seen.
func (c *Client) FollowEvents(ctx context.Context, q EventQuery, each func(store.Event) error) error {
	q.Limit = 0
	v := q.values(false)
	v.Set("follow", "1")
	var cbErr error
	err := c.do(ctx, http.MethodGet, "/v1/events?"+v.Encode(), nil, func(body io.Reader) error {
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var e store.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				return fmt.Errorf("event stream: %w", err)
			}
			if cbErr = each(e); cbErr != nil {
				return cbErr
			}
		}
		if err := sc.Err(); err != nil {
			return err
		}
		return ErrStreamEnded
	})
	switch {
	case cbErr != nil:
		return cbErr
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return err
}
