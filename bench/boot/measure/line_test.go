package measure

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"rainforest/bench/boot/wakeups"
)

func TestFormatParseRoundTrip(t *testing.T) {
	for _, s := range []Sample{
		{VMM: "rfm", Run: 1, Init: 5695138 * time.Microsecond, Exit: 7010612 * time.Microsecond, ExitCode: 0,
			Status: ProcStatus{VmRSS: 8180, VmHWM: 8180, RssAnon: 6300, RssFile: 4, RssShmem: 1876, HugetlbPages: 524288}},
		{VMM: "qemu", Run: 2, ExitCode: -1, Error: "marker \"X\" not seen; stderr: a=b\n\tpanic"},
		{VMM: "my vmm", Run: 3, ExitCode: 2},
		{VMM: "qemu", Run: 4, Init: time.Second, Idle: &wakeups.Window{Duration: 10 * time.Second, Threads: []wakeups.Count{
			{TID: 10, Name: "qemu-system-x86", Voluntary: 120, Nonvoluntary: 3, BlockedIn: map[string]int{"ppoll 1s [do_sys_poll]": 10}},
			{TID: 12, Name: "CPU 0/KVM", VCPU: true, Voluntary: 800, Started: true},
			{TID: 13, Name: "a \"quoted\" name=x", Ended: true},
		}}},
	} {
		line := FormatLine(s)
		if strings.Contains(line, "\n") {
			t.Fatalf("line has a newline: %q", line)
		}
		got, ok, err := ParseLine(line)
		if err != nil || !ok {
			t.Fatalf("ParseLine(%q) = %v, %v", line, ok, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
		}
	}
}

func TestParseLineFromConsole(t *testing.T) {
	// Kernel noise before the prefix and CR LF line ends are tolerated.
	line := "[   3.1] x RF-BENCH vmm=qemu run=3 init_us=12763163 exit_us=14619795 exit_code=0 vmrss_kib=83720 vmhwm_kib=83720 rss_anon_kib=17612 rss_file_kib=8 rss_shmem_kib=66100 hugetlb_kib=524288 future=1\r"
	s, ok, err := ParseLine(line)
	if err != nil || !ok {
		t.Fatalf("%v %v", ok, err)
	}
	if s.VMM != "qemu" || s.Run != 3 || s.Init != 12763163*time.Microsecond || s.Status.VmRSS != 83720 || s.Status.HugetlbPages != 524288 || !s.OK() {
		t.Fatalf("got %+v", s)
	}
}

func TestParseLineNotResult(t *testing.T) {
	for _, l := range []string{"", "RF-BENCH-INFO kernel=6.1", "[rfm#1] RF-INIT-REACHED", "RF-BENCH"} {
		if _, ok, err := ParseLine(l); ok || err != nil {
			t.Errorf("%q: ok=%v err=%v", l, ok, err)
		}
	}
}

func TestParseLineErrors(t *testing.T) {
	for _, l := range []string{
		"RF-BENCH run=1",                       // no vmm
		"RF-BENCH vmm=a run=x",                 // bad int
		"RF-BENCH vmm=a vmrss_kib=-5",          // negative size
		"RF-BENCH vmm=a error=\"unterminated",  // bad quote
		"RF-BENCH vmm=a novalue",               // no '='
		"RF-BENCH vmm=a run=99999999999999999", // out of range
		"RF-BENCH vmm=a exit_code=9999999999",  // out of range
	} {
		_, ok, err := ParseLine(l)
		if !ok || !errors.Is(err, ErrBadLine) {
			t.Errorf("%q: ok=%v err=%v", l, ok, err)
		}
	}
}

func TestParseOutput(t *testing.T) {
	out := strings.Join([]string{
		"RF-NESTED-HUGEPAGES 300",
		FormatLine(Sample{VMM: "rfm", Run: 1, Init: time.Second}),
		"[qemu#1] RF-INIT-REACHED",
		"RF-BENCH vmm=qemu run=oops",
		FormatLine(Sample{VMM: "qemu", Run: 1, Init: 2 * time.Second}),
	}, "\r\n")
	samples, errs := ParseOutput(out)
	if len(samples) != 2 || samples[0].VMM != "rfm" || samples[1].Init != 2*time.Second {
		t.Fatalf("samples %+v", samples)
	}
	if len(errs) != 1 {
		t.Fatalf("errs %v", errs)
	}
}

func TestParseLineBadIdleThreads(t *testing.T) {
	if _, ok, err := ParseLine(`RF-BENCH vmm=a idle_window_us=10 idle_threads="[{"`); !ok || !errors.Is(err, ErrBadLine) {
		t.Errorf("ok=%v err=%v", ok, err)
	}
}
