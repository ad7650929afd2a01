package subos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/ledger"
	"rainforest/rfm/supervisor"
)

func TestMarkerScanner(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.log")
	sc := NewMarkerScanner(p, "RF-INIT-REACHED")
	if found, err := sc.Scan(); found || err != nil {
		t.Fatalf("missing file: found %v err %v", found, err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The marker arrives in pieces, split across scans.
	for _, part := range []string{"vmm: started\n", "RF-INIT", "-REA"} {
		if _, err := f.WriteString(part); err != nil {
			t.Fatal(err)
		}
		if found, err := sc.Scan(); found || err != nil {
			t.Fatalf("after %q: found %v err %v", part, found, err)
		}
	}
	f.WriteString("CHED\n")
	if found, err := sc.Scan(); !found || err != nil {
		t.Fatalf("complete marker: found %v err %v", found, err)
	}
	if found, _ := sc.Scan(); !found {
		t.Error("found is not sticky")
	}
}

func TestMarkerScannerLargeFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.log")
	// The marker straddles the boundary of the first read chunk.
	data := strings.Repeat("x", scanChunk-5) + "RF-INIT-REACHED\n"
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if found, err := NewMarkerScanner(p, "RF-INIT-REACHED").Scan(); !found || err != nil {
		t.Fatalf("found %v err %v", found, err)
	}
	if found, err := NewMarkerScanner(p, "NOPE").Scan(); found || err != nil {
		t.Fatalf("absent marker: found %v err %v", found, err)
	}
	if _, err := NewMarkerScanner(p, "").Scan(); err == nil {
		t.Error("empty marker accepted")
	}
}

// fakeClient is an in-memory supervisor. The guest "prints" the marker
// into the log file markerAfter after Create, unless markerAfter < 0.
type fakeClient struct {
	dir         string
	markerAfter time.Duration
	createErr   error
	destroyErr  error
	vanish      bool // the subOS disappears right after Create
	lingers     int  // List keeps showing a destroyed subOS this many times
	resizeErr   error
	resizes     []int
	memErr      error
	memResizes  []string

	mu        sync.Mutex
	subos     map[string]supervisor.Info
	destroyed []string
	wg        sync.WaitGroup
}

func (c *fakeClient) Create(ctx context.Context, spec supervisor.Spec) (supervisor.Info, error) {
	if c.createErr != nil {
		return supervisor.Info{}, c.createErr
	}
	info := supervisor.Info{Name: spec.Name, Log: filepath.Join(c.dir, spec.Name+".log"),
		Allocation: ledger.Allocation{Name: spec.Name, Cores: []int{1}}}
	if err := os.WriteFile(info.Log, []byte("vmm: running\n"), 0o600); err != nil {
		return supervisor.Info{}, err
	}
	c.mu.Lock()
	if !c.vanish {
		c.subos[spec.Name] = info
	}
	c.mu.Unlock()
	if c.markerAfter >= 0 {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			time.Sleep(c.markerAfter)
			f, err := os.OpenFile(info.Log, os.O_APPEND|os.O_WRONLY, 0)
			if err == nil {
				f.WriteString("[    0.5] ok\nRF-INIT-REACHED\n")
				f.Close()
			}
		}()
	}
	return info, nil
}

func (c *fakeClient) Destroy(ctx context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.destroyed = append(c.destroyed, name)
	if c.destroyErr != nil {
		return c.destroyErr
	}
	if c.lingers == 0 {
		delete(c.subos, name)
	}
	return nil
}

func (c *fakeClient) List(ctx context.Context) ([]supervisor.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []supervisor.Info
	for _, in := range c.subos {
		out = append(out, in)
	}
	if c.lingers > 0 && len(c.destroyed) > 0 {
		c.lingers--
		if c.lingers == 0 {
			for _, n := range c.destroyed {
				delete(c.subos, n)
			}
		}
	}
	return out, nil
}

func (c *fakeClient) Log(ctx context.Context, name string, w io.Writer) error {
	return errors.New("not used: the log file is readable")
}

func (c *fakeClient) Get(ctx context.Context, name string) (supervisor.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.subos[name]
	if !ok {
		return supervisor.Info{}, supervisor.ErrNotFound
	}
	info.Agent = &supervisor.AgentInfo{State: supervisor.AgentHealthy}
	return info, nil
}

func (c *fakeClient) ResizeCPUs(ctx context.Context, name string, n int) (supervisor.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.subos[name]
	if !ok {
		return supervisor.Info{}, supervisor.ErrNotFound
	}
	if c.resizeErr != nil {
		return supervisor.Info{}, c.resizeErr
	}
	info.Allocation.Cores = []int{1, 2}[:n]
	c.subos[name] = info
	c.resizes = append(c.resizes, n)
	return info, nil
}

func (c *fakeClient) ResizeMemory(ctx context.Context, name string, bytes uint64) (supervisor.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.subos[name]
	if !ok {
		return supervisor.Info{}, supervisor.ErrNotFound
	}
	c.memResizes = append(c.memResizes, fmt.Sprintf("%s %d MiB after %d cpu resizes", name, bytes>>20, len(c.resizes)))
	if c.memErr != nil {
		return info, c.memErr
	}
	return info, nil
}

func newFake(t *testing.T) *fakeClient {
	c := &fakeClient{dir: t.TempDir(), subos: map[string]supervisor.Info{}}
	t.Cleanup(c.wg.Wait)
	return c
}

func testConfig() Config {
	return Config{NamePrefix: "lc-", Marker: "RF-INIT-REACHED", Timeout: 2 * time.Second, Poll: time.Millisecond}
}

func TestCycle(t *testing.T) {
	c := newFake(t)
	c.markerAfter = 30 * time.Millisecond
	c.lingers = 3
	s := Cycle(context.Background(), c, testConfig(), 4)
	if !s.OK() {
		t.Fatalf("cycle failed: %s", s.Error)
	}
	if s.System != System || s.Run != 4 {
		t.Errorf("labels %+v", s)
	}
	if s.CreateInit < 30*time.Millisecond || s.CreateReturn > s.CreateInit || s.Destroy < s.DestroyReturn {
		t.Errorf("durations out of order: %+v", s)
	}
	if len(c.destroyed) != 1 || c.destroyed[0] != "lc-4" {
		t.Errorf("destroyed %v, want [lc-4]", c.destroyed)
	}
}

func TestCycleCreateFails(t *testing.T) {
	c := newFake(t)
	c.createErr = errors.New("cpu 1 is owned by subOS \"x\"")
	s := Cycle(context.Background(), c, testConfig(), 1)
	if s.OK() || !strings.Contains(s.Error, "owned by") || len(c.destroyed) != 0 {
		t.Errorf("sample %+v destroyed %v", s, c.destroyed)
	}
}

func TestCycleNoMarkerDestroys(t *testing.T) {
	c := newFake(t)
	c.markerAfter = -1
	cfg := testConfig()
	cfg.Timeout = 50 * time.Millisecond
	s := Cycle(context.Background(), c, cfg, 1)
	if s.OK() || !strings.Contains(s.Error, "no RF-INIT-REACHED") {
		t.Errorf("sample %+v", s)
	}
	if len(c.destroyed) != 1 {
		t.Errorf("subOS not cleaned up: destroyed %v", c.destroyed)
	}
}

func TestCycleSubOSEnds(t *testing.T) {
	c := newFake(t)
	c.markerAfter = -1
	c.vanish = true
	s := Cycle(context.Background(), c, testConfig(), 1)
	if s.OK() || !strings.Contains(s.Error, ErrEnded.Error()) {
		t.Errorf("sample %+v", s)
	}
}

func TestCycleDestroyFails(t *testing.T) {
	c := newFake(t)
	c.markerAfter = 0
	c.destroyErr = errors.New("boom")
	s := Cycle(context.Background(), c, testConfig(), 1)
	if s.OK() || !strings.Contains(s.Error, "destroy lc-1: boom") || s.CreateInit == 0 {
		t.Errorf("sample %+v", s)
	}
}

func TestHolds(t *testing.T) {
	mine := supervisor.Info{Name: "a", Allocation: ledger.Allocation{Cores: []int{1, 2}}}
	other := supervisor.Info{Name: "b", Allocation: ledger.Allocation{Cores: []int{3}}}
	sharing := supervisor.Info{Name: "c", Allocation: ledger.Allocation{Cores: []int{2}}}
	if Holds(nil, mine) || Holds([]supervisor.Info{other}, mine) {
		t.Error("free cores reported held")
	}
	if !Holds([]supervisor.Info{other, sharing}, mine) || !Holds([]supervisor.Info{{Name: "a"}}, mine) {
		t.Error("held cores or name not reported")
	}
}

type notReady struct{ fakeClient }

func (*notReady) List(ctx context.Context) ([]supervisor.Info, error) {
	return nil, errors.New("supervisor not reachable")
}

func TestWaitReady(t *testing.T) {
	if err := WaitReady(context.Background(), newFake(t), time.Second); err != nil {
		t.Errorf("ready supervisor: %v", err)
	}
	err := WaitReady(context.Background(), &notReady{}, 120*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("err %v", err)
	}
}

// With Resize, a cycle times growing the running subOS by a core and
// shrinking it back; a refused resize fails the cycle and destroys it.
func TestCycleResize(t *testing.T) {
	c := newFake(t)
	cfg := testConfig()
	cfg.Resize = true
	cfg.Spec.CPUs = 1
	s := Cycle(context.Background(), c, cfg, 1)
	if !s.OK() || s.CPUOnline <= 0 || s.CPUOffline <= 0 || !slices.Equal(c.resizes, []int{2, 1}) {
		t.Fatalf("sample %+v, resizes %v", s, c.resizes)
	}
	c = newFake(t)
	c.resizeErr = errors.New("guest refused")
	s = Cycle(context.Background(), c, cfg, 2)
	if s.OK() || !strings.Contains(s.Error, "cpu online: guest refused") || len(c.destroyed) != 1 {
		t.Errorf("refused resize: sample %+v, destroyed %v", s, c.destroyed)
	}
}

// With MemoryStep, a cycle times growing the running subOS's memory by
// the step and back, after its CPU resize; a failed memory resize fails
// the cycle and destroys the subOS.
func TestCycleMemory(t *testing.T) {
	c := newFake(t)
	cfg := testConfig()
	cfg.Resize, cfg.MemoryStep = true, 512<<20
	cfg.Spec.CPUs, cfg.Spec.Memory = 1, 256<<20
	s := Cycle(context.Background(), c, cfg, 1)
	if !s.OK() || s.MemOnline <= 0 || s.MemOffline <= 0 || s.CPUOnline <= 0 {
		t.Fatalf("sample %+v", s)
	}
	if want := []string{"lc-1 768 MiB after 2 cpu resizes", "lc-1 256 MiB after 2 cpu resizes"}; !slices.Equal(c.memResizes, want) {
		t.Errorf("memory resizes %q, want %q", c.memResizes, want)
	}

	c = newFake(t)
	c.memErr = errors.New("asked for 768M of memory, the guest reached 512M")
	s = Cycle(context.Background(), c, cfg, 2)
	if s.OK() || !strings.Contains(s.Error, "memory online: asked for 768M") || len(c.destroyed) != 1 {
		t.Errorf("failed memory resize: sample %+v, destroyed %v", s, c.destroyed)
	}

	// Memory only: no CPU resize.
	c = newFake(t)
	cfg.Resize = false
	if s = Cycle(context.Background(), c, cfg, 3); !s.OK() || s.CPUOnline != 0 || s.MemOnline <= 0 || len(c.resizes) != 0 {
		t.Errorf("memory only: sample %+v, cpu resizes %v", s, c.resizes)
	}
}
