package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"rainforest/internal/peercred"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/api"
	"rainforest/rfm/supervisor"
)

// infoBackend is an API backend with what version, info, logs -f and
// events --follow use; the rest of api.Backend is left nil (unused).
type infoBackend struct {
	api.Backend
	mu     sync.Mutex
	subos  map[string]supervisor.Info
	events []store.Event
	feed   supervisor.EventFeed
}

func (b *infoBackend) Get(name string) (supervisor.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, ok := b.subos[name]
	if !ok {
		return i, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	return i, nil
}

func (b *infoBackend) Events(since uint64, limit int) ([]store.Event, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []store.Event
	for _, e := range b.events {
		if e.Seq > since && (limit <= 0 || len(out) < limit) {
			out = append(out, e)
		}
	}
	return out, nil
}

func (b *infoBackend) SubscribeEvents(ctx context.Context) *supervisor.Subscription {
	return b.feed.Subscribe(ctx)
}

func (b *infoBackend) add(what string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := store.Event{Seq: uint64(len(b.events)) + 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Who: "uid 0 pid 1", What: what, Name: "a"}
	b.events = append(b.events, e)
	b.feed.Publish(e)
}

func (b *infoBackend) Inventory() *partitioner.Inventory {
	return &partitioner.Inventory{
		CPUs: []partitioner.CPU{{ID: 0, Online: true}, {ID: 1, Online: true}, {ID: 2, Online: true}, {ID: 3, Online: true}},
		Nodes: []partitioner.Node{{ID: 0, CPUs: []int{0, 1, 2, 3}, MemTotal: 8 << 30, MemFree: 6 << 30,
			HugePages: []partitioner.HugePool{{PageSize: 2 << 20, Total: 64, Free: 64}, {PageSize: 1 << 30, Total: 0, Free: 0}}}},
		Devices: []partitioner.PCIDevice{{Address: "0000:03:00.0", Vendor: 0x8086, Device: 0x1533, Class: 0x020000, Driver: "vfio-pci", IOMMUGroup: 3, Node: -1}},
	}
}

func (b *infoBackend) Usage() supervisor.Usage {
	return supervisor.Usage{Housekeeping: []int{0}, FreeCores: []int{3},
		Allocations: []ledger.Allocation{{Name: "web", Cores: []int{1, 2}, Memory: 32 << 20, PageSize: 2 << 20, Pages: 16, Devices: []string{"0000:03:00.0"}}},
		Pools:       []supervisor.PoolUsage{{Node: 0, PageSize: 2 << 20, Capacity: 64, Owned: 16, Free: 48}, {Node: 0, PageSize: 1 << 30}}}
}

// serveInfo serves b on a socket until the test ends.
func serveInfo(t *testing.T, b *infoBackend) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rfm.sock")
	ln, err := api.Listen(path, ownAPIPolicy(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.Serve(ctx, ln, b) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

// execute runs one command with args until ctx ends; stdout goes to out.
func execute(ctx context.Context, cmd *cobra.Command, out *syncBuffer, args ...string) error {
	cmd.SetArgs(args)
	cmd.SetOut(out)
	cmd.SetErr(out)
	return cmd.ExecuteContext(ctx)
}

func TestVersionCommand(t *testing.T) {
	g := &globalFlags{socket: serveInfo(t, &infoBackend{})}
	var out syncBuffer
	if err := execute(context.Background(), versionCommand(g), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Client:\n Version:", "Server:\n Version:", " Commit:", " Go version:", " OS/Arch:", " API version:  1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in\n%s", want, out.String())
		}
	}
	g.output = "json"
	var js syncBuffer
	execute(context.Background(), versionCommand(g), &js)
	var rep versionReport
	if err := json.Unmarshal(js.Bytes(), &rep); err != nil || rep.Server == nil || rep.Server.Commit == "" || rep.Client.GoVersion == "" {
		t.Errorf("json: %+v, %v\n%s", rep, err, js.String())
	}
	// No server: the client's part, and exit 1.
	g = &globalFlags{socket: filepath.Join(t.TempDir(), "none.sock")}
	var alone syncBuffer
	var ee exitError
	if err := execute(context.Background(), versionCommand(g), &alone); !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("unreachable: %v", err)
	}
	if s := alone.String(); !strings.Contains(s, "Client:\n Version:") || !strings.Contains(s, "not reachable") {
		t.Errorf("unreachable:\n%s", s)
	}
}

func TestInfoCommand(t *testing.T) {
	g := &globalFlags{socket: serveInfo(t, &infoBackend{})}
	var out syncBuffer
	if err := execute(context.Background(), infoCommand(g), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"4 online (0-3)", "housekeeping:      1 (0)", "free:", "1 (3)", "owned by subOSes:  2 (1-2)",
		"2M         64     16     48", "1G", "web    1-2", "1 PCI functions in 1 IOMMU groups", "0000:03:00.0  8086:1533  020000  vfio-pci  3            -     web"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in\n%s", want, out.String())
		}
	}
	g.output = "json"
	var js syncBuffer
	if err := execute(context.Background(), infoCommand(g), &js); err != nil {
		t.Fatal(err)
	}
	var inv map[string]any
	if err := json.Unmarshal(js.Bytes(), &inv); err != nil || inv["usage"] == nil || inv["cpus"] == nil {
		t.Errorf("json: %v\n%s", err, js.String())
	}
}

// rfm logs -f prints the log as it grows, escaped for a terminal, and
// ends with the subOS.
func TestLogsFollow(t *testing.T) {
	log := filepath.Join(t.TempDir(), "a.log")
	os.WriteFile(log, []byte("hello\n"), 0o600)
	b := &infoBackend{subos: map[string]supervisor.Info{"a": {Name: "a", State: supervisor.StateRunning, Log: log}}}
	g := &globalFlags{socket: serveInfo(t, b)}
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- execute(context.Background(), logsCommand(g), &out, "a", "-f") }()
	for !strings.HasSuffix(out.String(), "hello\n") {
		yield()
	}
	f, _ := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("more\n")
	f.Close()
	for !strings.HasSuffix(out.String(), "more\n") {
		yield()
	}
	b.mu.Lock()
	delete(b.subos, "a")
	b.mu.Unlock()
	if err := <-done; err != nil || out.String() != "hello\nmore\n" {
		t.Errorf("%q, %v", out.String(), err)
	}
}

// rfm events --follow: the past from --since, then new events, until
// Ctrl-C.
func TestEventsFollow(t *testing.T) {
	b := &infoBackend{}
	b.add("create")
	g := &globalFlags{socket: serveInfo(t, b), output: "json"}
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- execute(ctx, eventsCommand(g), &out, "--follow", "--since", "0") }()
	for strings.Count(out.String(), "\n") < 1 {
		yield()
	}
	b.add("destroy")
	for strings.Count(out.String(), "\n") < 2 {
		yield()
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Ctrl-C: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	for i, want := range []string{"create", "destroy"} {
		var e store.Event
		if err := json.Unmarshal([]byte(lines[i]), &e); err != nil || e.What != want || e.Seq != uint64(i+1) {
			t.Errorf("line %d: %q (%v), want %s", i, lines[i], err, want)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	for in, want := range map[string]api.EventQuery{
		"":                     {},
		"42":                   {Since: 42, Past: true},
		"0":                    {Past: true},
		"2026-01-02T14:00:00Z": {SinceTime: now.Add(-time.Hour), Past: true},
		"90m":                  {SinceTime: now.Add(-90 * time.Minute), Past: true},
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.SinceTime.Equal(want.SinceTime) || got.Since != want.Since || got.Past != want.Past {
			t.Errorf("parseSince(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"yesterday", "-5m", "12:00"} {
		if _, err := parseSince(bad, now); err == nil || !strings.Contains(err.Error(), "--since") {
			t.Errorf("parseSince(%q): %v", bad, err)
		}
	}
}

// ownAPIPolicy lets this test process use the API.
func ownAPIPolicy() peercred.Policy {
	return peercred.Policy{Owner: uint32(os.Geteuid()), Group: peercred.NoGroup}
}
