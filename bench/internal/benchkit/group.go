package benchkit

import "slices"

// SampleGroup is the samples of one name (a VMM, a system): the
// successful ones in the order they came, and how many failed.
type SampleGroup[S any] struct {
	Name   string
	OK     []S
	Failed int
}

// GroupSamples groups samples by name(s): first the groups of names, in
// that order (empty where no sample has the name), then those of the
// names not listed, in order of first appearance. A sample for which ok
// is false is counted in Failed and not kept.
func GroupSamples[S any](samples []S, name func(S) string, ok func(S) bool, names ...string) []SampleGroup[S] {
	order := slices.Clone(names)
	for _, s := range samples {
		if !slices.Contains(order, name(s)) {
			order = append(order, name(s))
		}
	}
	groups := make([]SampleGroup[S], 0, len(order))
	for _, n := range order {
		g := SampleGroup[S]{Name: n}
		for _, s := range samples {
			switch {
			case name(s) != n:
			case ok(s):
				g.OK = append(g.OK, s)
			default:
				g.Failed++
			}
		}
		groups = append(groups, g)
	}
	return groups
}
