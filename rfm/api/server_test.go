package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/internal/tokenbucket"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/supervisor"
)

// fakeBackend is a Backend with canned answers.
type fakeBackend struct {
	mu       sync.Mutex
	subos    map[string]supervisor.Info
	creates  int
	actors   []string
	messages []string
	// events, when set, is the audit log Events reads (else it answers
	// one canned event); addEvent appends and publishes to feed.
	events []store.Event
	feed   supervisor.EventFeed
}

func (f *fakeBackend) SubscribeEvents(ctx context.Context) *supervisor.Subscription {
	return f.feed.Subscribe(ctx)
}

// addEvent records an event and publishes it, as the supervisor does.
func (f *fakeBackend) addEvent(e store.Event) store.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.Seq = uint64(len(f.events)) + 1
	if e.Time.IsZero() {
		e.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(e.Seq) * time.Minute)
	}
	f.events = append(f.events, e)
	f.feed.Publish(e)
	return e
}

func (f *fakeBackend) Usage() supervisor.Usage {
	return supervisor.Usage{Housekeeping: []int{0}, FreeCores: []int{2, 3},
		Allocations: []ledger.Allocation{{Name: "a", Cores: []int{1}, Memory: 32 << 20, PageSize: 2 << 20, Pages: 16}},
		Pools:       []supervisor.PoolUsage{{Node: 0, PageSize: 2 << 20, Capacity: 64, Owned: 16, Free: 48}}}
}

func (f *fakeBackend) Create(ctx context.Context, s supervisor.Spec) (supervisor.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	f.actors = append(f.actors, supervisor.Actor(ctx))
	if s.Name == "bad" {
		return supervisor.Info{}, &supervisor.ProblemsError{Problems: []ledger.Problem{{Field: "cores", Message: "core 0 is the supervisor's"}}}
	}
	if _, ok := f.subos[s.Name]; ok {
		return supervisor.Info{}, fmt.Errorf("%w: %q", supervisor.ErrExists, s.Name)
	}
	i := supervisor.Info{Name: s.Name, State: supervisor.StateRunning, Spec: s,
		Allocation: ledger.Allocation{Name: s.Name, Cores: []int{1}, Memory: s.Memory, PageSize: 2 << 20}}
	f.subos[s.Name] = i
	return i, nil
}

func (f *fakeBackend) AttachDisk(_ context.Context, name string, d supervisor.Disk) (supervisor.Disk, error) {
	switch {
	case name != "web":
		return supervisor.Disk{}, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	case d.Path == "/taken":
		return supervisor.Disk{}, fmt.Errorf("%w: %s", supervisor.ErrDeviceExists, d.Path)
	}
	d.ID = "disk1"
	return d, nil
}

func (f *fakeBackend) DetachDisk(_ context.Context, name, disk string, timeout time.Duration) error {
	switch {
	case disk == "busy":
		return fmt.Errorf("%w: %s (waited %v)", supervisor.ErrInUse, disk, timeout)
	case disk != "disk1":
		return fmt.Errorf("%w: %s", supervisor.ErrNoDevice, disk)
	}
	return nil
}

func (f *fakeBackend) Grant(_ context.Context, name string, g supervisor.SegmentGrant) error {
	if g.Size%4096 != 0 {
		return &supervisor.ProblemsError{Problems: []ledger.Problem{{Field: "segments[0].size", Message: "not a multiple of 4 KiB"}}}
	}
	return nil
}

func (f *fakeBackend) Revoke(_ context.Context, name, segment string, timeout time.Duration) error {
	if timeout != 30*time.Second {
		return fmt.Errorf("%w: timeout %v", supervisor.ErrInvalid, timeout)
	}
	return nil
}

func (f *fakeBackend) Destroy(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subos[name]; !ok {
		return fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	delete(f.subos, name)
	return nil
}

func (f *fakeBackend) List() []supervisor.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []supervisor.Info
	for _, i := range f.subos {
		out = append(out, i)
	}
	return out
}

func (f *fakeBackend) Get(name string) (supervisor.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.subos[name]
	if !ok {
		return i, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	return i, nil
}

func (f *fakeBackend) Events(since uint64, limit int) ([]store.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.events == nil {
		return []store.Event{{Seq: since + 1, What: "create"}}, nil
	}
	var out []store.Event
	for _, e := range f.events {
		if e.Seq > since && (limit <= 0 || len(out) < limit) {
			out = append(out, e)
		}
	}
	return out, nil
}

func (f *fakeBackend) Check(s supervisor.Spec) []ledger.Problem {
	if s.Memory == 0 {
		return []ledger.Problem{{Field: "memory", Message: "must be more than 0"}}
	}
	return nil
}

func (f *fakeBackend) Inventory() *partitioner.Inventory {
	return &partitioner.Inventory{
		CPUs: []partitioner.CPU{{ID: 0, Online: true, Siblings: []int{0}}, {ID: 1, Online: true, Core: 1, Siblings: []int{1}}},
		Nodes: []partitioner.Node{{ID: 0, CPUs: []int{0, 1}, MemTotal: 8 << 30, MemFree: 6 << 30,
			HugePages: []partitioner.HugePool{{PageSize: 2 << 20, Total: 64, Free: 48}}}},
		Devices: []partitioner.PCIDevice{{Address: "0000:03:00.0", Vendor: 0x8086, Device: 0x1533, Class: 0x020000, Driver: "vfio-pci", IOMMUGroup: 3, Node: -1}},
	}
}

func (f *fakeBackend) Message(ctx context.Context, name, text string) error {
	if _, err := f.Get(name); err != nil {
		return err
	}
	if name == "deaf" {
		return fmt.Errorf("%w: %q", supervisor.ErrNotListening, name)
	}
	if _, err := control.Text(text); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.messages = append(f.messages, name+": "+text)
	return nil
}

func (f *fakeBackend) Board() (board.Board, error) {
	return board.Board{Seq: 2, Entries: []board.Entry{{Peer: 1, State: board.StateRunning, CommCores: []int{1}, Name: "a"}}}, nil
}

// Control messages: delivered, or 404 / 409 / 422 naming what is wrong.
func TestMessageAndBoard(t *testing.T) {
	c, b := startServer(t)
	ctx := context.Background()
	for _, n := range []string{"a", "deaf"} {
		if _, err := c.Create(ctx, supervisor.Spec{Name: n, Memory: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Message(ctx, "a", "hello"); err != nil {
		t.Fatal(err)
	}
	var ae *APIError
	for _, tc := range []struct {
		name, text string
		code       int
	}{
		{"nobody", "hi", http.StatusNotFound},
		{"deaf", "hi", http.StatusConflict},
		{"a", strings.Repeat("x", 63), http.StatusUnprocessableEntity},
		{"a", "", http.StatusUnprocessableEntity},
	} {
		if err := c.Message(ctx, tc.name, tc.text); !errors.As(err, &ae) || ae.Status != tc.code {
			t.Errorf("message %q to %s: %v, want %d", tc.text, tc.name, err, tc.code)
		}
	}
	if len(b.messages) != 1 || b.messages[0] != "a: hello" {
		t.Errorf("messages %v", b.messages)
	}
	bd, err := c.Board(ctx)
	if err != nil || len(bd.Entries) != 1 || bd.Entries[0].Name != "a" {
		t.Errorf("board %+v, %v", bd, err)
	}
}

func startServer(t *testing.T) (*Client, *fakeBackend) {
	t.Helper()
	b := &fakeBackend{subos: map[string]supervisor.Info{}}
	path := filepath.Join(t.TempDir(), "rfm.sock")
	ln, err := Listen(path, ownPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, b) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return NewClient(path), b
}

func TestClientServer(t *testing.T) {
	c, b := startServer(t)
	ctx := context.Background()
	if _, err := c.Create(ctx, supervisor.Spec{Name: "a", Memory: 1}); err != nil {
		t.Fatal(err)
	}
	var ae *APIError
	if _, err := c.Create(ctx, supervisor.Spec{Name: "a"}); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Errorf("duplicate create: %v", err)
	}
	if _, err := c.Create(ctx, supervisor.Spec{Name: "bad"}); !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity || len(ae.Body.Problems) != 1 {
		t.Errorf("refused create: %v", err)
	}
	list, err := c.List(ctx)
	if err != nil || len(list) != 1 {
		t.Errorf("list %v %v", list, err)
	}
	if _, err := c.Get(ctx, "nope"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("get missing: %v", err)
	}
	if r, err := c.Check(ctx, supervisor.Spec{Name: "x"}); err != nil || r.OK || len(r.Problems) != 1 {
		t.Errorf("check %+v %v", r, err)
	}
	if ev, err := c.Events(ctx, 4, 10); err != nil || len(ev) != 1 || ev[0].Seq != 5 {
		t.Errorf("events %v %v", ev, err)
	}
	if err := c.Destroy(ctx, "a"); err != nil {
		t.Error(err)
	}
	// The backend learns who asked from the socket's peer credentials.
	want := fmt.Sprintf("uid %d pid %d", os.Getuid(), os.Getpid())
	for _, a := range b.actors {
		if !strings.HasPrefix(a, want) {
			t.Errorf("actor %q, want %q...", a, want)
		}
	}
}

// Malformed, oversized and unknown-field bodies get a 4xx and change nothing.
func TestBadRequests(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}}
	h := Handler(b)
	cases := []struct {
		method, path, body string
		code               int
	}{
		{"POST", "/v1/subos", `{"name": "a", "memory": 1, "colour": "red"}`, 400},
		{"POST", "/v1/subos", `{"name": "a"`, 400},
		{"POST", "/v1/subos", `{"name": "a"} {"name": "b"}`, 400},
		{"POST", "/v1/subos", `{"name": 7}`, 400},
		{"POST", "/v1/subos", `{"name": "a", "cmdline_append": "` + strings.Repeat("x", MaxBody) + `"}`, 413},
		{"POST", "/v1/check", `[]`, 400},
		{"GET", "/v1/events?since=-1", ``, 400},
		{"DELETE", "/v1/subos/none", ``, 404},
		{"PUT", "/v1/subos", `{}`, 405},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.code {
			t.Errorf("%s %s %.40q: %d, want %d (%s)", c.method, c.path, c.body, w.Code, c.code, w.Body.String())
		}
	}
	if b.creates != 0 {
		t.Errorf("bad requests reached the backend %d times", b.creates)
	}
}

func TestOpenAPIServed(t *testing.T) {
	w := httptest.NewRecorder()
	Handler(&fakeBackend{}).ServeHTTP(w, httptest.NewRequest("GET", "/openapi.json", nil))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"openapi": "3.0.3"`) {
		t.Errorf("openapi.json: %d %.80s", w.Code, w.Body.String())
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	startServerPath := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(startServerPath, ownPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(startServerPath, ownPolicy(), nil); err == nil || !strings.Contains(err.Error(), "another supervisor") {
		t.Errorf("second Listen: %v", err)
	}
}

// Device changes: the routes, their status codes, and the client.
func TestDeviceRoutes(t *testing.T) {
	b := &fakeBackend{subos: map[string]supervisor.Info{}}
	h := Handler(b)
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/v1/subos/web/disks", `{"path": "/d.img", "readonly": true}`, 201},
		{"POST", "/v1/subos/web/disks", `{"path": "/taken"}`, 409},
		{"POST", "/v1/subos/nobody/disks", `{"path": "/d.img"}`, 404},
		{"POST", "/v1/subos/web/disks", `{"path": "/d.img", "cache": "none"}`, 400},
		{"POST", "/v1/subos/web/disks", `{"path": "/d.img", "iops": {"rate": 100}, "bandwidth": {"rate": 1048576, "burst": 4194304}}`, 201},
		{"POST", "/v1/subos/web/disks", `{"path": "/d.img", "iops": {"rate": 100, "size": 1}}`, 400},
		{"DELETE", "/v1/subos/web/disks/disk1", ``, 204},
		{"DELETE", "/v1/subos/web/disks/busy?timeout=1s", ``, 409},
		{"DELETE", "/v1/subos/web/disks/disk7", ``, 404},
		{"DELETE", "/v1/subos/web/disks/disk1?timeout=soon", ``, 400},
		{"POST", "/v1/subos/web/segments", `{"name": "cache", "size": 8192}`, 201},
		{"POST", "/v1/subos/web/segments", `{"name": "cache", "size": 100}`, 422},
		{"DELETE", "/v1/subos/web/segments/cache?timeout=30s", ``, 204},
		{"DELETE", "/v1/subos/web/segments/cache", ``, 422},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.path, strings.NewReader(c.body)))
		if w.Code != c.want {
			t.Errorf("%s %s %s: %d %s, want %d", c.method, c.path, c.body, w.Code, w.Body, c.want)
		}
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := Listen(sock, ownPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, ln, b)
	c := NewClient(sock)
	d, err := c.AttachDisk(ctx, "web", supervisor.Disk{Path: "/d.img", Direct: true, IOPS: tokenbucket.Limit{Rate: 500, Burst: 50}})
	if err != nil || d.ID != "disk1" || !d.Direct || d.IOPS != (tokenbucket.Limit{Rate: 500, Burst: 50}) {
		t.Errorf("AttachDisk = %+v, %v", d, err)
	}
	var ae *APIError
	if err := c.DetachDisk(ctx, "web", "busy", time.Second); !errors.As(err, &ae) || ae.Status != 409 {
		t.Errorf("DetachDisk busy = %v", err)
	}
	if err := c.Grant(ctx, "web", supervisor.SegmentGrant{Name: "cache", Size: 4096}); err != nil {
		t.Errorf("Grant = %v", err)
	}
	if err := c.Revoke(ctx, "web", "cache", 30*time.Second); err != nil {
		t.Errorf("Revoke = %v", err)
	}
}

// The elastic routes: subOS web resizes; a loan of one core from web to
// another subOS exists while lent.
func (f *fakeBackend) ResizeCPUs(_ context.Context, name string, n int) (supervisor.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	info, ok := f.subos[name]
	if !ok {
		return supervisor.Info{}, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	if n > 4 {
		return supervisor.Info{}, fmt.Errorf("%w: %q can have at most 4 cpus", supervisor.ErrInvalid, name)
	}
	info.Allocation.Cores = nil
	for i := range n {
		info.Allocation.Cores = append(info.Allocation.Cores, i+1)
	}
	f.subos[name] = info
	return info, nil
}

// ResizeMemory: web grows to at most 1 GiB in 2 MiB blocks; asked for
// 768 MiB, its guest stops at 512 MiB.
func (f *fakeBackend) ResizeMemory(_ context.Context, name string, bytes uint64) (supervisor.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	info, ok := f.subos[name]
	switch {
	case !ok:
		return supervisor.Info{}, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	case bytes%(2<<20) != 0:
		return supervisor.Info{}, fmt.Errorf("%w: not a multiple of the 2 MiB block", supervisor.ErrInvalid)
	case bytes > 1<<30:
		return supervisor.Info{}, fmt.Errorf("%w: %w", ledger.ErrInsufficient, ledger.ErrNoMemory)
	case bytes == 768<<20:
		info.Allocation.Memory = 512 << 20
		f.subos[name] = info
		return info, &supervisor.PartialError{Name: name, Requested: bytes, Memory: 512 << 20, Plugged: 256 << 20}
	}
	info.Allocation.Memory = bytes
	f.subos[name] = info
	return info, nil
}

func (f *fakeBackend) Lend(_ context.Context, r supervisor.LendRequest) (ledger.Loan, error) {
	if r.From == r.To {
		return ledger.Loan{}, fmt.Errorf("%w: a subOS cannot lend to itself", ledger.ErrInvalid)
	}
	if r.CPUs > 1 {
		return ledger.Loan{}, fmt.Errorf("%w: %w", ledger.ErrInsufficient, ledger.ErrNoCores)
	}
	if r.Memory > 0 {
		return ledger.Loan{ID: 2, Lender: r.From, Borrower: r.To, Kind: ledger.KindLend, Pages: r.Memory >> 21, Memory: r.Memory}, nil
	}
	return ledger.Loan{ID: 1, Lender: r.From, Borrower: r.To, Kind: ledger.KindLend, Cores: []int{2}}, nil
}

func (f *fakeBackend) Return(_ context.Context, r supervisor.ReturnRequest) error {
	if r.ID != 1 {
		return fmt.Errorf("%w: %d", ledger.ErrNoLoan, r.ID)
	}
	return nil
}

func (f *fakeBackend) Loans() []ledger.Loan { return nil }

// The autoscale routes: subOS web is latency-critical.
func (f *fakeBackend) SetAutoscale(_ context.Context, name string, a *supervisor.AutoscaleSpec) (supervisor.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	info, ok := f.subos[name]
	if !ok {
		return supervisor.Info{}, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	if a != nil && a.Lower >= a.Upper {
		return supervisor.Info{}, &supervisor.ProblemsError{Problems: []ledger.Problem{{Field: "autoscale", Message: "lower threshold (lt) must be below the upper (ut)"}}}
	}
	info.Spec.Class = ledger.LatencyCritical
	info.Spec.Autoscale = a
	f.subos[name] = info
	return info, nil
}

func (f *fakeBackend) ReportLatency(_ context.Context, name string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subos[name]; !ok {
		return fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	return nil
}
