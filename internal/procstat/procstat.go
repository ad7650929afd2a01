// Package procstat reads the guest's /proc for rf-agent's stats reports:
// per-CPU use from /proc/stat deltas, memory from /proc/meminfo, load from
// /proc/loadavg, pressure stall information from /proc/pressure, the
// process list, and the virtio-fs shares mounted, from /proc/mounts. The parsers are pure functions over io.Reader and fs.FS
// (an os.DirFS("/proc") in the agent, fixtures in tests).
package procstat

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"strconv"
	"strings"

	"rainforest/internal/agentproto"
)

// ErrFormat means a /proc file is not in the expected format.
var ErrFormat = errors.New("procstat: unexpected format")

// maxLine bounds a line read from /proc (the intr line of /proc/stat is
// long on big machines).
const maxLine = 1 << 20

func scanner(r io.Reader) *bufio.Scanner {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), maxLine)
	return s
}

// CPUTimes are one /proc/stat cpu line's counters (in USER_HZ ticks).
// CPU is -1 for the "cpu" line of all CPUs.
type CPUTimes struct {
	CPU                                                   int
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal uint64
}

// ParseStat returns the cpu lines of /proc/stat: the total first (CPU
// -1), then the online CPUs in the file's order.
func ParseStat(r io.Reader) ([]CPUTimes, error) {
	var out []CPUTimes
	s := scanner(r)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		t := CPUTimes{CPU: -1}
		if f[0] != "cpu" {
			n, err := strconv.Atoi(f[0][3:])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%w: /proc/stat line %q", ErrFormat, f[0])
			}
			t.CPU = n
		}
		// user nice system idle iowait irq softirq steal [guest guest_nice]:
		// guest time is already in user.
		if len(f) < 9 {
			return nil, fmt.Errorf("%w: /proc/stat %s has %d fields", ErrFormat, f[0], len(f)-1)
		}
		dst := []*uint64{&t.User, &t.Nice, &t.System, &t.Idle, &t.IOWait, &t.IRQ, &t.SoftIRQ, &t.Steal}
		for i, p := range dst {
			v, err := strconv.ParseUint(f[1+i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%w: /proc/stat %s: %v", ErrFormat, f[0], err)
			}
			*p = v
		}
		out = append(out, t)
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("procstat: /proc/stat: %w", err)
	}
	if len(out) == 0 || out[0].CPU != -1 {
		return nil, fmt.Errorf("%w: /proc/stat has no cpu line first", ErrFormat)
	}
	return out, nil
}

// Use returns the share of time (percent, rounded to 0.01) spent in each
// state between prev and cur (prev zero: since boot). A counter that went
// backwards counts as zero.
func Use(prev, cur CPUTimes) agentproto.CPUUse {
	d := func(a, b uint64) float64 {
		if b < a {
			return 0
		}
		return float64(b - a)
	}
	user := d(prev.User, cur.User) + d(prev.Nice, cur.Nice)
	sys := d(prev.System, cur.System) + d(prev.IRQ, cur.IRQ) + d(prev.SoftIRQ, cur.SoftIRQ)
	iowait := d(prev.IOWait, cur.IOWait)
	steal := d(prev.Steal, cur.Steal)
	idle := d(prev.Idle, cur.Idle)
	total := user + sys + iowait + steal + idle
	u := agentproto.CPUUse{Idle: 100}
	if cur.CPU >= 0 {
		u.CPU = uint32(cur.CPU)
	}
	if total == 0 {
		return u
	}
	pct := func(v float64) float64 { return math.Round(v/total*10000) / 100 }
	u.User, u.System, u.IOWait, u.Steal, u.Idle = pct(user), pct(sys), pct(iowait), pct(steal), pct(idle)
	return u
}

// ParseMeminfo reads /proc/meminfo. MemTotal is required; the other
// fields are zero where absent.
func ParseMeminfo(r io.Reader) (agentproto.Memory, error) {
	var m agentproto.Memory
	fields := map[string]*uint64{
		"MemTotal": &m.Total, "MemFree": &m.Free, "MemAvailable": &m.Available,
		"Buffers": &m.Buffers, "Cached": &m.Cached, "SwapTotal": &m.SwapTotal, "SwapFree": &m.SwapFree,
	}
	seenTotal := false
	s := scanner(r)
	for s.Scan() {
		name, rest, ok := strings.Cut(s.Text(), ":")
		p, known := fields[name]
		if !ok || !known {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 || len(f) > 2 || (len(f) == 2 && f[1] != "kB") {
			return m, fmt.Errorf("%w: /proc/meminfo %s: %q", ErrFormat, name, rest)
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || v > math.MaxUint64/1024 {
			return m, fmt.Errorf("%w: /proc/meminfo %s: %q", ErrFormat, name, rest)
		}
		*p = v * 1024
		seenTotal = seenTotal || name == "MemTotal"
	}
	if err := s.Err(); err != nil {
		return m, fmt.Errorf("procstat: /proc/meminfo: %w", err)
	}
	if !seenTotal {
		return m, fmt.Errorf("%w: /proc/meminfo has no MemTotal", ErrFormat)
	}
	return m, nil
}

// ParseLoadavg reads /proc/loadavg: "0.50 0.40 0.30 2/123 4567".
func ParseLoadavg(r io.Reader) (agentproto.Load, error) {
	var l agentproto.Load
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return l, fmt.Errorf("procstat: /proc/loadavg: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return l, fmt.Errorf("%w: /proc/loadavg: %q", ErrFormat, b)
	}
	for i, p := range []*float64{&l.Load1, &l.Load5, &l.Load15} {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil || !(v >= 0 && v <= agentproto.MaxLoad) {
			return l, fmt.Errorf("%w: /proc/loadavg: %q", ErrFormat, f[i])
		}
		*p = v
	}
	run, tasks, ok := strings.Cut(f[3], "/")
	r32, err1 := strconv.ParseUint(run, 10, 32)
	t32, err2 := strconv.ParseUint(tasks, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return l, fmt.Errorf("%w: /proc/loadavg: %q", ErrFormat, f[3])
	}
	l.Runnable, l.Tasks = uint32(r32), uint32(t32)
	return l, nil
}

// ParsePressure reads a /proc/pressure file: a "some" line and, on most
// resources, a "full" line.
func ParsePressure(r io.Reader) (*agentproto.Pressure, error) {
	p := &agentproto.Pressure{}
	seenSome := false
	s := scanner(r)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 0 {
			continue
		}
		var line agentproto.PressureLine
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("%w: pressure %q", ErrFormat, kv)
			}
			var dst *float64
			switch k {
			case "avg10":
				dst = &line.Avg10
			case "avg60":
				dst = &line.Avg60
			case "avg300":
				dst = &line.Avg300
			case "total":
				t, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("%w: pressure %q", ErrFormat, kv)
				}
				line.TotalUS = t
				continue
			default:
				continue
			}
			x, err := strconv.ParseFloat(v, 64)
			if err != nil || !(x >= 0 && x <= 100) {
				return nil, fmt.Errorf("%w: pressure %q", ErrFormat, kv)
			}
			*dst = x
		}
		switch f[0] {
		case "some":
			p.Some, seenSome = line, true
		case "full":
			l := line
			p.Full = &l
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("procstat: pressure: %w", err)
	}
	if !seenSome {
		return nil, fmt.Errorf("%w: pressure file without a some line", ErrFormat)
	}
	return p, nil
}

// Processes returns the PIDs in fsys (a /proc): its numeric entries.
func Processes(fsys fs.FS) ([]int, error) {
	ents, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("procstat: listing processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 && e.IsDir() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// ParsePPID returns the parent PID from a /proc/PID/stat line
// ("pid (comm) state ppid ..."; comm may hold spaces and parentheses).
func ParsePPID(stat []byte) (int, error) {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: pid stat %q", ErrFormat, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("%w: pid stat %q", ErrFormat, s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fmt.Errorf("%w: pid stat ppid %q", ErrFormat, f[1])
	}
	return ppid, nil
}

// Descendants returns the PIDs below pid in the process tree of fsys (a
// /proc), children before grandchildren. Processes that exit while it
// reads are skipped.
func Descendants(fsys fs.FS, pid int) ([]int, error) {
	pids, err := Processes(fsys)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, p := range pids {
		b, err := fs.ReadFile(fsys, strconv.Itoa(p)+"/stat")
		if err != nil {
			continue // gone
		}
		ppid, err := ParsePPID(b)
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	seen := map[int]bool{pid: true}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out, nil
}

// TaskStat is what the host reads of a process or thread from its
// /proc/PID/stat (or /proc/PID/task/TID/stat).
type TaskStat struct {
	Comm string
	// UTime and STime are the CPU time spent in user and kernel mode, in
	// clock ticks (USER_HZ, 100 a second on Linux).
	UTime, STime uint64
}

// UserHZ is Linux's clock tick rate for /proc times.
const UserHZ = 100

// ParseTaskStat parses a /proc/PID/stat line ("pid (comm) state ..."; the
// comm may hold spaces and parentheses).
func ParseTaskStat(stat []byte) (TaskStat, error) {
	s := string(stat)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i {
		return TaskStat{}, fmt.Errorf("%w: stat %q", ErrFormat, s)
	}
	f := strings.Fields(s[j+1:])
	// After the comm: state is field 3, utime 14 and stime 15.
	if len(f) < 13 {
		return TaskStat{}, fmt.Errorf("%w: stat %q", ErrFormat, s)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return TaskStat{}, fmt.Errorf("%w: stat times %q %q", ErrFormat, f[11], f[12])
	}
	return TaskStat{Comm: s[i+1 : j], UTime: u, STime: st}, nil
}

// ParseShareMounts lists the virtio-fs mounts of a /proc/mounts, at most
// agentproto.MaxShareMounts; one agentproto.CheckShareMount refuses (a
// mount point with spaces or non-ASCII, which the table escapes) is left
// out.
func ParseShareMounts(r io.Reader) ([]agentproto.ShareMount, error) {
	var out []agentproto.ShareMount
	sc := bufio.NewScanner(r)
	for sc.Scan() && len(out) < agentproto.MaxShareMounts {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[2] != "virtiofs" {
			continue
		}
		m := agentproto.ShareMount{Tag: f[0], Dir: f[1]}
		if agentproto.CheckShareMount(m) == "" && !strings.Contains(m.Dir, `\`) {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}
