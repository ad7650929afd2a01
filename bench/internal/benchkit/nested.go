package benchkit

import "rainforest/internal/nested"

// Values of the benchmarks' -nested flag; any other value (such as
// "auto") lets nested.Needed decide.
const (
	NestedAlways = "always"
	NestedNever  = "never"
)

// NeedNested decides from a -nested flag value whether to measure inside
// the nested layer, and says why.
func NeedNested(mode string) (need bool, why string) {
	switch mode {
	case NestedAlways:
		return true, "nested mode forced (-nested always)"
	case NestedNever:
		return false, "nested mode off (-nested never)"
	}
	return nested.Needed()
}
