package benchkit

import (
	"strings"
	"testing"
)

func TestLineFilterChunks(t *testing.T) {
	var b strings.Builder
	f := NewLineFilter(&b, "RF-BENCH")
	for _, chunk := range []string{"noise\r\nRF-BE", "NCH vmm=rfm run=1\r\n[rfm#1] x\n", "RF-BENCH-INFO a\n", "partial RF-BENCH"} {
		if n, err := f.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if b.String() != "RF-BENCH vmm=rfm run=1\r\nRF-BENCH-INFO a\n" {
		t.Fatalf("got %q", b.String())
	}
}

func TestLineFilterTrimsLeadingCR(t *testing.T) {
	var b strings.Builder
	f := NewLineFilter(&b, "RF-LIFECYCLE")
	f.Write([]byte("[ 1.0] noise\r\n\rRF-LIFECYCLE system=rfm run=1"))
	f.Write([]byte(" destroy_us=5\r\nmore noise\n"))
	if got := b.String(); got != "RF-LIFECYCLE system=rfm run=1 destroy_us=5\r\n" {
		t.Errorf("filtered %q", got)
	}
}

func TestLineFilterDropsOverlongPartialLine(t *testing.T) {
	var b strings.Builder
	f := NewLineFilter(&b, "P")
	f.Write([]byte("P " + strings.Repeat("x", maxPartialLine)))
	f.Write([]byte(" end\nP next\n"))
	if got := b.String(); got != "P next\n" {
		t.Errorf("filtered %q", got)
	}
}

func TestProgressWriter(t *testing.T) {
	var b strings.Builder
	if w := ProgressWriter(&b, "P", true); w != &b {
		t.Error("verbose progress is not the log itself")
	}
	w := ProgressWriter(&b, "P", false)
	w.Write([]byte("noise\nP line\n"))
	if got := b.String(); got != "P line\n" {
		t.Errorf("filtered %q", got)
	}
}
