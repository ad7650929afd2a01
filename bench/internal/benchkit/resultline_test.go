package benchkit

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var errTestBadLine = errors.New("test: bad result line")

func TestQuoteValue(t *testing.T) {
	for in, want := range map[string]string{
		"rfm": "rfm", "-1": "-1", "5695138": "5695138", "a,b:c": "a,b:c",
		"": `""`, "my vmm": `"my vmm"`, "a\tb": `"a\tb"`, `say "x"`: `"say \"x\""`, "k=v": `"k=v"`,
		`back\slash`: `"back\\slash"`, "cr\r": `"cr\r"`, "nl\n": `"nl\n"`, "bell\a": `"bell\a"`, "back`tick": "\"back`tick\"",
	} {
		if got := QuoteValue(in); got != want {
			t.Errorf("QuoteValue(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestFormatLine(t *testing.T) {
	fields := []Field{{"vmm", "my vmm"}, {"run", "1"}, {"exit_code", "-1"}}
	if got, want := FormatLine("RF-X", fields, ""), `RF-X vmm="my vmm" run=1 exit_code=-1`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	// The error field is always quoted, even where a bare value would do.
	if got, want := FormatLine("RF-X", fields[1:2], "plain"), `RF-X run=1 error="plain"`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got := FormatLine("RF-X", nil, ""); got != "RF-X" {
		t.Errorf("empty line %q", got)
	}
}

func TestFormatSplitRoundTrip(t *testing.T) {
	fields := []Field{{"a", "1"}, {"b", ""}, {"c", "x y=z \"q\"\r\n\t\\"}, {"d", "\x00\u00e9"}}
	errText := "exit status 1: \"quoted\" = and\nnewline"
	line := FormatLine("RF-X", fields, errText)
	got, ok, err := LineFields("noise \r"+line+"\r\n", "RF-X", errTestBadLine)
	if !ok || err != nil {
		t.Fatalf("LineFields(%q) = ok %v err %v", line, ok, err)
	}
	want := append(slices.Clone(fields), Field{ErrorKey, errText})
	if !slices.Equal(got, want) {
		t.Errorf("round trip:\n got %q\nwant %q", got, want)
	}
}

func TestSplitFields(t *testing.T) {
	got, err := SplitFields(" \tk=v  k2=\"quoted v\"\tk3= k4=a=b")
	want := []Field{{"k", "v"}, {"k2", "quoted v"}, {"k3", ""}, {"k4", "a=b"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	if got, err := SplitFields("  "); err != nil || got != nil {
		t.Errorf("blank: %q %v", got, err)
	}
	for _, bad := range []string{"novalue", "=v", `"k"=v`, `k="unterminated`, `k="\q"`, "a=1 junk"} {
		if got, err := SplitFields(bad); err == nil {
			t.Errorf("SplitFields(%q) = %q, want an error", bad, got)
		}
	}
}

func TestLineFieldsNotResult(t *testing.T) {
	for _, l := range []string{"", "RF-X-INFO kernel=6.1", "[rfm#1] RF-INIT-REACHED", "RF-X"} {
		if f, ok, err := LineFields(l, "RF-X", errTestBadLine); ok || err != nil || f != nil {
			t.Errorf("%q: %q ok=%v err=%v", l, f, ok, err)
		}
	}
	line := "RF-X a=1 junk"
	if f, ok, err := LineFields(line, "RF-X", errTestBadLine); !ok || !errors.Is(err, errTestBadLine) || !strings.Contains(err.Error(), strconv.Quote(line)) || f != nil {
		t.Errorf("malformed line: %q ok=%v err=%v", f, ok, err)
	}
}

func TestParseLines(t *testing.T) {
	errBad := errors.New("bad")
	parse := func(line string) (int, bool, error) {
		fields, ok, err := LineFields(line, "RF-X", errTestBadLine)
		if !ok || err != nil {
			return 0, ok, err
		}
		if len(fields) != 1 || fields[0].Key != "n" {
			return 0, true, errBad
		}
		n, err := strconv.Atoi(fields[0].Value)
		return n, true, err
	}
	got, errs := ParseLines("boot noise\r\nRF-X n=1\r\nRF-X m=2\nRF-X n=3\nRF-X broken\n", parse)
	if !slices.Equal(got, []int{1, 3}) || len(errs) != 2 || !errors.Is(errs[0], errBad) {
		t.Errorf("got %v, errs %v", got, errs)
	}
}
