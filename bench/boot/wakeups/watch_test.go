package wakeups

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// sleeper starts a child that sleeps until killed.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc")
	}
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestWatchSleepingProcess(t *testing.T) {
	cmd := sleeper(t)
	w, err := Watch(context.Background(), "/proc", cmd.Process.Pid, 300*time.Millisecond, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Threads) != 1 || w.Threads[0].TID != cmd.Process.Pid || w.Threads[0].Name != "sleep" || w.Threads[0].VCPU || w.Duration <= 0 {
		t.Fatalf("window %+v", w)
	}
	// The thread was seen, sleeping (or, were it still starting, running).
	if d := w.Threads[0].Describe(); d == "" || !strings.Contains(d, "sleep") && !strings.Contains(d, "running") {
		t.Errorf("blocked in %q", d)
	}
}

func TestWatchProcessExits(t *testing.T) {
	cmd := sleeper(t)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Killed but not reaped: a zombie.
	if _, err := Watch(context.Background(), "/proc", cmd.Process.Pid, 50*time.Millisecond, 10*time.Millisecond); !errors.Is(err, ErrExited) {
		t.Errorf("zombie: %v", err)
	}
	cmd.Wait()
	if _, err := Watch(context.Background(), "/proc", cmd.Process.Pid, 50*time.Millisecond, 10*time.Millisecond); err == nil {
		t.Error("reaped process: no error")
	}
}

func TestWatchCanceled(t *testing.T) {
	cmd := sleeper(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Watch(ctx, "/proc", cmd.Process.Pid, time.Hour, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

// TestWatchUnnamedVCPU: a QEMU without debug-threads names its vCPU
// threads like the others; Watch sees them in KVM_RUN.
func TestWatchUnnamedVCPU(t *testing.T) {
	root := t.TempDir()
	fakeThread(t, root, 50, 50, "qemu-system-x86", 3, 0, "271 0x5 0x3 0x0 0x0 0x8 0x0 0x7ffc 0x4000", "do_sys_poll")
	fakeThread(t, root, 50, 51, "qemu-system-x86", 9, 0, "16 0xc 0xae80 0x0 0x0 0x0 0x0 0x7ffc 0x4000", "kvm_vcpu_block")
	w, err := Watch(context.Background(), root, 50, 30*time.Millisecond, 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Threads) != 2 || w.Threads[0].VCPU || !w.Threads[1].VCPU {
		t.Errorf("threads %+v", w.Threads)
	}
	if got := w.Threads[1].Describe(); !strings.HasPrefix(got, kvmRunState+" [kvm_vcpu_block] ") {
		t.Errorf("vCPU blocked in %q", got)
	}
}
