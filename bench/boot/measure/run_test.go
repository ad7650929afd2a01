package measure

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestMeasureSeesMarker(t *testing.T) {
	var echo strings.Builder
	s := Measure(context.Background(), Spec{
		VMM: "sh", Run: 2, Marker: "READY", Echo: &echo,
		// The marker is split across two writes.
		Argv: []string{"sh", "-c", "printf 'boot\\nRE'; sleep 0.05; printf 'ADY\\r\\n'; sleep 0.05; echo done"},
	})
	if !s.OK() {
		t.Fatal(s.Error)
	}
	if s.Init <= 0 || s.Exit < s.Init || s.ExitCode != 0 || s.Status.VmRSS == 0 {
		t.Fatalf("implausible sample %+v", s)
	}
	want := "[sh#2] boot\n[sh#2] READY\n[sh#2] done\n"
	if echo.String() != want {
		t.Fatalf("echo %q, want %q", echo.String(), want)
	}
}

func TestMeasureMissingMarker(t *testing.T) {
	s := Measure(context.Background(), Spec{VMM: "sh", Marker: "READY", Argv: []string{"sh", "-c", "echo err >&2; exit 3"}})
	if s.OK() || s.ExitCode != 3 || !strings.Contains(s.Error, "not seen") || !strings.Contains(s.Error, "stderr: err") {
		t.Fatalf("got %+v", s)
	}
}

func TestMeasureTimeout(t *testing.T) {
	s := Measure(context.Background(), Spec{VMM: "sh", Marker: "READY", Timeout: 100 * time.Millisecond,
		Argv: []string{"sh", "-c", "echo READY; exec sleep 10"}})
	if s.OK() || !strings.Contains(s.Error, "timed out") || s.Init <= 0 {
		t.Fatalf("got %+v", s)
	}
}

func TestMeasureBadSpec(t *testing.T) {
	if s := Measure(context.Background(), Spec{VMM: "x"}); s.OK() {
		t.Fatal("empty spec succeeded")
	}
	if s := Measure(context.Background(), Spec{VMM: "x", Marker: "m", Argv: []string{"/nonexistent/vmm"}}); s.OK() {
		t.Fatal("missing binary succeeded")
	}
}

func TestMeasureIdle(t *testing.T) {
	s := Measure(context.Background(), Spec{
		VMM: "sh", Run: 1, Marker: "INIT",
		Idle: IdleSpec{After: "IDLE", Delay: 10 * time.Millisecond, Window: 200 * time.Millisecond, Every: 50 * time.Millisecond},
		// Both markers in one write; the shell then sleeps in a child.
		Argv: []string{"sh", "-c", "printf 'INIT\\nIDLE\\n'; sleep 2; echo done"},
	})
	if !s.OK() {
		t.Fatal(s.Error)
	}
	if s.Idle == nil || s.Idle.Duration <= 0 || len(s.Idle.Threads) == 0 || s.Idle.Threads[0].Name != "sh" || s.Idle.Threads[0].VCPU {
		t.Fatalf("idle %+v", s.Idle)
	}
	if s.Idle.Threads[0].Describe() == "" {
		t.Errorf("thread states not noted: %+v", s.Idle.Threads[0])
	}
}

func TestMeasureIdleFailures(t *testing.T) {
	idle := IdleSpec{After: "IDLE", Window: time.Hour}
	for name, c := range map[string]struct {
		argv []string
		want string
	}{
		"exits":    {[]string{"sh", "-c", "echo INIT; echo IDLE"}, "exited before the idle window"},
		"no idle":  {[]string{"sh", "-c", "echo INIT"}, `idle marker "IDLE" not seen`},
		"reversed": {[]string{"sh", "-c", "echo IDLE; echo INIT"}, `idle marker "IDLE" not seen`},
	} {
		s := Measure(context.Background(), Spec{VMM: "sh", Marker: "INIT", Idle: idle, Argv: c.argv})
		if s.OK() || !strings.Contains(s.Error, c.want) || s.Idle != nil {
			t.Errorf("%s: %+v", name, s)
		}
	}
	if s := Measure(context.Background(), Spec{VMM: "sh", Marker: "INIT", Idle: IdleSpec{Window: time.Second}, Argv: []string{"true"}}); s.OK() {
		t.Error("idle window without a marker accepted")
	}
}
