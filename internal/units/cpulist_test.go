package units

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"", nil},
		{" \n", nil},
		{"0", []int{0}},
		{"0-3", []int{0, 1, 2, 3}},
		{"0-3,8-11\n", []int{0, 1, 2, 3, 8, 9, 10, 11}},
		{"0-1,4,6-7", []int{0, 1, 4, 6, 7}},
		{"5-5", []int{5}},
		{"8,2,3", []int{2, 3, 8}},
		{" 2 - 3 , 5 ", []int{2, 3, 5}},
		{"\t1,\t2\n", []int{1, 2}},
		{"007", []int{7}},
		{"8191", []int{8191}},
	} {
		got, err := ParseCPUList(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	all, err := ParseCPUList("0-8191")
	if err != nil || len(all) != MaxCPU+1 || all[0] != 0 || all[MaxCPU] != MaxCPU {
		t.Errorf("ParseCPUList(0-8191) = %d CPUs, %v", len(all), err)
	}
}

func TestParseCPUListErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a", `invalid CPU list "a": "a" is not a CPU number or a range like 2-5`},
		{"-1", `invalid CPU list "-1": "-1" is not a CPU number or a range like 2-5`},
		{"1--3", `"1--3" is not a CPU number`},
		{"1-2-3", `"1-2-3" is not a CPU number`},
		{"+1", `"+1" is not a CPU number`},
		{"1 2", `"1 2" is not a CPU number`},
		{"2-", `"2-" is not a CPU number`},
		{"0x1", `"0x1" is not a CPU number`},
		{"3-1", `invalid CPU list "3-1": range 3-1 runs backwards (write 1-3)`},
		{"1,1", `invalid CPU list "1,1": CPU 1 is listed twice`},
		{"0-3,2", `CPU 2 is listed twice`},
		{"0-8191,0-8191", `CPU 0 is listed twice`},
		{"1,,2", `invalid CPU list "1,,2": empty entry`},
		{"1,", `empty entry`},
		{",1", `empty entry`},
		{"8192", `invalid CPU list "8192": CPU 8192 is out of range (0 to 8191)`},
		{"0-99999999", `CPU 99999999 is out of range`},
		{"99999999999999999999999", `CPU 99999999999999999999999 is out of range`},
	} {
		got, err := ParseCPUList(tc.in)
		if !errors.Is(err, ErrCPUList) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want ErrCPUList containing %q", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{}, ""},
		{[]int{3}, "3"},
		{[]int{7, 0, 1, 2, 4}, "0-2,4,7"},
		{[]int{2, 3}, "2-3"},
		{[]int{1, 1, 2}, "1-2"},
		{[]int{0, 1, 2, 3, 8, 9, 10, 11}, "0-3,8-11"},
	} {
		in := slices.Clone(tc.in)
		if got := FormatCPUList(tc.in); got != tc.want {
			t.Errorf("FormatCPUList(%v) = %q, want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("FormatCPUList changed its argument: %v, was %v", tc.in, in)
		}
	}
}

// FuzzParseCPUList checks that whatever ParseCPUList accepts is sorted,
// distinct and in range, and that FormatCPUList writes it in a form that
// parses back to the same list and formats the same again.
func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"", "0", "0-3,8-11\n", "3-1", "1,1", "0-8191", " 2 - 3 , 5 ", "1,,2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseCPUList(s)
		if err != nil {
			if !errors.Is(err, ErrCPUList) {
				t.Fatalf("ParseCPUList(%q): %v does not match ErrCPUList", s, err)
			}
			return
		}
		for i, c := range cpus {
			if c < 0 || c > MaxCPU || (i > 0 && c <= cpus[i-1]) {
				t.Fatalf("ParseCPUList(%q) = %v: not sorted, distinct CPUs 0..%d", s, cpus, MaxCPU)
			}
		}
		text := FormatCPUList(cpus)
		back, err := ParseCPUList(text)
		if err != nil || !slices.Equal(back, cpus) {
			t.Fatalf("ParseCPUList(%q) = %v; FormatCPUList gives %q, which parses to %v, %v", s, cpus, text, back, err)
		}
		if again := FormatCPUList(back); again != text {
			t.Fatalf("FormatCPUList is not stable for %q: %q then %q", s, text, again)
		}
	})
}
