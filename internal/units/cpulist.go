package units

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// ErrCPUList means a CPU list could not be parsed.
var ErrCPUList = errors.New("invalid CPU list")

// MaxCPU is the largest CPU (or node) number a CPU list may hold: Linux
// supports at most 8192 CPUs.
const MaxCPU = 8191

// cpuSet is a bitmap of the CPUs 0..MaxCPU.
type cpuSet [(MaxCPU + 64) / 64]uint64

// ParseCPUList parses a CPU list such as "0-3,8-11" (see the package
// documentation for the rules). The result is sorted; the empty list
// (an empty or all-blank string) is nil.
func ParseCPUList(s string) ([]int, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return nil, nil
	}
	var set cpuSet
	count := 0
	for _, entry := range strings.Split(t, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("%w %q: empty entry (a comma too many?)", ErrCPUList, s)
		}
		lo, hi, isRange := strings.Cut(entry, "-")
		first, err := cpuNumber(s, entry, lo)
		if err != nil {
			return nil, err
		}
		last := first
		if isRange {
			if last, err = cpuNumber(s, entry, hi); err != nil {
				return nil, err
			}
			if last < first {
				return nil, fmt.Errorf("%w %q: range %d-%d runs backwards (write %d-%d)", ErrCPUList, s, first, last, last, first)
			}
		}
		for c := first; c <= last; c++ {
			word, bit := c/64, uint64(1)<<(c%64)
			if set[word]&bit != 0 {
				return nil, fmt.Errorf("%w %q: CPU %d is listed twice", ErrCPUList, s, c)
			}
			set[word] |= bit
		}
		count += last - first + 1
	}
	out := make([]int, 0, count)
	for word, w := range set {
		for w != 0 {
			out = append(out, word*64+bits.TrailingZeros64(w))
			w &= w - 1
		}
	}
	return out, nil
}

// cpuNumber parses one bound of entry in list s.
func cpuNumber(s, entry, text string) (int, error) {
	text = strings.TrimSpace(text)
	if text == "" || strings.Trim(text, "0123456789") != "" {
		return 0, fmt.Errorf("%w %q: %q is not a CPU number or a range like 2-5", ErrCPUList, s, entry)
	}
	n, err := strconv.Atoi(text)
	if err != nil || n > MaxCPU {
		return 0, fmt.Errorf("%w %q: CPU %s is out of range (0 to %d)", ErrCPUList, s, text, MaxCPU)
	}
	return n, nil
}

// FormatCPUList writes cpus as a CPU list, the inverse of ParseCPUList:
// sorted, each CPU once, runs of consecutive CPUs as ranges ("0-3,8").
// cpus need not be sorted. nil and the empty slice give "".
func FormatCPUList(cpus []int) string {
	sorted := slices.Clone(cpus)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
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
