package lines

import (
	"slices"
	"strings"
	"testing"
)

func TestWriter(t *testing.T) {
	var got []string
	w := NewWriter(func(l string) { got = append(got, l) })
	for _, p := range []string{"one\r\ntw", "o\n", "", "\nthr", "ee\r", "\nguest\r\r\nfour"} {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	want := []string{"one", "two", "", "three", "guest"}
	if !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
	w.Flush()
	w.Flush()
	if want = append(want, "four"); !slices.Equal(got, want) {
		t.Fatalf("after Flush: lines %q, want %q", got, want)
	}
}

func TestWriterLongLine(t *testing.T) {
	var got []string
	w := NewWriter(func(l string) { got = append(got, l) })
	long := strings.Repeat("x", MaxPartial+1)
	w.Write([]byte(long))
	w.Write([]byte("y\n"))
	if len(got) != 2 || got[0] != long || got[1] != "y" {
		t.Fatalf("got %d lines (first %d bytes)", len(got), len(got[0]))
	}
}
