package measure

import (
	"errors"
	"os"
	"testing"
)

const sampleStatus = `Name:	qemu-system-x86
Umask:	0022
State:	S (sleeping)
Pid:	4242
VmPeak:	 1234567 kB
VmHWM:	   83720 kB
VmRSS:	   81000 kB
RssAnon:	   17612 kB
RssFile:	       8 kB
RssShmem:	   63380 kB
HugetlbPages:	  524288 kB
Threads:	5
`

func TestParseStatus(t *testing.T) {
	st, err := ParseStatus([]byte(sampleStatus))
	if err != nil {
		t.Fatal(err)
	}
	want := ProcStatus{VmRSS: 81000, VmHWM: 83720, RssAnon: 17612, RssFile: 8, RssShmem: 63380, HugetlbPages: 524288}
	if st != want {
		t.Fatalf("got %+v, want %+v", st, want)
	}
}

func TestParseStatusOldKernel(t *testing.T) {
	// No Rss* or HugetlbPages lines: those stay zero.
	st, err := ParseStatus([]byte("Name:\tx\nVmHWM:\t10 kB\nVmRSS:\t9 kB\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st != (ProcStatus{VmRSS: 9, VmHWM: 10}) {
		t.Fatalf("got %+v", st)
	}
}

func TestParseStatusErrors(t *testing.T) {
	for name, text := range map[string]string{
		"no VmRSS":  "Name:\tkthreadd\nState:\tS\n",
		"bad unit":  "VmRSS:\t10 MB\n",
		"not a num": "VmRSS:\tx kB\n",
		"empty":     "VmRSS:\n",
		"negative":  "VmRSS:\t-1 kB\n",
	} {
		if _, err := ParseStatus([]byte(text)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := ParseStatus([]byte("Name:\tx\n")); !errors.Is(err, ErrNoVmRSS) {
		t.Errorf("got %v, want ErrNoVmRSS", err)
	}
}

func TestReadStatusSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	st, err := ReadStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.VmRSS == 0 || st.VmHWM < st.VmRSS {
		t.Fatalf("implausible status %+v", st)
	}
}
