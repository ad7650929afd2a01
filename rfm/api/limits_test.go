package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/internal/tokenbucket/fakeclock"
	"rainforest/rfm/supervisor"
)

// serveLimited serves a fake backend within lim on a socket and returns
// its path.
func serveLimited(t *testing.T, lim Limits) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rfm.sock")
	ln, err := Listen(path, ownPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeLimited(ctx, ln, &fakeBackend{subos: map[string]supervisor.Info{}}, lim) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

// conn is one client connection, sending requests one after another.
type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, path string) *conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &conn{t: t, c: c, r: bufio.NewReader(c)}
}

// get sends GET path and returns the status and the decoded error body.
func (c *conn) get(path string) (int, ErrorBody, http.Header) {
	c.t.Helper()
	req, _ := http.NewRequest("GET", "http://rfm"+path, nil)
	if err := req.Write(c.c); err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.r, req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body ErrorBody
	if resp.StatusCode >= 400 {
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			c.t.Fatalf("error body: %v", err)
		}
	} else {
		var v any
		json.NewDecoder(resp.Body).Decode(&v)
	}
	return resp.StatusCode, body, resp.Header
}

func TestRequestsLimitedPerConnection(t *testing.T) {
	clk := fakeclock.New(time.Unix(1, 0))
	lim := DefaultLimits()
	lim.Requests, lim.Clock = tokenbucket.Limit{Rate: 2, Burst: 5}, clk
	path := serveLimited(t, lim)
	greedy, other := dial(t, path), dial(t, path)
	for i := range 5 {
		if code, _, _ := greedy.get("/v1/subos"); code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, code)
		}
	}
	code, body, hdr := greedy.get("/v1/subos")
	if code != http.StatusTooManyRequests || !strings.Contains(body.Error, "too many requests") || hdr.Get("Retry-After") != "1" {
		t.Fatalf("over the limit: %d %+v Retry-After %q", code, body, hdr.Get("Retry-After"))
	}
	// Another connection has its own bucket.
	if code, _, _ := other.get("/v1/subos"); code != http.StatusOK {
		t.Fatalf("other connection: %d", code)
	}
	// Tokens return with time.
	clk.Advance(500 * time.Millisecond)
	if code, _, _ := greedy.get("/v1/subos"); code != http.StatusOK {
		t.Fatalf("after refill: %d", code)
	}
	if code, _, _ := greedy.get("/v1/subos"); code != http.StatusTooManyRequests {
		t.Fatalf("after one refilled token: %d", code)
	}
}

func TestConnectionsCapped(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxConns = 2
	path := serveLimited(t, lim)
	a, b := dial(t, path), dial(t, path)
	for _, c := range []*conn{a, b} {
		if code, _, _ := c.get("/v1/subos"); code != http.StatusOK {
			t.Fatalf("within the cap: %d", code)
		}
	}
	// The server answers a connection over the cap as soon as it comes,
	// before any request (whose write could then fail).
	over := dial(t, path)
	resp, err := http.ReadResponse(over.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	var body ErrorBody
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body.Error, "too many connections") {
		t.Fatalf("over the cap: %d %+v", resp.StatusCode, body)
	}
	// A closed connection gives its slot back: the server sees the close
	// in its own time, so ask until it has (bounded by the test's
	// timeout, no wall-clock threshold).
	a.c.Close()
	for !served(path) {
		time.Sleep(time.Millisecond)
	}
}

// served reports whether a new connection to path gets 200 for GET
// /v1/subos.
func served(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	defer c.Close()
	req, _ := http.NewRequest("GET", "http://rfm/v1/subos", nil)
	if req.Write(c) != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestHeaderAndBodyBounds(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxHeaderBytes = 1 << 10
	path := serveLimited(t, lim)
	c := dial(t, path)
	req, _ := http.NewRequest("GET", "http://rfm/v1/subos", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 8<<10))
	if err := req.Write(c.c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.r, req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized headers: %d", resp.StatusCode)
	}
	// A body on a route that does not read it is still bounded: the
	// handler's MaxBytesReader stops the server reading past MaxBody.
	d := dial(t, path)
	big := strings.NewReader(`{"text":"` + strings.Repeat("y", MaxBody+1024) + `"}`)
	req, _ = http.NewRequest("POST", "http://rfm/v1/subos/a/message", big)
	if err := req.Write(d.c); err != nil {
		t.Fatal(err)
	}
	resp, err = http.ReadResponse(d.r, req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %d", resp.StatusCode)
	}
}

// Every operation documents the limits' answers.
func TestOpenAPIDocumentsLimits(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			var op struct {
				Responses map[string]any `json:"responses"`
			}
			if json.Unmarshal(raw, &op) != nil || op.Responses == nil {
				continue // parameters
			}
			for _, code := range []string{"429", "503"} {
				if _, ok := op.Responses[code]; !ok {
					t.Errorf("%s %s: no %s response", method, path, code)
				}
			}
		}
	}
}
