package qemu

import (
	"context"
	"encoding/json"
	"fmt"

	"golang.org/x/sys/unix"

	"rainforest/bench/internal/qemuguest"
)

// cpuInfo is one entry of query-cpus-fast.
type cpuInfo struct {
	QOMPath  string `json:"qom-path"`
	ThreadID int    `json:"thread-id"`
}

// pinVCPU pins the thread of vCPU CPUID to cores.
func pinVCPU(ctx context.Context, g *qemuguest.Guest, cores []int) error {
	raw, err := g.QMP.Execute(ctx, "query-cpus-fast", nil)
	if err != nil {
		return err
	}
	tid, err := vcpuThread(raw, "/machine/peripheral/"+CPUID)
	if err != nil {
		return err
	}
	var set unix.CPUSet
	for _, c := range cores {
		set.Set(c)
	}
	if err := unix.SchedSetaffinity(tid, &set); err != nil {
		return fmt.Errorf("pinning vCPU %s (thread %d) to cores %v: %w", CPUID, tid, cores, err)
	}
	return nil
}

// vcpuThread returns the thread of the vCPU at qomPath in a
// query-cpus-fast answer.
func vcpuThread(raw json.RawMessage, qomPath string) (int, error) {
	var cpus []cpuInfo
	if err := json.Unmarshal(raw, &cpus); err != nil {
		return 0, fmt.Errorf("query-cpus-fast: %w", err)
	}
	for _, c := range cpus {
		if c.QOMPath == qomPath && c.ThreadID > 0 {
			return c.ThreadID, nil
		}
	}
	return 0, fmt.Errorf("query-cpus-fast: no vCPU %s among %d", qomPath, len(cpus))
}
