package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
)

func statLine(pid int, comm string, utime, stime int) string {
	return fmt.Sprintf("%d (%s) S 1 1 1 0 -1 0 0 0 0 0 %d %d 0 0 20 0 1 0 100 0 0\n", pid, comm, utime, stime)
}

// The VMM's vCPU threads, its other threads (device back ends) and the
// other processes of the cgroup (virtiofsd) are told apart.
func TestHostUsage(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("700\n500\n999\n800\n"), 0o644)
	proc := fstest.MapFS{
		"500/stat":          {Data: []byte(statLine(500, "rfm", 300, 100))},
		"500/task/500/stat": {Data: []byte(statLine(500, "rfm", 10, 10))},
		"500/task/501/stat": {Data: []byte(statLine(501, "vcpu0", 200, 50))},
		"500/task/502/stat": {Data: []byte(statLine(502, "vcpu1", 50, 0))},
		"500/task/503/stat": {Data: []byte(statLine(503, "rfm", 40, 40))},
		"500/task/504/stat": {Data: []byte(statLine(504, "vhost-503", 20, 30))}, // the kernel's vhost-net worker (Linux 6.4+), named after the thread that took the device
		"700/stat":          {Data: []byte(statLine(700, "virtiofsd", 30, 20))},
		"800/stat":          {Data: []byte(statLine(800, "vhost-501", 100, 0))}, // its worker before Linux 6.4, a kernel thread
		// 999 is gone.
	}
	u, err := hostUsage(proc, dir, 500)
	if err != nil {
		t.Fatal(err)
	}
	if u.VCPUSeconds != 3 || u.BackendSeconds != 2.5 || u.VhostSeconds != 1.5 || u.OtherSeconds != 0.5 {
		t.Errorf("usage %+v, want vCPUs 3s, back ends 2.5s of which vhost 1.5s, others 0.5s", u)
	}
	if len(u.Processes) != 3 || u.Processes[0].PID != 500 || u.Processes[1].Comm != "virtiofsd" || u.Processes[1].CPUSeconds != 0.5 {
		t.Errorf("processes %+v", u.Processes)
	}
	if _, err := hostUsage(proc, filepath.Join(dir, "nope"), 500); err == nil {
		t.Error("a cgroup without cgroup.procs gave usage")
	}
}
