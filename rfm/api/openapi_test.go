package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"rainforest/ledger/store"
	"rainforest/rfm/supervisor"
)

// The API document is checked with github.com/getkin/kin-openapi, the
// most used OpenAPI 3 library for Go and the one that both validates a
// document and validates responses against it (a test-only dependency).

// loadDoc loads and validates openapi.json.
func loadDoc(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openAPI)
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	return doc
}

func TestOpenAPIValid(t *testing.T) { loadDoc(t) }

// Every route the server registers is in the document, and every
// operation of the document is a route.
func TestOpenAPIRoutes(t *testing.T) {
	doc := loadDoc(t)
	_, patterns := routes(&fakeBackend{}, nil)
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	sort.Strings(patterns)
	sort.Strings(documented)
	for _, p := range patterns {
		if !slices.Contains(documented, p) {
			t.Errorf("route %s is not in openapi.json", p)
		}
	}
	for _, d := range documented {
		if !slices.Contains(patterns, d) {
			t.Errorf("openapi.json describes %s, which the server does not serve", d)
		}
	}
}

// responseCase is a request whose response is checked against the
// document.
type responseCase struct {
	method, path, body string
	code               int
	// stream: sent with a context already ended, so that a stream stops
	// after what it has at once.
	stream bool
}

// Every handler's responses, of every route, match the document: status,
// headers, body schema. The cases cover each route at least once.
func TestOpenAPIResponses(t *testing.T) {
	doc := loadDoc(t)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{subos: map[string]supervisor.Info{}}
	logPath := filepath.Join(t.TempDir(), "web.log")
	os.WriteFile(logPath, []byte("booting \x1b[1m\n"), 0o600)
	if _, err := b.Create(context.Background(), supervisor.Spec{Name: "web", Memory: 1, Cores: []int{1}, Disks: []supervisor.Disk{{Path: "/d.img"}}}); err != nil {
		t.Fatal(err)
	}
	web := b.subos["web"]
	web.Log = logPath
	b.subos["web"] = web
	evb := &fakeBackend{subos: map[string]supervisor.Info{}, events: []store.Event{}}
	evb.addEvent(store.Event{What: "create", Name: "web", Who: "uid 0 pid 1"})
	cases := []responseCase{
		{"GET", "/openapi.json", "", 200, false},
		{"GET", "/v1/version", "", 200, false},
		{"GET", "/v1/subos", "", 200, false},
		{"POST", "/v1/subos", `{"name": "db", "memory": 1048576, "kernel": "/k"}`, 201, false},
		{"POST", "/v1/subos", `{"name": "web", "memory": 1048576, "kernel": "/k"}`, 409, false},
		{"POST", "/v1/subos", `{"name": "bad", "memory": 1048576, "kernel": "/k"}`, 422, false},
		{"POST", "/v1/subos", `{"name": 1}`, 400, false},
		{"POST", "/v1/subos", `{"name": "a", "cmdline_append": "` + strings.Repeat("x", MaxBody) + `"}`, 413, false},
		{"GET", "/v1/subos/web", "", 200, false},
		{"GET", "/v1/subos/none", "", 404, false},
		{"DELETE", "/v1/subos/db", "", 204, false},
		{"DELETE", "/v1/subos/none", "", 404, false},
		{"GET", "/v1/subos/web/log", "", 200, false},
		{"GET", "/v1/subos/web/log?tail=3", "", 200, false},
		{"GET", "/v1/subos/web/log?tail=x", "", 400, false},
		{"GET", "/v1/subos/none/log", "", 404, false},
		{"GET", "/v1/subos/web/log?follow=1&tail=5", "", 200, true},
		{"GET", "/v1/subos/web/log?follow=maybe", "", 400, false},
		{"GET", "/v1/quarantine", "", 404, false},
		{"GET", "/v1/events", "", 200, false},
		{"GET", "/v1/events?since=x", "", 400, false},
		{"GET", "/v1/events?since_time=yesterday", "", 400, false},
		{"GET", "/v1/events?follow=1&since=0", "", 200, true},
		{"GET", "/v1/events?since_time=2000-01-01T00:00:00Z", "", 200, false},
		{"POST", "/v1/check", `{"name": "x", "memory": 1048576, "kernel": "/k"}`, 200, false},
		{"POST", "/v1/check", `{"name": "x"}`, 200, false},
		{"POST", "/v1/check", `[]`, 400, false},
		{"GET", "/v1/inventory", "", 200, false},
		{"POST", "/v1/subos/web/message", `{"text": "hello"}`, 204, false},
		{"POST", "/v1/subos/none/message", `{"text": "hello"}`, 404, false},
		{"POST", "/v1/subos/web/message", `{"text": ""}`, 422, false},
		{"GET", "/v1/board", "", 200, false},
		{"POST", "/v1/subos/web/disks", `{"path": "/d.img"}`, 201, false},
		{"POST", "/v1/subos/web/disks", `{"path": "/taken"}`, 409, false},
		{"POST", "/v1/subos/none/disks", `{"path": "/d.img"}`, 404, false},
		{"POST", "/v1/subos/web/disks", `{"colour": "red"}`, 400, false},
		{"DELETE", "/v1/subos/web/disks/disk1", "", 204, false},
		{"DELETE", "/v1/subos/web/disks/busy", "", 409, false},
		{"DELETE", "/v1/subos/web/disks/disk7", "", 404, false},
		{"DELETE", "/v1/subos/web/disks/disk1?timeout=soon", "", 400, false},
		{"POST", "/v1/subos/web/segments", `{"name": "cache", "size": 8192}`, 201, false},
		{"POST", "/v1/subos/web/segments", `{"name": "cache", "size": 100}`, 422, false},
		{"POST", "/v1/subos/web/segments", `{"name": "cache", "colour": 1}`, 400, false},
		{"DELETE", "/v1/subos/web/segments/cache?timeout=30s", "", 204, false},
		{"DELETE", "/v1/subos/web/segments/cache", "", 422, false},
		{"DELETE", "/v1/subos/web/segments/cache?timeout=x", "", 400, false},
		{"GET", "/v1/subos/web/stats", "", 409, false},
		{"POST", "/v1/subos/web/exec", `{"argv": ["true"]}`, 400, false},
		{"POST", "/v1/subos/web/resize", `{"cpus": 2}`, 200, false},
		{"POST", "/v1/subos/web/resize", `{"cpus": 9}`, 422, false},
		{"POST", "/v1/subos/web/resize", `{"cpus": 0}`, 422, false},
		{"POST", "/v1/subos/none/resize", `{"cpus": 1}`, 404, false},
		{"POST", "/v1/subos/web/resize", `{"memory": 1}`, 422, false},
		{"POST", "/v1/subos/web/resize", `{"memory": 536870912}`, 200, false},
		{"POST", "/v1/subos/web/resize", `{"cpus": 2, "memory": 536870912}`, 200, false},
		{"POST", "/v1/subos/web/resize", `{"memory": 805306368}`, 409, false},
		{"POST", "/v1/subos/web/resize", `{"memory": 4294967296}`, 507, false},
		{"POST", "/v1/subos/web/resize", `{}`, 422, false},
		{"POST", "/v1/subos/web/resize", `{"disks": 1}`, 400, false},
		{"GET", "/v1/loans", "", 200, false},
		{"POST", "/v1/loans", `{"from": "web", "to": "db", "cpus": 1}`, 201, false},
		{"POST", "/v1/loans", `{"from": "web", "to": "db", "memory": 268435456}`, 201, false},
		{"POST", "/v1/loans", `{"from": "web", "to": "db", "cpus": 3}`, 507, false},
		{"POST", "/v1/loans", `{"from": "web", "to": "web", "cpus": 1}`, 422, false},
		{"POST", "/v1/loans/return", `{"id": 1}`, 204, false},
		{"POST", "/v1/loans/return", `{"id": 7}`, 404, false},
		{"POST", "/v1/loans/return", `{"id": "x"}`, 400, false},
		{"PUT", "/v1/subos/web/autoscale", `{"lower": "5ms", "upper": "20ms", "window": "10s"}`, 200, false},
		{"PUT", "/v1/subos/web/autoscale", `{"lower": "20ms", "upper": "5ms"}`, 422, false},
		{"PUT", "/v1/subos/web/autoscale", `{"lower": 5, "upper": "20ms"}`, 400, false},
		{"PUT", "/v1/subos/none/autoscale", `{"lower": "5ms", "upper": "20ms"}`, 404, false},
		{"DELETE", "/v1/subos/web/autoscale", "", 200, false},
		{"DELETE", "/v1/subos/none/autoscale", "", 404, false},
		{"POST", "/v1/subos/web/latency", `{"p99_us": 12500}`, 204, false},
		{"POST", "/v1/subos/web/latency", `{}`, 422, false},
		{"POST", "/v1/subos/web/latency", `{"p99_us": "x"}`, 400, false},
		{"POST", "/v1/subos/none/latency", `{"p99_us": 1}`, 404, false},
	}
	cases = append(cases, shareCases()...)
	covered := map[string]bool{}
	mux, patterns := routes(b, nil)
	h := withVersion(routeErrors(mux))
	for _, c := range cases {
		backend := h
		if strings.HasPrefix(c.path, "/v1/events") {
			m, _ := routes(evb, nil)
			backend = withVersion(routeErrors(m))
		}
		req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		if c.stream {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			req = req.WithContext(ctx)
		}
		w := httptest.NewRecorder()
		backend.ServeHTTP(w, req)
		if w.Code != c.code {
			t.Errorf("%s %s: %d, want %d (%s)", c.method, c.path, w.Code, c.code, w.Body)
			continue
		}
		if w.Header().Get(VersionHeader) == "" {
			t.Errorf("%s %s: no %s header", c.method, c.path, VersionHeader)
		}
		_, pattern := mux.Handler(httptest.NewRequest(c.method, c.path, nil))
		covered[pattern] = true
		checkResponse(t, doc, router, httptest.NewRequest(c.method, c.path, strings.NewReader(c.body)), w)
	}
	for _, p := range patterns {
		if !covered[p] {
			t.Errorf("no response of %s is checked", p)
		}
	}
}

// checkResponse validates w, the response to req, against doc.
func checkResponse(t *testing.T, doc *openapi3.T, router routers.Router, req *http.Request, w *httptest.ResponseRecorder) {
	t.Helper()
	route, params, err := router.FindRoute(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL, err)
		return
	}
	body := w.Body.Bytes()
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
	if strings.HasPrefix(w.Header().Get("Content-Type"), "application/x-ndjson") {
		// One Event a line; kin-openapi has no decoder for the stream.
		opts.ExcludeResponseBody = true
		ev := doc.Components.Schemas["Event"].Value
		sc := bufio.NewScanner(bytes.NewReader(body))
		for sc.Scan() {
			var v any
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				t.Errorf("%s %s: line %q: %v", req.Method, req.URL, sc.Bytes(), err)
			} else if err := ev.VisitJSON(v); err != nil {
				t.Errorf("%s %s: line %s: %v", req.Method, req.URL, sc.Bytes(), err)
			}
		}
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 w.Code, Header: w.Header(), Body: io.NopCloser(bytes.NewReader(body)), Options: opts,
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s: %d %.200s: does not match openapi.json: %v", req.Method, req.URL, w.Code, body, err)
	}
}
