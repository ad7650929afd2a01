// Package hostcpu reads the host's CPU list and NUMA placement from sysfs
// and parses Linux CPU list strings ("0-3,8,10-11").
package hostcpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrBadCPU is returned for cores that are offline, duplicated or absent.
var ErrBadCPU = errors.New("bad host core")

// ParseList parses a CPU list such as "0-3,8". The result is sorted and
// rejects duplicates.
func ParseList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	seen := map[int]bool{}
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("cpu list %q: bad number %q", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		if b-a > 1<<16 {
			return nil, fmt.Errorf("cpu list %q: range %q too large", s, part)
		}
		for c := a; c <= b; c++ {
			if seen[c] {
				return nil, fmt.Errorf("%w: core %d listed twice in %q", ErrBadCPU, c, s)
			}
			seen[c] = true
			out = append(out, c)
		}
	}
	sort.Ints(out)
	return out, nil
}

// FormatList formats cores as a compact CPU list.
func FormatList(cpus []int) string {
	c := append([]int(nil), cpus...)
	sort.Ints(c)
	var parts []string
	for i := 0; i < len(c); {
		j := i
		for j+1 < len(c) && c[j+1] == c[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(c[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c[i], c[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

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
	return ParseList(string(b))
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
			return 0, fmt.Errorf("%w: core %d is not online (online: %s)", ErrBadCPU, c, FormatList(online))
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
