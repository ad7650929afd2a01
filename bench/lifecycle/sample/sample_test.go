package sample

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFormatParseRoundTrip(t *testing.T) {
	for _, s := range []Sample{
		{System: "rfm", Run: 1, CreateReturn: 639251 * time.Microsecond, CreateInit: 3122845 * time.Microsecond,
			DestroyReturn: 122600 * time.Microsecond, Destroy: 126775 * time.Microsecond},
		{System: "qemu", Run: 2, CreateInit: time.Second, CPUOnline: 66 * time.Millisecond, CPUOffline: 54 * time.Millisecond,
			MemOnline: 70 * time.Millisecond, MemOffline: 600 * time.Millisecond},
		{System: "lxc", Run: 7, Error: "lxc-start -n x -d: exit status 1: \"quoted\" = and\nnewline"},
		{System: "odd name=x", Run: 0},
	} {
		line := FormatLine(s)
		if strings.Contains(line, "\n") {
			t.Fatalf("line has a newline: %q", line)
		}
		got, ok, err := ParseLine("console noise \r" + line + "\r\n")
		if !ok || err != nil {
			t.Fatalf("ParseLine(%q) = ok %v err %v", line, ok, err)
		}
		if got != s {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, s)
		}
	}
}

func TestParseLineRejects(t *testing.T) {
	for _, line := range []string{
		LinePrefix + " run=1",                                              // no system
		LinePrefix + " system=rfm",                                         // no run
		LinePrefix + " system=rfm run=x",                                   // bad run
		LinePrefix + " system=rfm run=-1",                                  // negative run
		LinePrefix + " system=rfm run=1 destroy_us=-5",                     // negative duration
		LinePrefix + " system=rfm run=1 create_init_us=1e9",                // not an integer
		LinePrefix + " system=rfm run=1 create_init_us=999999999999999999", // too long
		LinePrefix + " system=rfm run=1 error=\"unterminated",
		LinePrefix + " system=rfm run=1 junk",
	} {
		_, ok, err := ParseLine(line)
		if !ok || !errors.Is(err, ErrBadLine) {
			t.Errorf("ParseLine(%q) = ok %v err %v, want ErrBadLine", line, ok, err)
		}
	}
	if _, ok, err := ParseLine("RF-LIFECYCLE-INFO kernel=6.1"); ok || err != nil {
		t.Errorf("info line taken for a result: ok %v err %v", ok, err)
	}
}

func TestParseLineIgnoresUnknownKeys(t *testing.T) {
	s, ok, err := ParseLine(LinePrefix + " system=rfm run=2 future=1 destroy_us=1500")
	if !ok || err != nil || s.System != "rfm" || s.Run != 2 || s.Destroy != 1500*time.Microsecond {
		t.Errorf("got %+v ok %v err %v", s, ok, err)
	}
}

func TestParseOutput(t *testing.T) {
	out := "boot noise\n" + FormatLine(Sample{System: "rfm", Run: 1}) + "\n" +
		LinePrefix + " broken\n" + FormatLine(Sample{System: "rfm", Run: 2, Error: "x"}) + "\n"
	samples, errs := ParseOutput(out)
	if len(samples) != 2 || samples[1].Run != 2 || samples[1].OK() || !samples[0].OK() {
		t.Errorf("samples %+v", samples)
	}
	if len(errs) != 1 {
		t.Errorf("errs %v", errs)
	}
}
