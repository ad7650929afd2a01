// Package shquote quotes words for sh, for the scripts and command lines
// that RainForest's tests, benchmarks and nested runs write.
package shquote

import "strings"

// Join quotes each argument with Quote and joins them with spaces: a
// command line for sh.
func Join(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// Quote quotes s for sh (in single quotes) unless it consists of safe
// characters only.
func Quote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,+@%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
