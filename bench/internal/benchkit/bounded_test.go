package benchkit

import (
	"testing"
	"time"
)

func TestBounded(t *testing.T) {
	if got := Bounded(time.Hour, func() int { return 1 }, func() int { return 2 }); got != 1 {
		t.Errorf("f returned: got %d", got)
	}
	block := make(chan struct{})
	defer close(block) // lets the abandoned goroutine end with the test
	if got := Bounded(time.Millisecond, func() int { <-block; return 1 }, func() int { return 2 }); got != 2 {
		t.Errorf("f blocked: got %d", got)
	}
}
