package benchkit

import (
	"math"
	"slices"
)

// Stats are the median, minimum and maximum of N values.
type Stats struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// StatsOf computes Stats without reordering v; the median of an even
// count is the mean of the two middle values. Empty input gives the zero
// Stats.
func StatsOf(v []float64) Stats {
	if len(v) == 0 {
		return Stats{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stats{N: len(s), Median: m, Min: s[0], Max: s[len(s)-1]}
}

// Percentile returns the p-th percentile (0 < p <= 100) of v by the
// nearest-rank method: the smallest value with at least p% of the values
// at or below it (for p99 of fewer than 100 values, the maximum). It does
// not reorder v; empty input gives 0.
func Percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}
