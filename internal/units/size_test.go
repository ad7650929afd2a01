package units

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"0", 0},
		{"4096", 4096},
		{"4096B", 4096},
		{" 512M\n", 512 << 20},
		{"512m", 512 << 20},
		{"512MB", 512 << 20},
		{"512MiB", 512 << 20},
		{"512mib", 512 << 20},
		{"512Mi", 512 << 20},
		{"4k", 4 << 10},
		{"2048kB", 2 << 20},
		{"2G", 2 << 30},
		{"1GiB", 1 << 30},
		{"1gb", 1 << 30},
		{"3T", 3 << 40},
		{"0G", 0},
		{"007K", 7 << 10},
		{"18446744073709551615", 1<<64 - 1},
		{"16777215T", 16777215 << 40},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSizeErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `invalid size "": want a whole number of bytes`},
		{"  ", `invalid size "  ": want a whole number`},
		{"M", `invalid size "M": want a whole number`},
		{"-1M", `invalid size "-1M": want a whole number`},
		{"+1M", `invalid size "+1M": want a whole number`},
		{"1.5G", `invalid size "1.5G": want a whole number; use a smaller unit instead of a fraction`},
		{"2P", `invalid size "2P": unknown unit "P" (use K, M, G or T, optionally followed by B or iB)`},
		{"2Mx", `unknown unit "Mx"`},
		{"2MiBs", `unknown unit "MiBs"`},
		{"2BB", `unknown unit "BB"`},
		{"2iB", `unknown unit "iB"`},
		{"1 G", `unknown unit " G"`},
		{"0x10", `unknown unit "x10"`},
		{"99999999999999999999", `invalid size "99999999999999999999": too large`},
		{"18446744073709551616", `too large`},
		{"16777216T", `invalid size "16777216T": too large`},
		{"17179869184G", `too large`},
	} {
		got, err := ParseSize(tc.in)
		if !errors.Is(err, ErrSize) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want ErrSize containing %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseNonZeroSize(t *testing.T) {
	if n, err := ParseNonZeroSize("1K"); err != nil || n != 1024 {
		t.Errorf("ParseNonZeroSize(1K) = %d, %v", n, err)
	}
	for _, in := range []string{"0", "0M", "000GiB"} {
		if _, err := ParseNonZeroSize(in); !errors.Is(err, ErrSize) || !strings.Contains(err.Error(), "must be more than 0 bytes") {
			t.Errorf("ParseNonZeroSize(%q) = %v; want ErrSize for zero", in, err)
		}
	}
	if _, err := ParseNonZeroSize("x"); !errors.Is(err, ErrSize) {
		t.Errorf("ParseNonZeroSize(x) = %v; want ErrSize", err)
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0", 1: "1", 4097: "4097", 4 << 10: "4K", 2 << 20: "2M", 1536 << 20: "1536M",
		1 << 30: "1G", 3 << 40: "3T", 1024 << 40: "1024T", 1<<64 - 1: "18446744073709551615",
	} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		if back, err := ParseSize(want); err != nil || back != n {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", want, back, err, n)
		}
	}
}

// FuzzParseSize checks that whatever ParseSize accepts, FormatSize writes
// in a form that parses back to the same size and formats the same again.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "4096", "512M", "2GiB", "64kB", "1.5G", "16777216T", " 1t "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if !errors.Is(err, ErrSize) {
				t.Fatalf("ParseSize(%q): %v does not match ErrSize", s, err)
			}
			return
		}
		text := FormatSize(n)
		back, err := ParseSize(text)
		if err != nil || back != n {
			t.Fatalf("ParseSize(%q) = %d; FormatSize gives %q, which parses to %d, %v", s, n, text, back, err)
		}
		if again := FormatSize(back); again != text {
			t.Fatalf("FormatSize is not stable for %q: %q then %q", s, text, again)
		}
		if nz, err := ParseNonZeroSize(s); (n == 0) != (err != nil) || nz != n {
			t.Fatalf("ParseNonZeroSize(%q) = %d, %v; ParseSize gave %d", s, nz, err, n)
		}
	})
}
