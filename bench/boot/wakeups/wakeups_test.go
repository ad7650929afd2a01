package wakeups

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fakeThread writes a thread's files under root/PID/task/TID.
func fakeThread(t *testing.T, root string, pid, tid int, name string, vol, nonvol int, syscall, wchan string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid), "task", strconv.Itoa(tid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	status := "Name:\t" + name + "\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t" + strconv.Itoa(vol) +
		"\nnonvoluntary_ctxt_switches:\t" + strconv.Itoa(nonvol) + "\n"
	for file, text := range map[string]string{"status": status, "comm": name + "\n", "syscall": syscall + "\n", "wchan": wchan} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestIsVCPU(t *testing.T) {
	for name, want := range map[string]bool{
		"vcpu0": true, "vcpu12": true, "CPU 0/KVM": true, "CPU 15/KVM": true,
		"vcpu": false, "vcpux": false, "rfm": false, "qemu-system-x86": false, "CPU /KVM": false, "CPU 0/TCG": false, "IO mon_iothread": false,
	} {
		if IsVCPU(name) != want {
			t.Errorf("IsVCPU(%q) = %v", name, !want)
		}
	}
}

func TestSnapshotCompare(t *testing.T) {
	root := t.TempDir()
	fakeThread(t, root, 100, 100, "rfm", 10, 1, "202 0x0 0x80 0x0 0x0 0x0 0x0 0x0 0x0", "futex_wait_queue")
	fakeThread(t, root, 100, 101, "rfm", 5, 0, "35 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0", "hrtimer_nanosleep")
	fakeThread(t, root, 100, 102, "vcpu0", 1000, 20, "16 0x9 0xae80 0x0 0x0 0x0 0x0 0x0 0x0", "kvm_vcpu_block")
	fakeThread(t, root, 100, 103, "rfm", 7, 0, "running", "0")
	before, err := Snapshot(root, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 4 || before[2] != (Thread{TID: 102, Name: "vcpu0", State: 'S', Voluntary: 1000, Nonvoluntary: 20}) {
		t.Fatalf("snapshot %+v", before)
	}
	// Over the window: 101 wakes 100 times, the vCPU 400+5, 103 ends,
	// 104 starts.
	fakeThread(t, root, 100, 101, "rfm", 105, 0, "35 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0", "hrtimer_nanosleep")
	fakeThread(t, root, 100, 102, "vcpu0", 1400, 25, "running", "0")
	if err := os.RemoveAll(filepath.Join(root, "100", "task", "103")); err != nil {
		t.Fatal(err)
	}
	fakeThread(t, root, 100, 104, "rfm", 3, 1, "running", "0")
	after, err := Snapshot(root, 100)
	if err != nil {
		t.Fatal(err)
	}
	w := Compare(before, after, 10*time.Second)
	if len(w.Threads) != 5 {
		t.Fatalf("threads %+v", w.Threads)
	}
	want := []Count{
		{TID: 100, Name: "rfm"},
		{TID: 101, Name: "rfm", Voluntary: 100},
		{TID: 102, Name: "vcpu0", VCPU: true, Voluntary: 400, Nonvoluntary: 5},
		{TID: 103, Name: "rfm", Ended: true},
		{TID: 104, Name: "rfm", Voluntary: 3, Nonvoluntary: 1, Started: true},
	}
	for i, c := range w.Threads {
		if c.TID != want[i].TID || c.Name != want[i].Name || c.VCPU != want[i].VCPU || c.Voluntary != want[i].Voluntary ||
			c.Nonvoluntary != want[i].Nonvoluntary || c.Started != want[i].Started || c.Ended != want[i].Ended {
			t.Errorf("thread %d: got %+v, want %+v", i, c, want[i])
		}
	}
	if w.Total(false) != 104 || w.Total(true) != 405 || w.PerSecond(false) != 10.4 || w.PerSecond(true) != 40.5 {
		t.Errorf("totals %d %d, per second %v %v", w.Total(false), w.Total(true), w.PerSecond(false), w.PerSecond(true))
	}
	waking := w.Waking(false)
	if len(waking) != 2 || waking[0].TID != 101 || waking[1].TID != 104 || w.Rate(waking[0]) != 10 {
		t.Errorf("waking %+v", waking)
	}
	if (Window{}).PerSecond(false) != 0 {
		t.Error("empty window has a rate")
	}
}

func TestSnapshotErrors(t *testing.T) {
	root := t.TempDir()
	if _, err := Snapshot(root, 1); err == nil {
		t.Error("no process: no error")
	}
	if err := os.MkdirAll(filepath.Join(root, "2", "task"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Snapshot(root, 2); !errors.Is(err, ErrNoThreads) {
		t.Errorf("no threads: %v", err)
	}
	fakeThread(t, root, 3, 3, "x", 1, 1, "running", "0")
	if err := os.WriteFile(filepath.Join(root, "3", "task", "3", "status"), []byte("Name:\tx\nvoluntary_ctxt_switches:\t1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Snapshot(root, 3); err == nil {
		t.Error("status without nonvoluntary_ctxt_switches: no error")
	}
}

func TestBlockedIn(t *testing.T) {
	root := t.TempDir()
	// A futex wait whose relative timeout (10 ms) is at 0x1000 in the
	// process's memory, an epoll_pwait without timeout, and a nanosleep
	// whose timespec cannot be read.
	mem := make([]byte, 0x1010)
	binary.LittleEndian.PutUint64(mem[0x1000:], 0)
	binary.LittleEndian.PutUint64(mem[0x1008:], 9_990_000)
	if err := os.MkdirAll(filepath.Join(root, "7"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "7", "mem"), mem, 0o600); err != nil {
		t.Fatal(err)
	}
	fakeThread(t, root, 7, 8, "rfm", 0, 0, "202 0xc000 0x80 0x0 0x1000 0x0 0x0 0x7ffc 0x4000", "futex_wait_queue")
	fakeThread(t, root, 7, 9, "rfm", 0, 0, "281 0x4 0x7ffc 0x80 0xffffffff 0x0 0x0 0x7ffc 0x4000", "do_epoll_wait")
	fakeThread(t, root, 7, 10, "rfm", 0, 0, "35 0x99999 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x4000", "hrtimer_nanosleep")
	for tid, want := range map[int]string{
		8:  "futex wait 10ms [futex_wait_queue]",
		9:  "epoll_pwait no timeout [do_epoll_wait]",
		10: "nanosleep timed [hrtimer_nanosleep]",
	} {
		got, err := BlockedIn(root, 7, tid)
		if err != nil || got != want {
			t.Errorf("thread %d: %q, %v; want %q", tid, got, err, want)
		}
	}
	if _, err := BlockedIn(root, 7, 11); err == nil {
		t.Error("missing thread: no error")
	}
}

func TestDescribe(t *testing.T) {
	none := func(uint64) (time.Duration, bool) { return 0, false }
	secs := func(uint64) (time.Duration, bool) { return 59*time.Second + 990*time.Millisecond, true }
	for _, c := range []struct{ syscall, wchan, want string }{
		{"running", "0", "running"},
		{"-1 0x7ffc 0x4000", "0", "not in a system call"},
		{"16 0xc 0xae80 0x0 0x0 0x0 0x0 0x7ffc 0x4000", "kvm_vcpu_block", "ioctl KVM_RUN [kvm_vcpu_block]"},
		{"16 0xc 0x4008ae89 0x0 0x0 0x0 0x0 0x7ffc 0x4000", "", "ioctl 0x4008ae89"},
		{"202 0xc000 0x80 0x0 0x0 0x0 0x0 0x7ffc 0x4000", "futex_wait_queue", "futex wait no timeout [futex_wait_queue]"},
		{"202 0xc000 0x80 0x0 0x1000 0x0 0x0 0x7ffc 0x4000", "", "futex wait 1m0s"},
		{"202 0xc000 0x89 0x0 0x1000 0x0 0x0 0x7ffc 0x4000", "", "futex wait_bitset"},
		{"202 0xc000 0x81 0x1 0x0 0x0 0x0 0x7ffc 0x4000", "", "futex op 1"},
		{"271 0x5 0x3 0x1000 0x0 0x8 0x0 0x7ffc 0x4000", "do_sys_poll", "ppoll 1m0s [do_sys_poll]"},
		{"7 0x5 0x3 0x3e8 0x0 0x0 0x0 0x7ffc 0x4000", "", "poll 1s"},
		{"230 0x1 0x1 0x1000 0x0 0x0 0x0 0x7ffc 0x4000", "", "clock_nanosleep absolute"},
		{"999 0x0 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x4000", "", "syscall 999"},
		{"", "", "unknown"},
	} {
		ts := secs
		if c.want == "nanosleep timed" {
			ts = none
		}
		if got := describe(c.syscall, c.wchan, ts); got != c.want {
			t.Errorf("describe(%q, %q) = %q, want %q", c.syscall, c.wchan, got, c.want)
		}
	}
}

func TestRoundDuration(t *testing.T) {
	for d, want := range map[time.Duration]time.Duration{
		0: 0, 20 * time.Microsecond: 20 * time.Microsecond, 9_990 * time.Microsecond: 10 * time.Millisecond,
		10_010 * time.Microsecond: 10 * time.Millisecond, 59_990 * time.Millisecond: time.Minute, 149 * time.Millisecond: 100 * time.Millisecond,
		7: 7,
	} {
		if got := roundDuration(d); got != want {
			t.Errorf("roundDuration(%v) = %v, want %v", d, got, want)
		}
	}
}

func TestCountDescribe(t *testing.T) {
	c := Count{BlockedIn: map[string]int{"running": 1, "nanosleep 10ms": 8, "futex wait": 1}}
	if got := c.Describe(); got != "nanosleep 10ms 8/10, futex wait 1/10, running 1/10" {
		t.Errorf("Describe %q", got)
	}
	if (Count{}).Describe() != "" {
		t.Error("empty Describe")
	}
}
