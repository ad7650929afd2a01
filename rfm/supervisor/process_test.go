package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestExecLauncher(t *testing.T) {
	l := ExecLauncher{RFM: "/bin/sh"}
	log := filepath.Join(t.TempDir(), "vmm.log")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var prepared int
	p, err := l.Start(ctx, []string{"-c", `read x <&4; [ "$x" = go ] || exit 9; echo ready >&3; exec sleep 30`}, log, nil,
		func(pid int) error { prepared = pid; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if prepared != p.PID() || p.StartTime() == 0 {
		t.Errorf("prepare got pid %d, process %d start %d", prepared, p.PID(), p.StartTime())
	}
	// A second supervisor can adopt it by pid and start time, not by pid alone.
	if _, err := l.Adopt(p.PID(), p.StartTime()+1); err == nil {
		t.Error("adopted with the wrong start time")
	}
	a, err := l.Adopt(p.PID(), p.StartTime())
	if err != nil {
		t.Fatal(err)
	}
	// A released watcher stops watching; a second adoption still sees the exit.
	released, err := l.Adopt(p.PID(), p.StartTime())
	if err != nil {
		t.Fatal(err)
	}
	released.Release()
	stopProcess(p, 5*time.Second)
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("adopted process not seen exiting")
	}
	if err := a.Signal(syscall.SIGTERM); err == nil {
		t.Error("signal to an exited adopted process succeeded")
	}
}

// A VMM that exits before it runs is an error carrying its log.
func TestExecLauncherEarlyExit(t *testing.T) {
	l := ExecLauncher{RFM: "/bin/sh"}
	log := filepath.Join(t.TempDir(), "vmm.log")
	_, err := l.Start(context.Background(), []string{"-c", `read x <&4; echo "rfm: no hugepages" >&2; exit 2`}, log, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no hugepages") {
		t.Errorf("early exit: %v", err)
	}
	_, err = l.Start(context.Background(), []string{"-c", `read x <&4; exec sleep 30`}, log, nil, func(int) error { return os.ErrPermission })
	if err == nil {
		t.Error("failing prepare did not fail Start")
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// An adopted VMM that exits leaves no descriptor behind: the watcher's
// stop pipe used to keep its write end until Release, which nobody calls
// for a VMM that exited.
func TestAdoptedExitClosesFDs(t *testing.T) {
	l := ExecLauncher{}
	const cycles = 10
	cycle := func() {
		cmd := exec.Command("sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		st, err := procStartTime("/proc", cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		p, err := l.Adopt(cmd.Process.Pid, st)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.Done()
		_ = cmd.Wait()
	}
	cycle() // the runtime's own descriptors (pidfd poller, /dev/null) settle
	before := openFDs(t)
	for range cycles {
		cycle()
	}
	if after := openFDs(t); after-before >= cycles {
		t.Errorf("%d descriptors open after %d adopt+exit cycles, %d before", after, cycles, before)
	}
}

// A child VMM's exit status is known once it exited; the reclaim event
// names it.
func TestExecLauncherExitStatus(t *testing.T) {
	l := ExecLauncher{RFM: "/bin/sh"}
	log := filepath.Join(t.TempDir(), "vmm.log")
	p, err := l.Start(context.Background(), []string{"-c", `read x <&4; echo ready >&3; read y <&4; printf 'last \033[2J line\n'; exit 3`}, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if got, want := exitDetail(p, log), `VMM exited (exit status 3); last console line: "last \x1b[2J line"`; got != want {
		t.Errorf("detail %s, want %s", got, want)
	}
}

func TestTrimLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.log")
	var b strings.Builder
	for i := range 200 {
		fmt.Fprintf(&b, "line %03d of a chatty back end\n", i)
	}
	os.WriteFile(path, []byte(b.String()), 0o600)
	if err := trimLog(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Size() != int64(b.Len()) {
		t.Fatalf("a log under the cap was changed: %d bytes", st.Size())
	}
	if err := trimLog(path, 1024); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if len(got) > 1024 || !strings.HasPrefix(string(got), "[rfm: the log passed 1024 bytes") || !strings.HasSuffix(string(got), "line 199 of a chatty back end\n") {
		t.Errorf("trimmed log (%d bytes):\n%s", len(got), got)
	}
	if l := strings.Split(string(got), "\n")[1]; !strings.HasPrefix(l, "line ") {
		t.Errorf("the kept part starts inside a line: %q", l)
	}
}
