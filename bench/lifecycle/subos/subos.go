// Package subos measures subOS create and destroy latency through the
// supervisor's API (rainforest/rfm/api): create is timed from the API call
// until it returns (the VMM runs) and until the guest's init marker appears
// in the subOS's log; destroy from the DELETE call until it returns and
// until the supervisor no longer lists the subOS (its cores are free).
// On the running subOS it can time a CPU resize (one core more and back)
// and a memory resize (a step more and back: virtio-mem), each through
// POST /v1/subos/{name}/resize until it returns.
package subos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"time"

	"rainforest/bench/lifecycle/sample"
	"rainforest/rfm/supervisor"
)

// System is the name of the measured system in samples.
const System = "rfm"

// Defaults for Config fields left zero.
const (
	DefaultPoll    = 5 * time.Millisecond
	DefaultTimeout = 5 * time.Minute
)

// ErrEnded means the subOS went away before its guest reached init.
var ErrEnded = errors.New("subOS ended before its guest reached init")

// Client is the part of *api.Client the measurement uses.
type Client interface {
	Create(ctx context.Context, spec supervisor.Spec) (supervisor.Info, error)
	Destroy(ctx context.Context, name string) error
	List(ctx context.Context) ([]supervisor.Info, error)
	Log(ctx context.Context, name string, w io.Writer) error
	Get(ctx context.Context, name string) (supervisor.Info, error)
	ResizeCPUs(ctx context.Context, name string, n int) (supervisor.Info, error)
	ResizeMemory(ctx context.Context, name string, bytes uint64) (supervisor.Info, error)
}

// Config describes the cycles to measure.
type Config struct {
	// Spec is the subOS created in every cycle; its Name is replaced by
	// NamePrefix followed by the run number.
	Spec       supervisor.Spec
	NamePrefix string
	// Marker is the guest console text that means init runs.
	Marker string
	// Timeout bounds one cycle's wait for the marker and for the ledger
	// (default DefaultTimeout).
	Timeout time.Duration
	// Poll is the interval between looks at the log and the ledger
	// (default DefaultPoll).
	Poll time.Duration
	// Resize, when set, measures a CPU resize of the running subOS from
	// its size to one more core and back (Spec.MaxCPUs must allow it),
	// once its agent is healthy.
	Resize bool
	// MemoryStep, when not 0, measures a memory resize of the running
	// subOS from Spec.Memory to that many bytes more and back
	// (Spec.MaxMemory must allow it), once its agent is healthy, after
	// the CPU resize.
	MemoryStep uint64
}

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Poll <= 0 {
		c.Poll = DefaultPoll
	}
	return c
}

// WaitReady waits until the supervisor answers List, or timeout passes.
func WaitReady(ctx context.Context, c Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		_, err := c.List(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("supervisor not answering after %v: %w", timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Cycle creates one subOS, waits for its init marker, destroys it and
// waits until the ledger no longer holds it. A subOS created by a failing
// cycle is destroyed before Cycle returns.
func Cycle(ctx context.Context, c Client, cfg Config, run int) sample.Sample {
	cfg = cfg.withDefaults()
	s := sample.Sample{System: System, Run: run}
	spec := cfg.Spec
	spec.Name = cfg.NamePrefix + strconv.Itoa(run)
	start := time.Now()
	info, err := c.Create(ctx, spec)
	s.CreateReturn = time.Since(start)
	if err != nil {
		s.Error = fmt.Sprintf("create %s: %v", spec.Name, err)
		return s
	}
	destroyed := false
	defer func() {
		if !destroyed {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = c.Destroy(dctx, spec.Name)
		}
	}()
	if err := waitMarker(ctx, c, info, cfg, start); err != nil {
		s.Error = fmt.Sprintf("%s: %v", spec.Name, err)
		return s
	}
	s.CreateInit = time.Since(start)
	if cfg.Resize || cfg.MemoryStep > 0 {
		if err := resize(ctx, c, cfg, spec, &s); err != nil {
			s.Error = fmt.Sprintf("%s: %v", spec.Name, err)
			return s
		}
	}

	start = time.Now()
	err = c.Destroy(ctx, spec.Name)
	s.DestroyReturn = time.Since(start)
	if err != nil {
		s.Error = fmt.Sprintf("destroy %s: %v", spec.Name, err)
		return s
	}
	destroyed = true
	if err := waitFree(ctx, c, info, cfg); err != nil {
		s.Error = fmt.Sprintf("destroy %s: %v", spec.Name, err)
		return s
	}
	s.Destroy = time.Since(start)
	return s
}

// resize waits for the subOS's agent, then times a resize from its n
// cores to n+1 (online) and back (offline), and one from its memory to
// cfg.MemoryStep more (online) and back (offline), as cfg asks.
func resize(ctx context.Context, c Client, cfg Config, spec supervisor.Spec, s *sample.Sample) error {
	name, n := spec.Name, max(spec.CPUs, len(spec.Cores))
	wctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	for {
		info, err := c.Get(wctx, name)
		if err == nil && info.Agent != nil && info.Agent.State == supervisor.AgentHealthy {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("agent not healthy after %v: %w", cfg.Timeout, wctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if cfg.Resize {
		start := time.Now()
		if _, err := c.ResizeCPUs(ctx, name, n+1); err != nil {
			return fmt.Errorf("cpu online: %w", err)
		}
		s.CPUOnline = time.Since(start)
		start = time.Now()
		if _, err := c.ResizeCPUs(ctx, name, n); err != nil {
			return fmt.Errorf("cpu offline: %w", err)
		}
		s.CPUOffline = time.Since(start)
	}
	if cfg.MemoryStep > 0 {
		start := time.Now()
		if _, err := c.ResizeMemory(ctx, name, spec.Memory+cfg.MemoryStep); err != nil {
			return fmt.Errorf("memory online: %w", err)
		}
		s.MemOnline = time.Since(start)
		start = time.Now()
		if _, err := c.ResizeMemory(ctx, name, spec.Memory); err != nil {
			return fmt.Errorf("memory offline: %w", err)
		}
		s.MemOffline = time.Since(start)
	}
	return nil
}

// livenessEvery is how many log polls pass between checks that the subOS
// still exists.
const livenessEvery = 50

// waitMarker polls the subOS's log (the file Info.Log names, or the API's
// log endpoint when the file cannot be read here) for the marker.
func waitMarker(ctx context.Context, c Client, info supervisor.Info, cfg Config, start time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, start.Add(cfg.Timeout))
	defer cancel()
	sc := NewMarkerScanner(info.Log, cfg.Marker)
	for i := 0; ; i++ {
		found, err := sc.Scan()
		if err != nil {
			found, err = logHasMarker(ctx, c, info.Name, cfg.Marker)
		}
		if found {
			return nil
		}
		if i%livenessEvery == livenessEvery-1 {
			list, lerr := c.List(ctx)
			if lerr == nil && !slices.ContainsFunc(list, func(in supervisor.Info) bool { return in.Name == info.Name }) {
				return fmt.Errorf("%w (log: %s)", ErrEnded, info.Log)
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("no %s in the log after %v (%v): %w", cfg.Marker, cfg.Timeout, err, ctx.Err())
			}
			return fmt.Errorf("no %s in the log after %v: %w", cfg.Marker, cfg.Timeout, ctx.Err())
		case <-time.After(cfg.Poll):
		}
	}
}

// logHasMarker fetches the whole log through the API.
func logHasMarker(ctx context.Context, c Client, name, marker string) (bool, error) {
	var b bytes.Buffer
	if err := c.Log(ctx, name, &b); err != nil {
		return false, err
	}
	return bytes.Contains(b.Bytes(), []byte(marker)), nil
}

// waitFree polls the ledger until no subOS has the name or a core of info.
func waitFree(ctx context.Context, c Client, info supervisor.Info, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	for {
		list, err := c.List(ctx)
		if err == nil && !Holds(list, info) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still in the ledger after %v (list: %v): %w", cfg.Timeout, err, ctx.Err())
		case <-time.After(cfg.Poll):
		}
	}
}

// Holds reports whether list has a subOS named like info or holding one
// of info's cores.
func Holds(list []supervisor.Info, info supervisor.Info) bool {
	for _, in := range list {
		if in.Name == info.Name {
			return true
		}
		for _, c := range in.Allocation.Cores {
			if slices.Contains(info.Allocation.Cores, c) {
				return true
			}
		}
	}
	return false
}

// MarkerScanner looks for a marker in a growing file, reading only what
// was appended since the last look.
type MarkerScanner struct {
	path   string
	marker []byte
	off    int64
	// carry is the end of the text read so far that may start a marker
	// completed by the next read.
	carry []byte
	found bool
}

// NewMarkerScanner returns a scanner of path for marker.
func NewMarkerScanner(path, marker string) *MarkerScanner {
	return &MarkerScanner{path: path, marker: []byte(marker)}
}

// scanChunk bounds one read.
const scanChunk = 64 << 10

// Scan reads what was appended since the last call and reports whether
// the marker has appeared. A file that is not there yet is not an error.
func (m *MarkerScanner) Scan() (bool, error) {
	if m.found {
		return true, nil
	}
	if len(m.marker) == 0 {
		return false, errors.New("empty marker")
	}
	f, err := os.Open(m.path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, scanChunk)
	for {
		n, err := f.ReadAt(buf, m.off)
		if n > 0 {
			m.off += int64(n)
			text := append(m.carry, buf[:n]...)
			if bytes.Contains(text, m.marker) {
				m.found = true
				return true, nil
			}
			keep := min(len(m.marker)-1, len(text))
			m.carry = append(m.carry[:0:0], text[len(text)-keep:]...)
		}
		if errors.Is(err, io.EOF) || (err == nil && n < len(buf)) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
}
