package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The client's failures match the sentinels callers branch on, and say
// what to do without transport detail.
func TestClientErrors(t *testing.T) {
	for status, want := range map[int]error{404: ErrNotFound, 409: ErrConflict, 403: ErrPermission} {
		e := &APIError{Status: status}
		if !errors.Is(e, want) || errors.Is(e, ErrVersionMismatch) {
			t.Errorf("status %d does not match %v alone", status, want)
		}
	}
	if errors.Is(&APIError{Status: 500}, ErrNotFound) {
		t.Error("500 matches ErrNotFound")
	}

	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := NewClient(sock).List(context.Background())
	if !errors.Is(err, ErrNotReachable) || err.Error() != "no supervisor is listening on "+sock+": start it with `rfm serve`" {
		t.Errorf("no socket: %v", err)
	}
	if f, err := os.Create(filepath.Join(t.TempDir(), "file")); err == nil {
		f.Close()
		_, err := NewClient(f.Name() + "/x.sock").List(context.Background())
		if !errors.Is(err, ErrNotReachable) || strings.Contains(err.Error(), "dial") {
			t.Errorf("socket under a file: %v", err)
		}
	}

	// An answer that does not decode is described without Go types.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`[{"name": 7}]`))
	}))
	defer srv.Close()
	c := &Client{http: srv.Client(), socket: "test"}
	c.http.Transport = rewrite{srv.URL, srv.Client().Transport}
	_, err = c.List(context.Background())
	if err == nil || strings.Contains(err.Error(), "Go ") || strings.Contains(err.Error(), "supervisor.Info") || !strings.Contains(err.Error(), "GET /v1/subos") {
		t.Errorf("undecodable answer: %v", err)
	}
}

// rewrite sends every request to one test server.
type rewrite struct {
	base string
	rt   http.RoundTripper
}

func (r rewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	u := *req.URL
	nu, _ := u.Parse(r.base + req.URL.RequestURI())
	req = req.Clone(req.Context())
	req.URL = nu
	req.Host = nu.Host
	return r.rt.RoundTrip(req)
}
