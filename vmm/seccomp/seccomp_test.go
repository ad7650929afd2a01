package seccomp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/consolelog"
	"rainforest/vmm/jail"
	"rainforest/vmm/ram"
	"rainforest/vmm/vhost"
)

// The policy assembles into a BPF program, and every name is a system
// call of this architecture.
func TestPolicyAssembles(t *testing.T) {
	p := Policy()
	prog, err := p.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) == 0 {
		t.Fatal("empty program")
	}
	for _, forbidden := range []string{"openat", "execve", "ptrace", "mount", "setuid", "socket", "connect", "kill"} {
		for _, n := range Syscalls {
			if n == forbidden {
				t.Errorf("%s is on the allow-list", n)
			}
		}
	}
	if IoctlRequests["KVM_RUN"] != 0xae80 {
		t.Errorf("KVM_RUN = %#x", IoctlRequests["KVM_RUN"])
	}
}

// crash is what the Go runtime writes when a filtered system call traps
// (abridged from a real one: see TestForbiddenSyscallIsNamed).
const crash = `time=2026-12-03T01:00:00Z level=WARN msg="vcpu 0 running"
SIGSYS: bad system call
PC=0x47f2ae m=3 sigcode=1

goroutine 1 gp=0xc000002380 m=3 mp=0xc000080008 [syscall, locked to thread]:
syscall.Syscall(0x6e, 0x0, 0x0, 0x0)
	/usr/local/go/src/syscall/syscall_linux.go:73 +0x25

rax    0x6e
rbx    0x0
rcx    0x47f2ae
`

func TestViolation(t *testing.T) {
	if name, ok := Violation([]byte(crash)); !ok || name != "getppid" {
		t.Errorf("Violation = %q, %v; want getppid", name, ok)
	}
	for _, s := range []string{"", "panic: boom\n", "SIGSYS: bad system call\nno registers\n", "rax    0x6e\n",
		"SIGSYS: bad system call\nrax    0xzz\n"} {
		if name, ok := Violation([]byte(s)); ok {
			t.Errorf("Violation(%q) = %q", s, name)
		}
	}
	// An unknown number is named by its number.
	if name, ok := Violation([]byte("SIGSYS: bad system call\nrax    0xfffff\n")); !ok || name != "syscall 1048575" {
		t.Errorf("unknown number: %q, %v", name, ok)
	}
	// Only the last MaxTail bytes count: an old crash far back is not read.
	long := crash + strings.Repeat("x", MaxTail)
	if _, ok := Violation([]byte(long)); ok {
		t.Error("read beyond MaxTail")
	}
	// The last crash counts.
	two := strings.Replace(crash, "0x6e", "0x65", 1) + crash
	if name, _ := Violation([]byte(two)); name != "getppid" {
		t.Errorf("two crashes: %q", name)
	}
}

func FuzzViolation(f *testing.F) {
	f.Add([]byte(crash))
	f.Add([]byte("SIGSYS: bad system call\nrax 0x1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, ok := Violation(b)
		if ok && (name == "" || len(name) > 32 || strings.ContainsAny(name, "\n\x1b")) {
			t.Fatalf("Violation named %q", name)
		}
	})
}

const helperEnv = "RF_SECCOMP_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(filteredHelper(mode))
	}
	os.Exit(m.Run())
}

// filteredHelper jails itself (mode "jail:ROOT:HOSTNS") or not ("plain"),
// installs the filter, says "ready" and, on a vCPU-like locked thread,
// makes a forbidden system call (getppid) once stdin has a line.
func filteredHelper(mode string) int {
	// The console log is opened before the jail and the filter, as a
	// VMM's is (it arrives as a descriptor).
	logFile, err := os.CreateTemp("", "rf-seccomp-log-")
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	os.Remove(logFile.Name())
	if root, ok := strings.CutPrefix(mode, "jail:"); ok {
		root, host, _ := strings.Cut(root, ":")
		if err := jail.Enter(jail.Config{Root: root, UID: 64434, GID: 64434, NoFile: 256, FileSize: 1 << 20, HostMountNS: host}); err != nil {
			fmt.Println("error:", err)
			return 1
		}
	}
	// Hotplug memory is made before the filter, plugged (madvise
	// MADV_POPULATE_WRITE) and unplugged (fallocate PUNCH_HOLE) under it
	// (vmm/virtio/mem through vmm/ram).
	hot, err := ram.Allocate(ram.Options{Name: "rf-seccomp-hotplug", Size: 1 << 20, PageSize: ram.Page4K, Node: -1, NoReserve: true})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer hot.Close()
	if err := Install(); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if err := hot.Populate(0, 64<<10); err != nil {
		fmt.Println("error: plugging hotplug memory under the filter:", err)
		return 1
	}
	if err := hot.Release(0, 64<<10); err != nil {
		fmt.Println("error: unplugging hotplug memory under the filter:", err)
		return 1
	}
	// The console log rotates under the filter (fstat, pread64,
	// ftruncate, pwrite64).
	if err := rotateLog(logFile); err != nil {
		fmt.Println("error: console log under the filter:", err)
		return 1
	}
	// A vCPU thread is re-pinned and its affinity read from another
	// thread (vmm.Machine.PinVCPUs, VCPUPins).
	if err := repinThread(); err != nil {
		fmt.Println("error: re-pinning a thread under the filter:", err)
		return 1
	}
	// Opening a file fails, and the process lives on.
	if _, err := os.Open("/proc/self/status"); !errors.Is(err, unix.EACCES) {
		fmt.Println("error: open under the filter:", err)
		return 1
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		unix.Syscall(unix.SYS_GETPPID, 0, 0, 0)
		close(done)
	}()
	<-done
	fmt.Println("survived")
	return 0
}

// repinThread pins a locked thread, from another thread, to one of the
// cores it may run on, and reads its affinity back.
func repinThread() error {
	tids := make(chan int)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		tids <- unix.Gettid()
		<-release
	}()
	tid := <-tids
	defer close(release)
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		return fmt.Errorf("sched_getaffinity: %w", err)
	}
	core := -1
	for c := 0; c < len(set)*64 && core < 0; c++ {
		if set.IsSet(c) {
			core = c
		}
	}
	var one unix.CPUSet
	one.Set(core)
	if err := unix.SchedSetaffinity(tid, &one); err != nil {
		return fmt.Errorf("sched_setaffinity: %w", err)
	}
	if err := unix.SchedGetaffinity(tid, &set); err != nil || set != one {
		return fmt.Errorf("affinity after pinning to %d: %v (%v)", core, set, err)
	}
	return nil
}

// rotateLog writes four times a minimal cap's worth to a console log on f
// and checks that it rotated.
func rotateLog(f *os.File) error {
	w, err := consolelog.New(f, consolelog.Options{MaxSize: consolelog.MinMaxSize, Rate: 1 << 20, Burst: 1 << 20})
	if err != nil {
		return err
	}
	defer w.Close()
	line := bytes.Repeat([]byte("0123456789abcde\n"), consolelog.MinMaxSize/16)
	for range 4 {
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	if st := w.Stats(); st.Rotated == 0 {
		return fmt.Errorf("never rotated: %+v", st)
	}
	return nil
}

// runFiltered starts the helper, lets check look at it while it is
// filtered and waiting, then has it make the forbidden call; it returns
// the helper's stderr.
func runFiltered(t *testing.T, mode string, attr *syscall.SysProcAttr, check func(pid int)) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "GOTRACEBACK=single")
	cmd.SysProcAttr = attr
	var stderr strings.Builder
	cmd.Stderr = &stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Wait()
		t.Fatalf("helper: %q\n%s", line, stderr.String())
	}
	check(cmd.Process.Pid)
	io.WriteString(in, "go\n")
	err := cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || ws.ExitStatus() != 2 {
		t.Errorf("helper ended %v (want the runtime's exit 2 after SIGSYS)", err)
	}
	return stderr.String()
}

// A filtered process dies on a forbidden system call made on a locked
// thread, and Violation names the call from its stderr. No root needed.
func TestForbiddenSyscallIsNamed(t *testing.T) {
	stderr := runFiltered(t, "plain", nil, func(pid int) {
		if got := statusField(t, pid, "Seccomp"); got != "2" {
			t.Errorf("Seccomp: %s, want 2 (filter)", got)
		}
	})
	if name, ok := Violation([]byte(stderr)); !ok || name != "getppid" {
		t.Errorf("Violation = %q, %v\n%s", name, ok, stderr)
	}
}

// A jailed and filtered VMM-like process: unprivileged, no capabilities,
// no new privileges, filtered, in its own mount namespace; and killed by
// a forbidden call named from its stderr.
func TestJailedAndFiltered(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, mounts, identities)")
	}
	root := filepath.Join(t.TempDir(), "jail")
	os.Mkdir(root, 0o755)
	host, err := jail.HostMountNamespace()
	if err != nil {
		t.Fatal(err)
	}
	attr := &syscall.SysProcAttr{Setsid: true,
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET}
	stderr := runFiltered(t, "jail:"+root+":"+host, attr, func(pid int) {
		for field, want := range map[string]string{"Uid": "64434\t64434\t64434\t64434", "CapEff": "0000000000000000",
			"NoNewPrivs": "1", "Seccomp": "2"} {
			if got := statusField(t, pid, field); got != want {
				t.Errorf("%s: %q, want %q", field, got, want)
			}
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil || ns == host {
			t.Errorf("mount namespace %q (%v), the test's %q", ns, err, host)
		}
	})
	if name, ok := Violation([]byte(stderr)); !ok || name != "getppid" {
		t.Errorf("Violation = %q, %v\n%s", name, ok, stderr)
	}
}

func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// A net on vhost-net hands its queues over after the filter is in place
// (when the guest's driver starts the device): those ioctls are allowed,
// with the TAP's header size; those made before the filter are not.
func TestVhostNetIoctlsAllowed(t *testing.T) {
	for _, name := range []string{"VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE",
		"VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_GET_VRING_BASE", "VHOST_SET_VRING_ADDR",
		"VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL", "VHOST_NET_SET_BACKEND", "TUNSETVNETHDRSZ", "TUNSETOFFLOAD"} {
		if IoctlRequests[name] == 0 {
			t.Errorf("%s is not allowed", name)
		}
	}
	allowed := map[uint64]bool{}
	for _, r := range sortedRequests() {
		allowed[r] = true
	}
	for name, req := range vhost.IoctlRequests {
		// Owner and features are taken when the machine is built,
		// before the filter; the error eventfd is not used.
		before := name == "VHOST_SET_OWNER" || name == "VHOST_GET_FEATURES" || name == "VHOST_SET_VRING_ERR"
		if allowed[req] == before {
			t.Errorf("%s (%#x) allowed: %v, want %v", name, req, allowed[req], !before)
		}
	}
}
