package wakeups

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sleepCall names the x86-64 system calls threads sleep in and says
// where their timeout is: timeoutArg is the argument holding it (-1 for
// none), millis that it is an int of milliseconds rather than a pointer to
// a struct timespec. ok is false for other calls.
func sleepCall(nr int) (name string, timeoutArg int, millis, ok bool) {
	switch nr {
	case 0:
		return "read", -1, false, true
	case 1:
		return "write", -1, false, true
	case 7:
		return "poll", 2, true, true
	case 16:
		return "ioctl", -1, false, true
	case 23:
		return "select", -1, false, true
	case 35:
		return "nanosleep", 0, false, true
	case 45:
		return "recvfrom", -1, false, true
	case 47:
		return "recvmsg", -1, false, true
	case 61:
		return "wait4", -1, false, true
	case 202:
		return "futex", 3, false, true
	case 230:
		return "clock_nanosleep", 2, false, true
	case 232:
		return "epoll_wait", 3, true, true
	case 270:
		return "pselect6", -1, false, true
	case 271:
		return "ppoll", 2, false, true
	case 281:
		return "epoll_pwait", 3, true, true
	case 441:
		return "epoll_pwait2", 3, false, true
	}
	return "", 0, false, false
}

// kvmRun is the KVM_RUN ioctl request.
const kvmRun = 0xae80

// BlockedIn says what thread tid of process pid under procRoot is doing
// now, without disturbing it: "running", or the system call it sleeps in
// with its timeout rounded to one significant digit ("futex 10ms",
// "epoll_pwait no timeout", "ioctl KVM_RUN"), followed by the kernel's wait
// channel in brackets when there is one ("[futex_wait_queue]"). Timeouts
// passed by pointer are read from the process's memory (/proc/PID/mem).
func BlockedIn(procRoot string, pid, tid int) (string, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "task", strconv.Itoa(tid))
	raw, err := os.ReadFile(filepath.Join(dir, "syscall"))
	if err != nil {
		return "", fmt.Errorf("wakeups: %w", err)
	}
	wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
	mem := func(addr uint64) (time.Duration, bool) {
		return readTimespec(filepath.Join(procRoot, strconv.Itoa(pid), "mem"), addr)
	}
	return describe(strings.TrimSpace(string(raw)), strings.TrimSpace(string(wchan)), mem), nil
}

// describe renders a /proc/PID/task/TID/syscall line ("202 0x1 0x80 ..."),
// the wait channel, and reads timespecs with timespec.
func describe(syscall, wchan string, timespec func(addr uint64) (time.Duration, bool)) string {
	f := strings.Fields(syscall)
	var s string
	switch {
	case len(f) == 0:
		s = "unknown"
	case f[0] == "running":
		return "running"
	case f[0] == "-1":
		s = "not in a system call"
	default:
		nr, err := strconv.Atoi(f[0])
		args := make([]uint64, 6)
		for i := range args {
			if i+1 < len(f) {
				args[i], _ = strconv.ParseUint(strings.TrimPrefix(f[i+1], "0x"), 16, 64)
			}
		}
		name, timeoutArg, millis, known := sleepCall(nr)
		switch {
		case err != nil:
			s = "unknown"
		case !known:
			s = "syscall " + f[0]
		default:
			s = name + describeArgs(nr, timeoutArg, millis, args, timespec)
		}
	}
	if wchan != "" && wchan != "0" {
		s += " [" + wchan + "]"
	}
	return s
}

// describeArgs says what matters of a sleeping call's arguments: the
// KVM_RUN request, a futex's operation, and the timeout.
func describeArgs(nr, timeoutArg int, millis bool, args []uint64, timespec func(uint64) (time.Duration, bool)) string {
	var s string
	switch nr {
	case 16:
		if args[1] == kvmRun {
			return " KVM_RUN"
		}
		return fmt.Sprintf(" %#x", args[1])
	case 202:
		switch args[1] & 0x7f { // without FUTEX_PRIVATE_FLAG
		case 0:
			s = " wait"
		case 9:
			s = " wait_bitset" // absolute timeout: not shown
			timeoutArg = -1
		default:
			return fmt.Sprintf(" op %d", args[1]&0x7f)
		}
	case 230:
		if args[1]&1 != 0 { // TIMER_ABSTIME
			return " absolute"
		}
	}
	switch {
	case timeoutArg < 0:
		return s
	case millis:
		ms := int32(uint32(args[timeoutArg]))
		if ms < 0 {
			return s + " no timeout"
		}
		return s + " " + roundDuration(time.Duration(ms)*time.Millisecond).String()
	case args[timeoutArg] == 0:
		return s + " no timeout"
	}
	d, ok := timespec(args[timeoutArg])
	if !ok {
		return s + " timed"
	}
	return s + " " + roundDuration(d).String()
}

// readTimespec reads a struct timespec at addr in a process's memory
// file.
func readTimespec(memPath string, addr uint64) (time.Duration, bool) {
	if addr > math.MaxInt64 {
		return 0, false
	}
	f, err := os.Open(memPath)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var b [16]byte
	if _, err := f.ReadAt(b[:], int64(addr)); err != nil {
		return 0, false
	}
	sec, nsec := int64(binary.LittleEndian.Uint64(b[:8])), int64(binary.LittleEndian.Uint64(b[8:]))
	if sec < 0 || nsec < 0 || nsec >= 1e9 || sec > 1<<32 {
		return 0, false
	}
	return time.Duration(sec)*time.Second + time.Duration(nsec), true
}

// roundDuration rounds d to one significant digit, so that the timeouts
// of repeated sleeps fall into few groups (9.98ms and 10.01ms are 10ms).
func roundDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	unit := time.Duration(1)
	for d/unit >= 10 {
		unit *= 10
	}
	return (d + unit/2) / unit * unit
}
