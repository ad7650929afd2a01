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
