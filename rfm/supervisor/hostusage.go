package supervisor

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"rainforest/internal/procstat"
)

// HostUsage is the CPU time the host charges a subOS: that of every
// process in its cgroup, the way the paper accounts split-driver back
// ends to the subOS they serve. The VMM's vCPU threads run the guest; its
// other threads are its device back ends (virtio-net's frames, virtio-blk
// I/O, vsock; the kernel's vhost-net worker, a thread of the VMM) and its
// control; other processes in the cgroup are back
// ends of their own, such as virtiofsd.
type HostUsage struct {
	// VCPUSeconds is the CPU time of the VMM's vCPU threads.
	VCPUSeconds float64 `json:"vcpu_seconds"`
	// BackendSeconds is that of the VMM's other threads.
	BackendSeconds float64 `json:"backend_seconds"`
	// VhostSeconds is the part of BackendSeconds spent by the kernel's
	// vhost-net workers for the VMM's NICs, named vhost-TID (TID the VMM
	// thread that took the device): on Linux 6.4 and later threads of
	// the VMM, before kernel threads the kernel puts in the VMM's
	// cgroups.
	VhostSeconds float64 `json:"vhost_seconds,omitempty"`
	// OtherSeconds is that of the other processes in the cgroup.
	OtherSeconds float64 `json:"other_seconds"`
	// Processes are the processes in the cgroup.
	Processes []HostProcess `json:"processes"`
	// Backends are its shares' virtiofsd processes (their sandboxes'
	// children included).
	Backends []BackendUsage `json:"backends,omitempty"`
	// NICs are its NICs' frame counters, as its VMM counts them.
	NICs []NICCounters `json:"nics,omitempty"`
}

// NICCounters are one NIC's frame counters by name (tx_packets,
// tx_dropped, tx_spoofed_mac, ..., a loop member's backend's prefixed
// loop_: loop_tx_spoofed_ip, ...), the zero ones left out.
type NICCounters struct {
	ID       string            `json:"id"`
	Counters map[string]uint64 `json:"counters"`
}

// HostProcess is one process of a subOS's cgroup.
type HostProcess struct {
	PID        int     `json:"pid"`
	Comm       string  `json:"comm"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// maxCgroupProcs bounds the processes hostUsage reads.
const maxCgroupProcs = 4096

// hostUsage reads the CPU time of the processes in cgroup dir (its
// cgroup.procs) from proc (a /proc), the VMM's (vmmPID) by thread.
func hostUsage(proc fs.FS, dir string, vmmPID int) (*HostUsage, error) {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("host usage: %w", err)
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(pids) < maxCgroupProcs {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("host usage: %w", err)
	}
	slices.Sort(pids)
	u := &HostUsage{Processes: []HostProcess{}}
	seconds := func(st procstat.TaskStat) float64 { return float64(st.UTime+st.STime) / procstat.UserHZ }
	for _, pid := range pids {
		b, err := fs.ReadFile(proc, strconv.Itoa(pid)+"/stat")
		if err != nil {
			continue // gone
		}
		st, err := procstat.ParseTaskStat(b)
		if err != nil {
			continue
		}
		u.Processes = append(u.Processes, HostProcess{PID: pid, Comm: st.Comm, CPUSeconds: seconds(st)})
		if pid != vmmPID && isVhostWorker(st.Comm) {
			// Before Linux 6.4 the VMM's vhost-net worker is a kernel
			// thread of its own, put in the VMM's cgroup.
			u.VhostSeconds += seconds(st)
			u.BackendSeconds += seconds(st)
			continue
		}
		if pid != vmmPID {
			u.OtherSeconds += seconds(st)
			continue
		}
		tasks, err := fs.ReadDir(proc, strconv.Itoa(pid)+"/task")
		if err != nil {
			u.BackendSeconds += seconds(st)
			continue
		}
		for _, t := range tasks {
			b, err := fs.ReadFile(proc, strconv.Itoa(pid)+"/task/"+t.Name()+"/stat")
			if err != nil {
				continue
			}
			ts, err := procstat.ParseTaskStat(b)
			if err != nil {
				continue
			}
			switch {
			case strings.HasPrefix(ts.Comm, "vcpu"):
				u.VCPUSeconds += seconds(ts)
			case isVhostWorker(ts.Comm):
				u.VhostSeconds += seconds(ts)
				u.BackendSeconds += seconds(ts)
			default:
				u.BackendSeconds += seconds(ts)
			}
		}
	}
	return u, nil
}

// isVhostWorker says whether a task of a subOS's cgroup is the kernel's
// vhost worker for its VMM: named vhost-TID, TID the VMM thread that took
// the device (nothing else in the cgroup is named so: the guest names no
// host task).
func isVhostWorker(comm string) bool {
	n, ok := strings.CutPrefix(comm, "vhost-")
	if !ok || n == "" {
		return false
	}
	_, err := strconv.Atoi(n)
	return err == nil
}
