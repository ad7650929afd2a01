package actuator

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// parseList parses a kernel CPU/node list such as "0-3,8,10-11" (the format
// of cpuset.cpus, smp_affinity_list and /sys/devices/system/cpu/online).
// The empty string is the empty list. The result is sorted and deduplicated.
func parseList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	seen := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil || first < 0 {
			return nil, fmt.Errorf("%w: bad list element %q in %q", ErrInvalid, part, s)
		}
		last := first
		if isRange {
			last, err = strconv.Atoi(hi)
			if err != nil || last < first {
				return nil, fmt.Errorf("%w: bad list range %q in %q", ErrInvalid, part, s)
			}
		}
		if last-first > 1<<16 {
			return nil, fmt.Errorf("%w: list range %q too large", ErrInvalid, part)
		}
		for i := first; i <= last; i++ {
			seen[i] = true
		}
	}
	out := make([]int, 0, len(seen))
	for i := range seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out, nil
}

// formatList formats ids in the kernel list format, collapsing runs into
// ranges. ids need not be sorted; duplicates are dropped.
func formatList(ids []int) string {
	sorted := normalize(ids)
	var b strings.Builder
	for i := 0; i < len(sorted); {
		j := i
		for j+1 < len(sorted) && sorted[j+1] == sorted[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(sorted[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(sorted[j]))
		}
		i = j + 1
	}
	return b.String()
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
