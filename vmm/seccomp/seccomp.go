// Package seccomp is the jailed VMM's system-call filter: an allow-list,
// installed with TSYNC (every thread of the process, and every thread
// made later, gets it) after the jail (vmm/jail) and once the machine is
// built, before the guest runs. Anything else traps: SECCOMP_RET_TRAP
// raises SIGSYS, the Go runtime dies with "SIGSYS: bad system call" and a
// register dump whose rax is the system call's number on the VMM's stderr,
// and Violation names it from there. (SECCOMP_RET_KILL_PROCESS would leave
// the number only in the kernel's audit log, out of the supervisor's
// reach.)
//
// The list was worked out by running the KVM tier (vmm/*_kvm_test.go)
// under strace -f and reading what the VMM does after NewLinux: the Go
// runtime (futexes, signals for preemption, thread creation, memory), the
// netpoller, eventfds, positioned and vectored disk I/O, the control and
// console sockets (accept4, recvmsg and sendmsg with descriptors), mbind
// and sched_setaffinity (also on other threads: the control socket
// re-pins vCPU threads and reads their affinity, vmm.Machine.PinVCPUs),
// and ioctl. ioctl is allowed only for the request
// numbers the VMM makes: the KVM system, VM and vCPU ioctls it uses, the
// block-device queries of a hot-added disk, TCGETS/TCSETS of a stdio
// console, TUNSETOFFLOAD (a virtio-net driver starting its device sets
// its TAP's offloads, vmm/virtio/net/tap), and for a net on vhost-net
// TUNSETVNETHDRSZ and the vhost ioctls (vmm/vhost: the queues go to the
// kernel when the driver starts the device, and come back on reset); prctl only for PR_SET_NAME (vCPU threads name themselves).
// Opening files fails with EACCES instead of trapping: after the jail
// there is nothing to open (disks hot-added to a jailed VMM come as
// descriptors), but the disk model probes the image's file system
// (O_TMPFILE beside it, for discard support) and a block device's sysfs
// limits by path, and does without those when it cannot, which a
// hot-add after the filter then does (found running a jailed VMM under
// the filter: a trap there killed the VMM on its first hot-added disk).
//
// Per thread class. Cloud Hypervisor gives each thread kind its own
// filter. Here only the vCPU threads are known threads (LockOSThread):
// every other goroutine may run on any runtime thread, and the runtime
// makes new threads from whichever thread it is on. Measured on the KVM
// tier under strace -f (threads told apart by whether they made KVM_RUN):
// only KVM_RUN, KVM_SET_REGS, KVM_SET_SREGS and KVM_SET_MP_STATE were
// made on vCPU threads alone; the other threads made the VM ioctls too
// (KVM_IRQFD, KVM_IOEVENTFD, KVM_SET_GSI_ROUTING,
// KVM_SET_USER_MEMORY_REGION, KVM_GET_IRQCHIP: hot-add and removal from
// the control socket's goroutines), device models make them on the vCPU
// threads (a guest's BAR move or MSI-X unmask), and the system calls
// other than ioctl were the same in both classes (the runtime's).
// So a class filter would take four ioctls away from non-vCPU threads,
// and could not be put on them: filters only ever narrow (a thread runs
// every filter it has) and "the threads that are not vCPUs" cannot be
// reached from Go before they exist. The VMM has one process-wide list.
//
// The filter is built with github.com/elastic/go-seccomp-bpf: pure Go (no
// libseccomp, so rfm stays a static CGO_ENABLED=0 binary), maintained by
// Elastic for Beats, with per-architecture system-call tables (which
// Violation uses to name numbers) and argument conditions (for ioctl).
package seccomp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strconv"

	libseccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"

	"rainforest/vmm/vhost"
)

// ErrUnsupported means the kernel or the architecture has no seccomp
// filters.
var ErrUnsupported = errors.New("seccomp: filters not supported here")

// Syscalls are the system calls a built VMM makes (other than ioctl,
// which is allowed by request number: IoctlRequests).
var Syscalls = []string{
	// Go runtime: scheduling, memory, signals, threads.
	"futex", "nanosleep", "clock_nanosleep", "sched_yield", "sched_getaffinity", "sched_setaffinity",
	"getpid", "gettid", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	"mmap", "munmap", "mprotect", "madvise", "mbind", "brk", "clone", "clone3", "set_robust_list", "rseq",
	"exit", "exit_group", "restart_syscall", "getrandom", "clock_gettime", "gettimeofday", "prlimit64", "getrlimit",
	// Descriptors, the netpoller, eventfds, polling.
	"read", "write", "readv", "writev", "close", "fcntl", "fstat", "newfstatat", "lseek",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2", "ppoll", "poll",
	// Disks.
	"pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "fallocate", "fsync", "fdatasync",
	// The console log rotating in place on its descriptor (vmm/consolelog).
	"ftruncate",
	// Sockets (control and console; received descriptors).
	"accept4", "recvmsg", "sendmsg", "recvfrom", "sendto", "getsockopt", "setsockopt", "getsockname",
	"getpeername", "shutdown",
}

// KVM ioctl request numbers (linux/kvm.h, x86-64).
const (
	kvmGetAPIVersion       = 0xae00
	kvmCreateVM            = 0xae01
	kvmCheckExtension      = 0xae03
	kvmGetVCPUMmapSize     = 0xae04
	kvmGetSupportedCPUID   = 0xc008ae05
	kvmCreateVCPU          = 0xae41
	kvmSetUserMemoryRegion = 0x4020ae46
	kvmSetTSSAddr          = 0xae47
	kvmSetIdentityMapAddr  = 0x4008ae48
	kvmCreateIRQChip       = 0xae60
	kvmGetIRQChip          = 0xc208ae62
	kvmIRQLineStatus       = 0xc008ae67
	kvmSetGSIRouting       = 0x4008ae6a
	kvmIRQFD               = 0x4020ae76
	kvmCreatePIT2          = 0x4040ae77
	kvmIOEventFD           = 0x4040ae79
	kvmRun                 = 0xae80
	kvmGetRegs             = 0x8090ae81
	kvmSetRegs             = 0x4090ae82
	kvmGetSregs            = 0x8138ae83
	kvmSetSregs            = 0x4138ae84
	kvmSetMSRs             = 0x4008ae89
	kvmGetLAPIC            = 0x8400ae8e
	kvmSetLAPIC            = 0x4400ae8f
	kvmSetCPUID2           = 0x4008ae90
	kvmSetMPState          = 0x4004ae99
	kvmSignalMSI           = 0x4020aea5
)

// IoctlRequests are the ioctl requests allowed, by name (the names are
// for the test and for reading; the filter matches numbers).
var IoctlRequests = withVhost(map[string]uint64{
	"KVM_GET_API_VERSION": kvmGetAPIVersion, "KVM_CREATE_VM": kvmCreateVM, "KVM_CHECK_EXTENSION": kvmCheckExtension,
	"KVM_GET_VCPU_MMAP_SIZE": kvmGetVCPUMmapSize, "KVM_GET_SUPPORTED_CPUID": kvmGetSupportedCPUID,
	"KVM_CREATE_VCPU": kvmCreateVCPU, "KVM_SET_USER_MEMORY_REGION": kvmSetUserMemoryRegion,
	"KVM_SET_TSS_ADDR": kvmSetTSSAddr, "KVM_SET_IDENTITY_MAP_ADDR": kvmSetIdentityMapAddr,
	"KVM_CREATE_IRQCHIP": kvmCreateIRQChip, "KVM_GET_IRQCHIP": kvmGetIRQChip, "KVM_IRQ_LINE_STATUS": kvmIRQLineStatus,
	"KVM_SET_GSI_ROUTING": kvmSetGSIRouting, "KVM_IRQFD": kvmIRQFD, "KVM_CREATE_PIT2": kvmCreatePIT2,
	"KVM_IOEVENTFD": kvmIOEventFD, "KVM_RUN": kvmRun, "KVM_GET_REGS": kvmGetRegs, "KVM_SET_REGS": kvmSetRegs,
	"KVM_GET_SREGS": kvmGetSregs, "KVM_SET_SREGS": kvmSetSregs, "KVM_SET_MSRS": kvmSetMSRs,
	"KVM_GET_LAPIC": kvmGetLAPIC, "KVM_SET_LAPIC": kvmSetLAPIC, "KVM_SET_CPUID2": kvmSetCPUID2,
	"KVM_SET_MP_STATE": kvmSetMPState, "KVM_SIGNAL_MSI": kvmSignalMSI,
	"BLKROGET": unix.BLKROGET, "BLKGETSIZE64": unix.BLKGETSIZE64, "BLKSSZGET": unix.BLKSSZGET,
	"BLKDISCARD": unix.BLKDISCARD, "BLKZEROOUT": unix.BLKZEROOUT,
	"TCGETS": unix.TCGETS, "TCSETS": unix.TCSETS,
	"TUNSETOFFLOAD": unix.TUNSETOFFLOAD, "TUNSETVNETHDRSZ": unix.TUNSETVNETHDRSZ,
})

// vhostRuntimeIoctls are the vhost-net ioctls (vmm/vhost) a net makes
// after the filter is in place: its queues go to the host kernel when its
// driver starts the device and come back on reset
// (vmm/virtio/net/vhostnet). VHOST_SET_OWNER and VHOST_GET_FEATURES are
// made when the machine is built, before the filter, and stay out.
var vhostRuntimeIoctls = []string{
	"VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE", "VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE",
	"VHOST_GET_VRING_BASE", "VHOST_SET_VRING_ADDR", "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL",
	"VHOST_NET_SET_BACKEND",
}

// withVhost adds vhostRuntimeIoctls to reqs.
func withVhost(reqs map[string]uint64) map[string]uint64 {
	for _, name := range vhostRuntimeIoctls {
		reqs[name] = vhost.IoctlRequests[name]
	}
	return reqs
}

// openAction makes opening a file fail with EACCES.
const openAction = libseccomp.ActionErrno | libseccomp.Action(unix.EACCES)

// Policy is the allow-list; everything else traps.
func Policy() libseccomp.Policy {
	ioctls := make([]libseccomp.NameWithConditions, 0, len(IoctlRequests))
	for _, req := range sortedRequests() {
		ioctls = append(ioctls, libseccomp.NameWithConditions{Name: "ioctl", Conditions: libseccomp.ArgumentConditions{
			{Argument: 1, Operation: libseccomp.Equal, Value: req},
		}})
	}
	// prctl only names threads (vCPU threads call PR_SET_NAME as they
	// start).
	prctl := libseccomp.NameWithConditions{Name: "prctl", Conditions: libseccomp.ArgumentConditions{
		{Argument: 0, Operation: libseccomp.Equal, Value: unix.PR_SET_NAME},
	}}
	return libseccomp.Policy{
		DefaultAction: libseccomp.ActionTrap,
		Syscalls: []libseccomp.SyscallGroup{
			{Names: Syscalls, Action: libseccomp.ActionAllow},
			{NamesWithCondtions: append(ioctls, prctl), Action: libseccomp.ActionAllow},
			// Opening fails (EACCES) rather than kills: the disk model
			// probes its file system and sysfs by path and does without
			// when it cannot (see the package documentation).
			{Names: []string{"open", "openat", "openat2"}, Action: openAction},
		},
	}
}

// sortedRequests returns the request numbers in increasing order (a
// stable program).
func sortedRequests() []uint64 {
	out := make([]uint64, 0, len(IoctlRequests))
	for _, v := range IoctlRequests {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// Install puts the filter on every thread of the process (TSYNC), with
// PR_SET_NO_NEW_PRIVS (which TSYNC also sets on the other threads).
func Install() error {
	if runtime.GOOS != "linux" || !libseccomp.Supported() {
		return ErrUnsupported
	}
	f := libseccomp.Filter{NoNewPrivs: true, Flag: libseccomp.FilterFlagTSync, Policy: Policy()}
	if err := libseccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}

// MaxTail bounds what Violation reads: the end of the VMM's stderr.
const MaxTail = 64 << 10

var (
	sigsysLine = []byte("SIGSYS: bad system call")
	raxLine    = regexp.MustCompile(`^rax\s+0x([0-9a-f]{1,16})$`)
)

// Violation recognises the Go runtime's crash on a filtered system call
// in tail (the end of a VMM's stderr; only the last MaxTail bytes are
// read) and names the system call ("ptrace", or "syscall 1234" for a
// number the table lacks). ok is false when tail shows no such crash.
func Violation(tail []byte) (syscall string, ok bool) {
	if len(tail) > MaxTail {
		tail = tail[len(tail)-MaxTail:]
	}
	i := bytes.LastIndex(tail, sigsysLine)
	if i < 0 {
		return "", false
	}
	sc := bufio.NewScanner(bytes.NewReader(tail[i:]))
	sc.Buffer(make([]byte, 0, 4096), MaxTail)
	for sc.Scan() {
		m := raxLine.FindSubmatch(bytes.TrimSpace(sc.Bytes()))
		if m == nil {
			continue
		}
		n, err := strconv.ParseUint(string(m[1]), 16, 64)
		if err != nil {
			return "", false
		}
		return Name(n), true
	}
	return "", false
}

// Name names system call n of this architecture ("syscall N" when the
// table lacks it).
func Name(n uint64) string {
	if info, err := arch.GetInfo(""); err == nil && n < 1<<20 {
		if name, ok := info.SyscallNumbers[int(n)]; ok {
			return name
		}
	}
	return "syscall " + strconv.FormatUint(n, 10)
}
