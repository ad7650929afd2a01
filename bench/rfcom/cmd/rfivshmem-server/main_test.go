package main

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"4096", 4096, true},
		{"64K", 64 << 10, true},
		{"1M", 1 << 20, true},
		{"1m", 1 << 20, true},
		{"1MiB", 1 << 20, true},
		{"2G", 2 << 30, true},
		{"", 0, false},
		{"M", 0, false},
		{"-1M", 0, false},
		{"1T", 0, false},
		{"99999999999999G", 0, false},
	} {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
