package benchkit

import "time"

// Bounded returns f's result, or fallback's when f has not returned
// within d. It is for a measuring command's main: a measured process
// that cannot be killed (stuck in the kernel of a nested guest) can keep
// f blocked forever, and the command should still print a result and
// exit; f's goroutine is then left to the process's exit, which is its
// owner's.
func Bounded[T any](d time.Duration, f func() T, fallback func() T) T {
	res := make(chan T, 1)
	go func() { res <- f() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-res:
		return r
	case <-t.C:
		return fallback()
	}
}
