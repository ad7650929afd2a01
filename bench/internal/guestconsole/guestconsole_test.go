package guestconsole

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	var echo strings.Builder
	r, w := io.Pipe()
	con := Watch(r, []string{"READY", "ADDED", "REMOVED"}, &echo, "[g#1] ")
	t.Cleanup(func() { w.Close(); <-con.Closed() })
	say := func(line string) { io.WriteString(w, line+"\r\n") }
	ctx := context.Background()
	say("boot noise")
	say("x ADDED y") // before the clock: not an answer to a later wait
	first, err := con.Wait(ctx, "ADDED", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	since := first.Add(time.Nanosecond)
	got := make(chan time.Time)
	go func() { // owner: the test, which reads got
		at, err := con.Wait(ctx, "ADDED", since)
		if err != nil {
			t.Error(err)
		}
		got <- at
	}()
	say("ADDED")
	if at := <-got; at.Before(since) {
		t.Errorf("Wait returned the earlier line: %v < %v", at, since)
	}
	if !con.Seen("ADDED") || con.Seen("REMOVED") {
		t.Error("Seen")
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := con.Wait(short, "REMOVED", time.Time{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("missing marker: %v", err)
	}
	say("READY")
	w.Close()
	<-con.Closed()
	if _, err := con.Wait(ctx, "READY", time.Time{}); err != nil {
		t.Errorf("a marker seen before the end: %v", err)
	}
	if _, err := con.Wait(ctx, "REMOVED", time.Time{}); !errors.Is(err, ErrEnded) {
		t.Errorf("after the end: %v", err)
	}
	if want := "[g#1] boot noise\n[g#1] x ADDED y\n[g#1] ADDED\n[g#1] READY\n"; echo.String() != want {
		t.Errorf("echo %q, want %q", echo.String(), want)
	}
}
