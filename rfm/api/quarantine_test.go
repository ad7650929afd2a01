package api

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"rainforest/ledger/store"
)

// quarantineBackend is a fakeBackend that keeps a quarantine.
type quarantineBackend struct {
	fakeBackend
	qs []store.Quarantined
}

func (q *quarantineBackend) Quarantined() ([]store.Quarantined, error) { return q.qs, nil }

func TestQuarantineRoute(t *testing.T) {
	w := httptest.NewRecorder()
	Handler(&fakeBackend{}).ServeHTTP(w, httptest.NewRequest("GET", "/v1/quarantine", nil))
	if w.Code != 404 {
		t.Errorf("backend without a quarantine: %d", w.Code)
	}
	b := &quarantineBackend{}
	w = httptest.NewRecorder()
	Handler(b).ServeHTTP(w, httptest.NewRequest("GET", "/v1/quarantine", nil))
	if w.Code != 200 || w.Body.String() != "[]\n" && w.Body.String() != "[]" {
		t.Errorf("empty quarantine: %d %q", w.Code, w.Body.String())
	}
	b.qs = []store.Quarantined{{Seq: 1, Name: "db", Reason: "corrupt", Time: time.Unix(1, 0).UTC(), Raw: []byte(`{"allo`)}}
	w = httptest.NewRecorder()
	Handler(b).ServeHTTP(w, httptest.NewRequest("GET", "/v1/quarantine", nil))
	var got []store.Quarantined
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 || len(got) != 1 || string(got[0].Raw) != `{"allo` || got[0].Name != "db" {
		t.Errorf("quarantine: %d %+v %v", w.Code, got, err)
	}
}

func TestClientQuarantined(t *testing.T) {
	b := &quarantineBackend{qs: []store.Quarantined{{Seq: 3, Name: "db", Reason: "corrupt", Raw: []byte("x")}}}
	path := filepath.Join(t.TempDir(), "rfm.sock")
	ln, err := Listen(path, ownPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, b) }()
	defer func() {
		cancel()
		<-done
	}()
	qs, err := NewClient(path).Quarantined(ctx)
	if err != nil || len(qs) != 1 || qs[0].Seq != 3 || string(qs[0].Raw) != "x" {
		t.Errorf("Quarantined = %+v, %v", qs, err)
	}
}
