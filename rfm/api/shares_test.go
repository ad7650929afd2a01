package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/ledger"
	"rainforest/rfm/supervisor"
)

// AddShare plays the supervisor's: web takes shares of /srv/*, except a
// tag it has ("data").
func (f *fakeBackend) AddShare(_ context.Context, name string, s supervisor.ShareSpec) (supervisor.ShareSpec, error) {
	switch {
	case name != "web":
		return supervisor.ShareSpec{}, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	case s.Tag == "data":
		return supervisor.ShareSpec{}, fmt.Errorf("%w: tag %q", supervisor.ErrDeviceExists, s.Tag)
	case !strings.HasPrefix(s.Path, "/srv/"):
		return supervisor.ShareSpec{}, &supervisor.ProblemsError{Problems: []ledger.Problem{{Field: "shares[1].path", Message: "no such directory"}}}
	}
	s.ID = "share1"
	return s, nil
}

func (f *fakeBackend) RemoveShare(_ context.Context, name, share string, timeout time.Duration) error {
	switch {
	case share == "busy":
		return fmt.Errorf("%w: %s (waited %v)", supervisor.ErrInUse, share, timeout)
	case share != "data":
		return fmt.Errorf("%w: %s", supervisor.ErrNoDevice, share)
	}
	return nil
}

// shareCases are the share routes' responses TestOpenAPIResponses checks.
func shareCases() []responseCase {
	return []responseCase{
		{"POST", "/v1/subos/web/shares", `{"path": "/srv/docs", "tag": "docs", "readonly": true}`, 201, false},
		{"POST", "/v1/subos/web/shares", `{"path": "/srv/x", "tag": "data"}`, 409, false},
		{"POST", "/v1/subos/web/shares", `{"path": "/nope", "tag": "x"}`, 422, false},
		{"POST", "/v1/subos/none/shares", `{"path": "/srv/x", "tag": "x"}`, 404, false},
		{"POST", "/v1/subos/web/shares", `{"path": "/srv/x", "colour": "red"}`, 400, false},
		{"DELETE", "/v1/subos/web/shares/data?timeout=30s", "", 204, false},
		{"DELETE", "/v1/subos/web/shares/busy", "", 409, false},
		{"DELETE", "/v1/subos/web/shares/nope", "", 404, false},
		{"DELETE", "/v1/subos/web/shares/data?timeout=x", "", 400, false},
	}
}

// A backend without shares answers the share routes 409.
func TestSharesUnsupported(t *testing.T) {
	mux, _ := routes(plainBackend{&fakeBackend{subos: map[string]supervisor.Info{}}}, nil)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("POST", "/v1/subos/web/shares", strings.NewReader(`{"path": "/srv", "tag": "t"}`)))
	if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), "does not share directories") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

// plainBackend is a Backend and nothing more.
type plainBackend struct{ Backend }

// Info's shares and the stats' host usage match their schemas.
func TestShareSchemas(t *testing.T) {
	doc := loadDoc(t)
	n := uint64(1234)
	for schema, v := range map[string]any{
		"Info": supervisor.Info{Name: "web", State: supervisor.StateRunning, Allocation: ledger.Allocation{Name: "web", Cores: []int{1}, Devices: []string{}}, Spec: supervisor.Spec{Name: "web", Memory: 1, Kernel: "/k",
			Shares: []supervisor.ShareSpec{{ID: "share0", Path: "/srv", Tag: "srv", ReadOnly: true}}},
			Shares: []supervisor.ShareInfo{{ShareSpec: supervisor.ShareSpec{ID: "share0", Path: "/srv", Tag: "srv"}, State: supervisor.ShareFailed, Error: "virtiofsd exited"}}},
		"AgentStats": supervisor.AgentStats{Name: "web", Stats: agentproto.Stats{CPUs: []agentproto.CPUUse{}}, Host: &supervisor.HostUsage{VCPUSeconds: 1, Processes: []supervisor.HostProcess{{PID: 7, Comm: "virtiofsd", CPUSeconds: float64(n) / 1e6}},
			Backends: []supervisor.BackendUsage{{ID: "share0", Tag: "srv", PID: 7, CPUUsec: 10}}}},
	} {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var obj any
		json.Unmarshal(raw, &obj)
		if err := doc.Components.Schemas[schema].Value.VisitJSON(obj); err != nil {
			t.Errorf("%s %s: %v", schema, raw, err)
		}
	}
}
