package benchkit

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
)

var errBadTestLine = errors.New("bad test line")

// parseTestLine parses "R n=<int>" lines.
func parseTestLine(line string) (int, bool, error) {
	fields, ok, err := LineFields(line, "R", errBadTestLine)
	if !ok || err != nil {
		return 0, ok, err
	}
	if len(fields) != 1 || fields[0].Key != "n" {
		return 0, true, fmt.Errorf("%w: %q", errBadTestLine, line)
	}
	n, err := strconv.Atoi(fields[0].Value)
	if err != nil {
		return 0, true, fmt.Errorf("%w: %v", errBadTestLine, err)
	}
	return n, true, nil
}

// TestCollectorStreams feeds a session's lines one by one, as
// kvmhost.Script.Lines would, and checks that each result is reported when
// its line arrives and that the results so far are there when the
// session dies half-way.
func TestCollectorStreams(t *testing.T) {
	var progress []string
	c := &Collector[int]{Parse: parseTestLine, Progress: func(r, n int) { progress = append(progress, fmt.Sprintf("%d:%d", n, r)) }}
	stream := []string{"boot noise", "R n=10", "R n=x", "other", "R n=20", "R k=1"}
	for i, line := range stream {
		c.Line(line)
		switch i {
		case 1:
			if !slices.Equal(progress, []string{"1:10"}) {
				t.Fatalf("after the first result line: progress %q", progress)
			}
		case 3:
			if len(progress) != 1 {
				t.Fatalf("progress %q after a bad line and noise", progress)
			}
		}
	}
	// The session ends here, early or not: what arrived is kept.
	results, errs := c.Results()
	if !slices.Equal(results, []int{10, 20}) || len(errs) != 2 || !errors.Is(errs[0], errBadTestLine) {
		t.Errorf("results %v, errs %v", results, errs)
	}
	if !slices.Equal(progress, []string{"1:10", "2:20"}) {
		t.Errorf("progress %q", progress)
	}
}
