// Package wakeups counts how often the threads of a process wake up while
// it should be idle. A thread's wake-ups are its context switches
// (voluntary_ctxt_switches + nonvoluntary_ctxt_switches in
// /proc/PID/task/TID/status): a sleeping thread that wakes and sleeps
// again switches out once. Snapshot reads every thread's counts and name
// (comm) at the two ends of a window; Compare turns them into per-thread
// counts, marking vCPU threads (IsVCPU) apart from the VMM's own. What
// each thread is blocked in while the window runs (its kernel wait channel
// and system call, BlockedIn) tells which one wakes and why.
package wakeups

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors.
var (
	// ErrNoThreads means a process had no readable threads (it is gone).
	ErrNoThreads = errors.New("wakeups: no threads")
	// ErrExited means the process exited before the window ended.
	ErrExited = errors.New("wakeups: the process exited during the window")
)

// Thread is one thread's context switch counts at one moment.
type Thread struct {
	TID  int
	Name string
	// State is the State letter of its status ('S', 'R', 'Z', ...).
	State        byte
	Voluntary    uint64
	Nonvoluntary uint64
}

// IsVCPU reports whether a thread name is a vCPU thread's: rfm vmm names
// them "vcpu0", "vcpu1", ...; QEMU "CPU 0/KVM", ...
func IsVCPU(name string) bool {
	if n, ok := strings.CutPrefix(name, "vcpu"); ok {
		return isDigits(n)
	}
	if n, ok := strings.CutPrefix(name, "CPU "); ok {
		n, ok = strings.CutSuffix(n, "/KVM")
		return ok && isDigits(n)
	}
	return false
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// Snapshot reads the threads of process pid under procRoot ("/proc"),
// ordered by thread id. Threads that end while it reads are skipped.
func Snapshot(procRoot string, pid int) ([]Thread, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wakeups: %w", err)
	}
	var out []Thread
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err != nil {
			continue // ended meanwhile
		}
		comm, err := os.ReadFile(filepath.Join(dir, e.Name(), "comm"))
		if err != nil {
			continue
		}
		t, err := parseStatus(status)
		if err != nil {
			return nil, fmt.Errorf("wakeups: thread %d: %w", tid, err)
		}
		t.TID, t.Name = tid, strings.TrimRight(string(comm), "\n")
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w in %s", ErrNoThreads, dir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TID < out[j].TID })
	return out, nil
}

// parseStatus reads the context switch counts of a status file; both
// lines are required.
func parseStatus(text []byte) (Thread, error) {
	var t Thread
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "State":
			if v := strings.TrimSpace(val); v != "" {
				t.State = v[0]
			}
			continue
		case "voluntary_ctxt_switches":
			dst = &t.Voluntary
		case "nonvoluntary_ctxt_switches":
			dst = &t.Nonvoluntary
		default:
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return Thread{}, fmt.Errorf("%s: %w", key, err)
		}
		*dst = n
		found++
	}
	if found != 2 {
		return Thread{}, errors.New("no voluntary_ctxt_switches and nonvoluntary_ctxt_switches lines")
	}
	return t, nil
}

// Watch counts the context switches of process pid's threads (under
// procRoot, "/proc") over a window of about window, noting every interval
// what each thread is blocked in (BlockedIn, Count.BlockedIn; also when it
// opens). A thread
// is a vCPU thread when its name says so (IsVCPU) or it was seen in the
// KVM_RUN ioctl (vCPU threads that have no name of their own). It returns
// ErrExited when the process ends (or becomes a zombie) before the window
// does, and ctx's error when ctx ends first.
func Watch(ctx context.Context, procRoot string, pid int, window, every time.Duration) (Window, error) {
	before, err := Snapshot(procRoot, pid)
	start := time.Now()
	if gone(err) || err == nil && exited(before, pid) {
		return Window{}, ErrExited
	}
	if err != nil {
		return Window{}, err
	}
	blocked := map[int]map[string]int{}
	noteBlocked(procRoot, pid, blocked) // at least once, however slow the ticker
	end := time.NewTimer(window)
	defer end.Stop()
	tick := time.NewTicker(max(every, time.Millisecond))
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return Window{}, fmt.Errorf("wakeups: %w", ctx.Err())
		case <-end.C:
			done = true
		case <-tick.C:
			noteBlocked(procRoot, pid, blocked)
		}
	}
	after, err := Snapshot(procRoot, pid)
	d := time.Since(start)
	if gone(err) || err == nil && exited(after, pid) {
		return Window{}, ErrExited
	}
	if err != nil {
		return Window{}, err
	}
	w := Compare(before, after, d)
	for i := range w.Threads {
		c := &w.Threads[i]
		c.BlockedIn = blocked[c.TID]
		for state := range c.BlockedIn {
			if strings.HasPrefix(state, kvmRunState) {
				c.VCPU = true // an unnamed vCPU thread (QEMU without debug-threads)
			}
		}
	}
	return w, nil
}

// gone reports whether a Snapshot error says the process is gone.
func gone(err error) bool { return errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrNoThreads) }

// exited reports whether the leader of threads (pid) is a zombie or dead.
func exited(threads []Thread, pid int) bool {
	for _, t := range threads {
		if t.TID == pid {
			return t.State == 'Z' || t.State == 'X'
		}
	}
	return true
}

// noteBlocked adds what each thread of pid is blocked in now to blocked
// (by thread id, then state).
func noteBlocked(procRoot string, pid int, blocked map[int]map[string]int) {
	ents, err := os.ReadDir(filepath.Join(procRoot, strconv.Itoa(pid), "task"))
	if err != nil {
		return
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, err := BlockedIn(procRoot, pid, tid)
		if err != nil {
			continue // ended meanwhile
		}
		if blocked[tid] == nil {
			blocked[tid] = map[string]int{}
		}
		blocked[tid][state]++
	}
}

// kvmRunState starts what BlockedIn says of a thread in KVM_RUN.
const kvmRunState = "ioctl KVM_RUN"

// Count is one thread's context switches over a window.
type Count struct {
	TID  int    `json:"tid"`
	Name string `json:"name"`
	// VCPU marks a vCPU thread (IsVCPU, or seen in KVM_RUN by Watch).
	VCPU         bool   `json:"vcpu,omitempty"`
	Voluntary    uint64 `json:"voluntary"`
	Nonvoluntary uint64 `json:"nonvoluntary"`
	// Started and Ended mark a thread that appeared or went during the
	// window (its counts are from its start, or up to the last snapshot
	// that had it: none).
	Started bool `json:"started,omitempty"`
	Ended   bool `json:"ended,omitempty"`
	// BlockedIn counts what the thread was seen blocked in while the
	// window ran (BlockedIn's strings), e.g. {"futex timed": 9,
	// "running": 1}.
	BlockedIn map[string]int `json:"blocked_in,omitempty"`
}

// Wakeups is the thread's context switches, voluntary and not.
func (c Count) Wakeups() uint64 { return c.Voluntary + c.Nonvoluntary }

// Window is the context switches of a process's threads over a window.
type Window struct {
	Duration time.Duration `json:"window_ns"`
	Threads  []Count       `json:"threads"`
}

// Compare gives each thread's switches between two snapshots taken d
// apart, in thread id order.
func Compare(before, after []Thread, d time.Duration) Window {
	w := Window{Duration: d}
	was := map[int]Thread{}
	for _, t := range before {
		was[t.TID] = t
	}
	seen := map[int]bool{}
	for _, t := range after {
		seen[t.TID] = true
		c := Count{TID: t.TID, Name: t.Name, VCPU: IsVCPU(t.Name), Voluntary: t.Voluntary, Nonvoluntary: t.Nonvoluntary}
		if b, ok := was[t.TID]; ok {
			c.Voluntary -= min(b.Voluntary, t.Voluntary)
			c.Nonvoluntary -= min(b.Nonvoluntary, t.Nonvoluntary)
		} else {
			c.Started = true
		}
		w.Threads = append(w.Threads, c)
	}
	for _, t := range before {
		if !seen[t.TID] {
			w.Threads = append(w.Threads, Count{TID: t.TID, Name: t.Name, VCPU: IsVCPU(t.Name), Ended: true})
		}
	}
	sort.Slice(w.Threads, func(i, j int) bool { return w.Threads[i].TID < w.Threads[j].TID })
	return w
}

// Total returns the wake-ups of the vCPU threads (vcpu true) or of the
// other threads (false) over the window.
func (w Window) Total(vcpu bool) uint64 {
	var n uint64
	for _, c := range w.Threads {
		if c.VCPU == vcpu {
			n += c.Wakeups()
		}
	}
	return n
}

// PerSecond returns Total(vcpu) per second of the window (0 for an
// empty window).
func (w Window) PerSecond(vcpu bool) float64 {
	if w.Duration <= 0 {
		return 0
	}
	return float64(w.Total(vcpu)) / w.Duration.Seconds()
}

// Rate returns c's wake-ups per second of the window.
func (w Window) Rate(c Count) float64 {
	if w.Duration <= 0 {
		return 0
	}
	return float64(c.Wakeups()) / w.Duration.Seconds()
}

// Waking returns the threads that woke, vCPU threads or the others, the
// most frequent first.
func (w Window) Waking(vcpu bool) []Count {
	var out []Count
	for _, c := range w.Threads {
		if c.VCPU == vcpu && c.Wakeups() > 0 {
			out = append(out, c)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Wakeups() > out[j].Wakeups() })
	return out
}

// Describe says what a thread was blocked in, the most frequent state
// first: "futex timed 9/10, running 1/10".
func (c Count) Describe() string {
	total := 0
	states := make([]string, 0, len(c.BlockedIn))
	for s, n := range c.BlockedIn {
		total += n
		states = append(states, s)
	}
	sort.Slice(states, func(i, j int) bool {
		if c.BlockedIn[states[i]] != c.BlockedIn[states[j]] {
			return c.BlockedIn[states[i]] > c.BlockedIn[states[j]]
		}
		return states[i] < states[j]
	})
	parts := make([]string, len(states))
	for i, s := range states {
		parts[i] = fmt.Sprintf("%s %d/%d", s, c.BlockedIn[s], total)
	}
	return strings.Join(parts, ", ")
}
