package procstat

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"rainforest/internal/agentproto"
)

// fixture reads a file copied from a real /proc (testdata/host).
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "host", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStatHost(t *testing.T) {
	got, err := ParseStat(strings.NewReader(string(fixture(t, "stat"))))
	if err != nil {
		t.Fatal(err)
	}
	want := []CPUTimes{
		{CPU: -1, User: 1287918, Nice: 170842, System: 172875, Idle: 6485762, IOWait: 4736, IRQ: 0, SoftIRQ: 11858, Steal: 77304},
		{CPU: 0, User: 643382, Nice: 87735, System: 85249, Idle: 3242176, IOWait: 2732, IRQ: 0, SoftIRQ: 5659, Steal: 37765},
		{CPU: 1, User: 644536, Nice: 83107, System: 87625, Idle: 3243585, IOWait: 2004, IRQ: 0, SoftIRQ: 6198, Steal: 39538},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseStat = %+v\nwant %+v", got, want)
	}
}

func TestParseStatBad(t *testing.T) {
	for _, in := range []string{"", "intr 1 2\n", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 2 3 4 5 6 7 x\n", "cpu 1 2 3 4 5 6 7 8\ncpux 1 2 3 4 5 6 7 8\n"} {
		if _, err := ParseStat(strings.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParseStat(%q) = %v, want ErrFormat", in, err)
		}
	}
}

func TestUse(t *testing.T) {
	prev := CPUTimes{CPU: 3, User: 100, Nice: 0, System: 50, Idle: 1000, IOWait: 10, Steal: 5}
	cur := CPUTimes{CPU: 3, User: 150, Nice: 10, System: 60, IRQ: 5, SoftIRQ: 5, Idle: 1100, IOWait: 20, Steal: 5}
	// deltas: user 60, system 20, iowait 10, steal 0, idle 100: total 190.
	want := agentproto.CPUUse{CPU: 3, User: 31.58, System: 10.53, IOWait: 5.26, Steal: 0, Idle: 52.63}
	if got := Use(prev, cur); got != want {
		t.Errorf("Use = %+v, want %+v", got, want)
	}
	// No time passed: idle. A counter going backwards (iowait does) is 0.
	if got := Use(cur, cur); got != (agentproto.CPUUse{CPU: 3, Idle: 100}) {
		t.Errorf("no delta: %+v", got)
	}
	back := cur
	back.IOWait = 0
	back.Idle += 10
	if got := Use(cur, back); got.IOWait != 0 || got.Idle != 100 {
		t.Errorf("backwards iowait: %+v", got)
	}
}

func TestParseMeminfoHost(t *testing.T) {
	m, err := ParseMeminfo(strings.NewReader(string(fixture(t, "meminfo"))))
	if err != nil {
		t.Fatal(err)
	}
	if m.Total == 0 || m.Total%1024 != 0 || m.Free > m.Total || m.Available > m.Total || m.Available < m.Free {
		t.Errorf("implausible meminfo: %+v", m)
	}
	m, err = ParseMeminfo(strings.NewReader("MemTotal:  2048 kB\nMemFree: 1024 kB\nHugePages_Total: 3\nSwapFree: 0 kB\n"))
	if err != nil || m != (agentproto.Memory{Total: 2 << 20, Free: 1 << 20}) {
		t.Errorf("small meminfo: %+v, %v", m, err)
	}
	for _, in := range []string{"MemFree: 1 kB\n", "MemTotal: x kB\n", "MemTotal: 1 MB\n", "MemTotal: 99999999999999999999 kB\n"} {
		if _, err := ParseMeminfo(strings.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParseMeminfo(%q) = %v, want ErrFormat", in, err)
		}
	}
}

func TestParseLoadavg(t *testing.T) {
	l, err := ParseLoadavg(strings.NewReader(string(fixture(t, "loadavg"))))
	if err != nil || l != (agentproto.Load{Load1: 2.57, Load5: 2.47, Load15: 2.66, Runnable: 3, Tasks: 107}) {
		t.Errorf("host loadavg: %+v, %v", l, err)
	}
	for _, in := range []string{"", "1 2 3", "1 2 3 4 5", "-1 2 3 1/2 5", "1 2 3 1-2 5", "nan 1 1 1/1 1"} {
		if _, err := ParseLoadavg(strings.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParseLoadavg(%q) = %v, want ErrFormat", in, err)
		}
	}
}

func TestParsePressureHost(t *testing.T) {
	p, err := ParsePressure(strings.NewReader(string(fixture(t, "pressure/cpu"))))
	want := &agentproto.Pressure{
		Some: agentproto.PressureLine{Avg10: 35.02, Avg60: 26.27, Avg300: 24.98, TotalUS: 3468563349},
		Full: &agentproto.PressureLine{},
	}
	if err != nil || !reflect.DeepEqual(p, want) {
		t.Errorf("host cpu pressure: %+v, %v", p, err)
	}
	// Older kernels have no full line for cpu.
	p, err = ParsePressure(strings.NewReader("some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n"))
	if err != nil || p.Full != nil || p.Some.Avg300 != 3 || p.Some.TotalUS != 4 {
		t.Errorf("some only: %+v, %v", p, err)
	}
	for _, in := range []string{"", "full avg10=0 total=1\n", "some avg10\n", "some avg10=101\n", "some total=-1\n", "some avg10=NaN\n"} {
		if _, err := ParsePressure(strings.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParsePressure(%q) = %v, want ErrFormat", in, err)
		}
	}
}

func TestParsePPID(t *testing.T) {
	for in, want := range map[string]int{
		"11881 (cat) R 11867 11867 11100 0 -1": 11867,
		"5 (a) b) c) S 1 5 5":                  1,
		"7 (sp ace) S 0 0":                     0,
	} {
		if got, err := ParsePPID([]byte(in)); err != nil || got != want {
			t.Errorf("ParsePPID(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1 (x", "1 (x) S", "1 (x) S y"} {
		if _, err := ParsePPID([]byte(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParsePPID(%q) = %v, want ErrFormat", in, err)
		}
	}
}

func procStat(pid, ppid int) *fstest.MapFile {
	return &fstest.MapFile{Data: []byte(strings.Join([]string{itoa(pid), "(x y)", "S", itoa(ppid), "1 1 0"}, " "))}
}

func itoa(n int) string { return strconv.Itoa(n) }

// The tree below a PID, breadth first; other processes and vanished ones
// are left out.
func TestDescendants(t *testing.T) {
	fsys := fstest.MapFS{
		"1/stat":   procStat(1, 0),
		"10/stat":  procStat(10, 1),  // the agent
		"20/stat":  procStat(20, 10), // the command
		"21/stat":  procStat(21, 20),
		"22/stat":  procStat(22, 20),
		"30/stat":  procStat(30, 22),
		"40/stat":  procStat(40, 1), // unrelated
		"50/stat":  {Data: []byte("garbage")},
		"self":     {Data: []byte("x")},
		"60/other": {Data: []byte("no stat: exited")},
	}
	got, err := Descendants(fsys, 20)
	if err != nil || !reflect.DeepEqual(got, []int{21, 22, 30}) {
		t.Errorf("Descendants = %v, %v", got, err)
	}
	pids, err := Processes(fsys)
	if err != nil || len(pids) != 9 {
		t.Errorf("Processes = %v, %v", pids, err)
	}
}

func hostProc(t *testing.T) fstest.MapFS {
	fsys := fstest.MapFS{"1/stat": procStat(1, 0), "2/stat": procStat(2, 1)}
	for _, n := range []string{"stat", "meminfo", "loadavg", "pressure/cpu", "pressure/memory", "pressure/io"} {
		fsys[n] = &fstest.MapFile{Data: fixture(t, n)}
	}
	return fsys
}

// A sampler's first report is since boot, the next over the interval.
func TestSampler(t *testing.T) {
	fsys := hostProc(t)
	s := NewSampler(fsys)
	t0 := time.Unix(1000, 0)
	st, err := s.Sample(t0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seq != 1 || st.IntervalMS != 0 || len(st.CPUs) != 2 || st.Processes != 2 || st.PSI == nil || st.PSI.IO == nil || st.Load.Tasks != 107 {
		t.Errorf("first report: %+v", st)
	}
	if st.All.Idle < 50 || st.All.Idle > 100 {
		t.Errorf("since boot idle %v", st.All.Idle)
	}
	fsys["stat"] = &fstest.MapFile{Data: []byte("cpu 200 0 0 200 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0 0 0\ncpu2 5 0 0 15 0 0 0 0\n")}
	s2 := NewSampler(fsys)
	if _, err := s2.Sample(t0); err != nil {
		t.Fatal(err)
	}
	fsys["stat"] = &fstest.MapFile{Data: []byte("cpu 300 0 0 300 0 0 0 0 0 0\ncpu0 200 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 200 0 0 0 0 0 0\n")}
	delete(fsys, "pressure/io")
	delete(fsys, "pressure/memory")
	delete(fsys, "pressure/cpu")
	st, err = s2.Sample(t0.Add(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := []agentproto.CPUUse{{CPU: 0, User: 100}, {CPU: 1, Idle: 100}}
	if st.Seq != 2 || st.IntervalMS != 10000 || !reflect.DeepEqual(st.CPUs, want) || st.All.User != 50 || st.PSI != nil {
		t.Errorf("second report: %+v", st)
	}
	// The report passes the host's decoder.
	f, err := agentproto.Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentproto.Decode(f); err != nil {
		t.Errorf("the host refuses the report: %v", err)
	}
}

// The agent's own /proc works too (Linux only, where tests run).
func TestSamplerLive(t *testing.T) {
	st, err := NewSampler(os.DirFS("/proc")).Sample(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.CPUs) == 0 || st.Memory.Total == 0 || st.Processes == 0 {
		t.Errorf("live report: %+v", st)
	}
}

func TestParseTaskStat(t *testing.T) {
	st, err := ParseTaskStat([]byte("4242 (vcpu (0) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0 12345 1000 10 18446744073709551615\n"))
	if err != nil || st.Comm != "vcpu (0) x" || st.UTime != 150 || st.STime != 25 {
		t.Fatalf("ParseTaskStat = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1 comm S", "1 (c) S 1 2 3", "1 (c) S 1 1 1 0 -1 0 0 0 0 0 x 25"} {
		if _, err := ParseTaskStat([]byte(bad)); err == nil {
			t.Errorf("ParseTaskStat(%q) accepted", bad)
		}
	}
}
