// Package hostcpu reads the host's CPU list and NUMA placement from sysfs
// and checks the cores a VMM is given (CPU list strings are parsed by
// internal/units).
package hostcpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"rainforest/internal/units"
)

// ErrBadCPU is returned for cores that are offline, duplicated or absent.
var ErrBadCPU = errors.New("bad host core")

// Topology reads CPU facts from a sysfs root (normally "/sys").
type Topology struct {
	Root string
}

// Online returns the online cores.
func (t Topology) Online() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(t.root(), "devices/system/cpu/online"))
	if err != nil {
		return nil, fmt.Errorf("read online cpus: %w", err)
	}
	online, err := units.ParseCPUList(string(b))
	if err != nil {
		return nil, fmt.Errorf("online cpus: %w", err)
	}
	return online, nil
}

// Node returns the NUMA node of core cpu (0 when the host has no NUMA info).
func (t Topology) Node(cpu int) int {
	m, _ := filepath.Glob(filepath.Join(t.root(), fmt.Sprintf("devices/system/cpu/cpu%d/node*", cpu)))
	for _, p := range m {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "node")); err == nil {
			return n
		}
	}
	return 0
}

// Check verifies that cpus are distinct online cores and returns their
// common NUMA node, or -1 when they span several nodes.
func (t Topology) Check(cpus []int) (node int, err error) {
	if len(cpus) == 0 {
		return 0, fmt.Errorf("%w: no cores given", ErrBadCPU)
	}
	online, err := t.Online()
	if err != nil {
		return 0, err
	}
	on := map[int]bool{}
	for _, c := range online {
		on[c] = true
	}
	seen := map[int]bool{}
	node = -2
	for _, c := range cpus {
		if seen[c] {
			return 0, fmt.Errorf("%w: core %d given twice", ErrBadCPU, c)
		}
		seen[c] = true
		if !on[c] {
			return 0, fmt.Errorf("%w: core %d is not online (online: %s)", ErrBadCPU, c, units.FormatCPUList(online))
		}
		n := t.Node(c)
		switch {
		case node == -2:
			node = n
		case node != n:
			node = -1
		}
	}
	return node, nil
}

func (t Topology) root() string {
	if t.Root == "" {
		return "/sys"
	}
	return t.Root
}
