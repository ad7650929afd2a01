package benchkit

import "testing"

func TestStatsOf(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want Stats
	}{
		{nil, Stats{}},
		{[]float64{5}, Stats{N: 1, Median: 5, Min: 5, Max: 5}},
		{[]float64{3, 1, 2}, Stats{N: 3, Median: 2, Min: 1, Max: 3}},
		{[]float64{4, 1, 3, 2}, Stats{N: 4, Median: 2.5, Min: 1, Max: 4}},
	} {
		if got := StatsOf(c.in); got != c.want {
			t.Errorf("StatsOf(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	StatsOf(in)
	if in[0] != 3 {
		t.Error("StatsOf reordered its input")
	}
}
