package metrics

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"rainforest/internal/buildinfo"
)

func testHandler(t *testing.T, logs io.Writer) http.Handler {
	t.Helper()
	reg, err := NewRegistry(testSource(), buildinfo.Info{Version: "v1.2.3", Commit: "0123456789abcdef", GoVersion: "go1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	return Handler(reg, slog.New(slog.NewTextHandler(logs, nil)))
}

// GET /metrics is the Prometheus text format: the supervisor's families,
// the Go runtime's and the process's; it parses, and passes promlint.
func TestHandlerServesText(t *testing.T) {
	var logs bytes.Buffer
	srv := httptest.NewServer(testHandler(t, &logs))
	defer srv.Close()
	resp, err := http.Get(srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d:\n%s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	text := string(body)
	for _, want := range []string{
		"# TYPE rainforest_subos gauge\n",
		`rainforest_subos{state="running"} 1` + "\n",
		`rainforest_subos_agent_state{state="healthy",subos="web"} 1` + "\n",
		`rainforest_build_info{commit="0123456789ab",go_version="go1.26.8",version="v1.2.3"} 1` + "\n",
		"# TYPE go_goroutines gauge\n",
		"# TYPE process_open_fds gauge\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in:\n%s", want, text)
		}
	}
	// Nothing the guest wrote (its agent's version) is shown.
	if strings.Contains(text, "evil") || strings.Contains(text, "\x1b") {
		t.Errorf("guest text in the metrics:\n%s", text)
	}
	// It parses as the text format, and says what the collector does.
	want := `
# HELP rainforest_hugepages_free_pages Hugepages of a pool free for new subOSes.
# TYPE rainforest_hugepages_free_pages gauge
rainforest_hugepages_free_pages{node="0",page_size="1G"} 1
rainforest_hugepages_free_pages{node="0",page_size="2M"} 768
`
	if err := testutil.ScrapeAndCompare(srv.URL+Path, strings.NewReader(want), "rainforest_hugepages_free_pages"); err != nil {
		t.Error(err)
	}
	if logs.Len() > 0 {
		t.Errorf("errors logged:\n%s", logs.String())
	}
}

// Only GET /metrics is served.
func TestHandlerOtherRequests(t *testing.T) {
	srv := httptest.NewServer(testHandler(t, io.Discard))
	defer srv.Close()
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/", http.StatusNotFound},
		{"GET", "/metrics/x", http.StatusNotFound},
		{"POST", Path, http.StatusMethodNotAllowed},
		{"HEAD", Path, http.StatusOK},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("%s %s: status %d, want %d", c.method, c.path, resp.StatusCode, c.status)
		}
	}
}

// Serve serves until its context ends, then returns nil and the port is
// closed.
func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, testHandler(t, io.Discard)) }()
	resp, err := http.Get("http://" + addr + Path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after its context ended: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("still listening after Serve returned")
	}
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:9464", true},
		{":9464", true},
		{"localhost:9464", true},
		{"[::1]:9464", true},
		{"0.0.0.0:0", true},
		{"9464", false},
		{"127.0.0.1", false},
		{"127.0.0.1:http", false},
		{"127.0.0.1:70000", false},
		{"127.0.0.1:-1", false},
		{"::1:9464", false},
		{"", false},
	} {
		if err := CheckAddr(c.addr); (err == nil) != c.ok {
			t.Errorf("CheckAddr(%q) = %v, want ok %v", c.addr, err, c.ok)
		}
	}
}
