package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"rainforest/rfm/supervisor"
)

// documentedStatus is every status openapi.json documents.
var documentedStatus = map[int]bool{200: true, 201: true, 204: true, 400: true, 404: true, 409: true, 413: true, 422: true, 500: true, 507: true}

// FuzzHandler sends arbitrary requests (method, path and query, body,
// content type) to the API's handler over the fake backend. Whatever the
// request, the handler does not panic, answers with a status the OpenAPI
// document lists (or 405 with an Allow header for a method a known path
// does not have, which openapi.json does not list yet), and every error
// is a JSON ErrorBody with a message.
func FuzzHandler(f *testing.F) {
	f.Add("POST", "/v1/subos", `{"name":"web","cores":2,"memory":"1G"}`, "application/json")
	f.Add("POST", "/v1/subos", `{"name":"web"}{"name":"x"}`, "")
	f.Add("POST", "/v1/check", `{"name":"bad","unknown":1}`, "application/json")
	f.Add("GET", "/v1/subos/web", "", "")
	f.Add("GET", "/v1/subos/web/log", "", "")
	f.Add("DELETE", "/v1/subos/web/disks/busy?timeout=30s", "", "")
	f.Add("DELETE", "/v1/subos/web/segments/s?timeout=-1s", "", "")
	f.Add("POST", "/v1/subos/web/segments", `{"name":"s","size":4097}`, "")
	f.Add("POST", "/v1/subos/web/message", `{"text":"hi\u0000"}`, "")
	f.Add("GET", "/v1/events?since=18446744073709551616&limit=x", "", "")
	f.Add("GET", "/v1/board", "", "")
	f.Add("GET", "/v1/events?follow=1&since=0", "", "")
	f.Add("GET", "/v1/version", "", "")
	f.Add("PUT", "/v1/subos", "", "")
	f.Add("GET", "/nope", "", "")
	f.Add("GET", "/v1/../v1/subos", "", "")
	f.Fuzz(func(t *testing.T, method, target, body, contentType string) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		req, err := http.NewRequest(method, "http://rfm"+target, strings.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		// A client already gone: a stream (?follow=1) sends what it has
		// and stops; the fake backend's other answers ignore the context.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		req = req.WithContext(ctx)
		b := &fakeBackend{subos: map[string]supervisor.Info{"web": {Name: "web", State: supervisor.StateRunning}}}
		w := httptest.NewRecorder()
		// A request that hangs the handler is a crash too.
		watchdog := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("%s %q hangs", method, target)) })
		Handler(b).ServeHTTP(w, req)
		watchdog.Stop()
		res := w.Result()
		methodRefused := res.StatusCode == http.StatusMethodNotAllowed && res.Header.Get("Allow") != ""
		if !documentedStatus[res.StatusCode] && !methodRefused {
			t.Fatalf("%s %q: status %d, not in the OpenAPI document", method, target, res.StatusCode)
		}
		if res.StatusCode < 400 {
			return
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %q: error %d with Content-Type %q: %q", method, target, res.StatusCode, ct, w.Body.String())
		}
		var eb ErrorBody
		dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&eb); err != nil || eb.Error == "" {
			t.Fatalf("%s %q: error %d body %q is not an ErrorBody (%v)", method, target, res.StatusCode, w.Body.String(), err)
		}
	})
}
