package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"rainforest/internal/procstat"
)

// BackendUsage is one virtiofsd's CPU time (user and system, its
// sandbox's processes included), in microseconds.
type BackendUsage struct {
	ID      string `json:"id"`
	Tag     string `json:"tag"`
	PID     int    `json:"pid"`
	CPUUsec uint64 `json:"cpu_usec"`
}

// shareBackends reads the CPU time of so's shares' virtiofsd processes
// (procRoot: "/proc"). Called under mu.
func shareBackends(so *subOS, procRoot string) []BackendUsage {
	var out []BackendUsage
	for _, sp := range so.info.Spec.Shares {
		b, ok := so.backends[sp.ID]
		if !ok || b.proc == nil || b.failed != "" {
			continue
		}
		out = append(out, BackendUsage{ID: sp.ID, Tag: sp.Tag, PID: b.proc.PID(), CPUUsec: processTreeCPUUsec(procRoot, b.proc.PID())})
	}
	return out
}

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
		total += processCPUTicks(procRoot, p) * (1e6 / procstat.UserHZ)
		todo = append(todo, childPIDs(procRoot, p)...)
	}
	return total
}

// processCPUTicks reads utime + stime of /proc/PID/stat.
func processCPUTicks(procRoot string, pid int) uint64 {
	b, err := os.ReadFile(filepath.Join(procRoot, fmt.Sprint(pid), "stat"))
	if err != nil {
		return 0
	}
	st, err := procstat.ParseTaskStat(b)
	if err != nil {
		return 0
	}
	return st.UTime + st.STime
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
