package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HostUsage is what the host spends on a subOS, as `rfm stats` shows it
// beside its agent's report.
type HostUsage struct {
	// CgroupCPUUsec is the CPU time of everything in the subOS's cgroup,
	// in microseconds: its VMM (vCPUs included) and its shares'
	// virtiofsd (cgroup v2's cpu.stat; absent where unreadable).
	CgroupCPUUsec *uint64 `json:"cgroup_cpu_usec,omitempty"`
	// Backends are its shares' virtiofsd processes.
	Backends []BackendUsage `json:"backends,omitempty"`
}

// BackendUsage is one virtiofsd's CPU time (user and system, its
// sandbox's processes included), in microseconds.
type BackendUsage struct {
	ID      string `json:"id"`
	Tag     string `json:"tag"`
	PID     int    `json:"pid"`
	CPUUsec uint64 `json:"cpu_usec"`
}

// hostUsage reads so's host usage (procRoot: "/proc").
func hostUsage(so *subOS, procRoot string) *HostUsage {
	u := &HostUsage{}
	if n, ok := cgroupCPUUsec(so.info.Cgroup); ok {
		u.CgroupCPUUsec = &n
	}
	for _, sp := range so.info.Spec.Shares {
		b, ok := so.backends[sp.ID]
		if !ok || b.proc == nil || b.failed != "" {
			continue
		}
		u.Backends = append(u.Backends, BackendUsage{ID: sp.ID, Tag: sp.Tag, PID: b.proc.PID(), CPUUsec: processTreeCPUUsec(procRoot, b.proc.PID())})
	}
	if u.CgroupCPUUsec == nil && len(u.Backends) == 0 {
		return nil
	}
	return u
}

// cgroupCPUUsec reads usage_usec from dir's cpu.stat (cgroup v2).
func cgroupCPUUsec(dir string) (uint64, bool) {
	if dir == "" {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			var n uint64
			if _, err := fmt.Sscan(v, &n); err == nil {
				return n, true
			}
		}
	}
	return 0, false
}

// userHZ is the unit of /proc/PID/stat's times (USER_HZ, 100 on every
// architecture Linux runs KVM guests on).
const userHZ = 100

// processTreeCPUUsec is the user and system time of process pid and its
// descendants (virtiofsd's namespace sandbox serves from a child), from
// /proc.
func processTreeCPUUsec(procRoot string, pid int) uint64 {
	var total uint64
	seen := map[int]bool{}
	todo := []int{pid}
	for len(todo) > 0 && len(seen) < 64 {
		p := todo[0]
		todo = todo[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		total += processCPUTicks(procRoot, p) * (1e6 / userHZ)
		todo = append(todo, childPIDs(procRoot, p)...)
	}
	return total
}

// processCPUTicks reads utime + stime (fields 14 and 15) of
// /proc/PID/stat.
func processCPUTicks(procRoot string, pid int) uint64 {
	b, err := os.ReadFile(filepath.Join(procRoot, fmt.Sprint(pid), "stat"))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st uint64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return ut + st
}

// childPIDs lists pid's children (/proc/PID/task/*/children).
func childPIDs(procRoot string, pid int) []int {
	tasks, _ := filepath.Glob(filepath.Join(procRoot, fmt.Sprint(pid), "task", "*", "children"))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			var c int
			if _, err := fmt.Sscan(f, &c); err == nil && c > 0 {
				out = append(out, c)
			}
		}
	}
	return out
}
