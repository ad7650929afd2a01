package actuator

import (
	"fmt"
	"sort"

	"rainforest/internal/units"
)

// parseList parses a kernel CPU or node list such as "0-3,8,10-11" (the
// format of cpuset.cpus, cpuset.mems, smp_affinity_list and
// /sys/devices/system/cpu/online); the empty string is the empty list.
// Its errors match both ErrInvalid and units.ErrCPUList.
func parseList(s string) ([]int, error) {
	l, err := units.ParseCPUList(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return l, nil
}

// normalize returns a sorted copy of ids without duplicates.
func normalize(ids []int) []int {
	out := append([]int(nil), ids...)
	sort.Ints(out)
	n := 0
	for i, v := range out {
		if i == 0 || v != out[n-1] {
			out[n] = v
			n++
		}
	}
	return out[:n]
}

// union returns the sorted union of a and b.
func union(a, b []int) []int { return normalize(append(append([]int(nil), a...), b...)) }

// minus returns the sorted elements of a that are not in b.
func minus(a, b []int) []int {
	drop := map[int]bool{}
	for _, v := range b {
		drop[v] = true
	}
	var out []int
	for _, v := range normalize(a) {
		if !drop[v] {
			out = append(out, v)
		}
	}
	return out
}

// containsAll reports whether every element of b is in a.
func containsAll(a, b []int) bool { return len(minus(b, a)) == 0 }

// equalLists reports whether a and b hold the same set.
func equalLists(a, b []int) bool {
	return containsAll(a, b) && containsAll(b, a)
}
