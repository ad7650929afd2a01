package supervisor

import (
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/internal/peercred"
	"rainforest/ledger"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	"rainforest/vmm/consolesock"
	"rainforest/vmm/jail"
	"rainforest/vmm/seccomp"
)

// The jailed VMM's identity when none is configured: the user
// DefaultVMMUser where it exists, else DefaultVMMID (uid and gid; no
// /etc/passwd entry is needed).
const (
	DefaultVMMUser = "rainforest-vmm"
	DefaultVMMID   = 64434
)

// JailConfig says how VMMs are confined (vmm/jail, vmm/seccomp).
type JailConfig struct {
	// Disabled starts VMMs unjailed (still in their own namespaces and
	// with their files as descriptors).
	Disabled bool
	// UID and GID are the VMMs' identity (DefaultVMMIDs when 0).
	UID, GID int
	// NoSeccomp leaves jailed VMMs without their system-call filter
	// (debugging).
	NoSeccomp bool
	// KVMPath is the KVM device ("/dev/kvm" when empty).
	KVMPath string
}

// DefaultVMMIDs returns DefaultVMMUser's uid and gid, or DefaultVMMID.
func DefaultVMMIDs() (uid, gid int) {
	if u, err := user.Lookup(DefaultVMMUser); err == nil {
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 == nil && err2 == nil && uid > 0 && gid > 0 {
			return uid, gid
		}
	}
	return DefaultVMMID, DefaultVMMID
}

// VMM resource bounds behind its cgroup's memory.max and pids.max.
const (
	// vmmOverhead is the VMM's own memory beside guest RAM (hugetlb,
	// not charged to memory.max): the Go runtime, device queues and
	// bounce buffers, page cache of buffered disk I/O (reclaimable).
	vmmOverhead = 512 << 20
	// vmmOverheadPerVCPU adds each vCPU's kvm_run page, stacks and
	// runtime structures, with room.
	vmmOverheadPerVCPU = 16 << 20
	// baseThreads: the runtime's sysmon, template thread and threads
	// blocked in system calls (disk I/O, accept, reads of eventfds).
	baseThreads = 128
)

// vmmLimits are the VMM's cgroup limits for doc: memory for the VMM
// itself, the regions it maps (shared memory pages may be charged to it)
// and guest RAM, hotplug memory included, when it is not hugetlb ("4k"); tasks for each vCPU's
// locked thread and as many runtime threads, plus the base.
func vmmLimits(doc *config.Document) (memoryMax uint64, pidsMax int) {
	vcpus := max(doc.MaxVCPUs, len(doc.Cores))
	memoryMax = vmmOverhead + vmmOverheadPerVCPU*uint64(vcpus)
	for _, r := range doc.Regions {
		memoryMax += r.RWSize + uint64(r.Peers)*r.OutputSize + 1<<20
	}
	if doc.PageSize == "4k" {
		memoryMax += doc.Memory + doc.HotplugMemory
	}
	// Room for the virtiofsd of every share the subOS may have (hot-added
	// ones too): they run in its cgroup.
	memoryMax += config.MaxShares * backendMemory
	return memoryMax, baseThreads + 2*vcpus + config.MaxShares*backendTasks
}

func (s *Supervisor) jailDir(name string) string {
	return filepath.Join(s.cfg.RunDir, "jail", name)
}

// vmmLogPath is the VMM's own log (its stdout and stderr); the guest's
// console goes to logPath.
func (s *Supervisor) vmmLogPath(name string) string {
	return filepath.Join(s.cfg.RunDir, name+".vmm.log")
}

// confine gives doc its descriptors (the files it would open, opened
// here: the VMM opens no path, and extra, already open, which it takes
// charge of) and, unless disabled, its jail. The caller closes the files
// once the VMM has them (closeNamed); undo removes the jail directory.
func (s *Supervisor) confine(doc *config.Document, extra map[string]*os.File) (named map[string]*os.File, undo func(), err error) {
	var made []string // what undo removes, newest last
	undo = func() {
		for i := len(made) - 1; i >= 0; i-- {
			os.Remove(made[i])
		}
	}
	named = map[string]*os.File{}
	for name, f := range extra {
		named[name] = f
		delete(extra, name)
	}
	defer func() {
		if err != nil {
			closeNamed(named)
			undo()
		}
	}()
	open := func(name, path string, flag int) error {
		f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return &ProblemsError{Problems: []ledger.Problem{{Field: name, Message: err.Error()}}}
		}
		named[name] = f
		return nil
	}
	kvmPath := s.cfg.Jail.KVMPath
	if kvmPath == "" {
		kvmPath = "/dev/kvm"
	}
	// Without a usable /dev/kvm the VMM reports why, as it did when it
	// opened the device itself.
	if err := open(config.FileKVM, kvmPath, os.O_RDWR); err != nil {
		s.log.Warn("no KVM descriptor for the VMM", "err", err)
	}
	if err := open(config.FileKernel, doc.Kernel, os.O_RDONLY); err != nil {
		return nil, undo, err
	}
	if doc.Initrd != "" {
		if err := open(config.FileInitrd, doc.Initrd, os.O_RDONLY); err != nil {
			return nil, undo, err
		}
	}
	for _, d := range doc.WithDiskIDs() {
		if err := open(config.DiskFile(d.ID), d.Path, diskFlags(d)); err != nil {
			return nil, undo, err
		}
	}
	// Readable too: the VMM rotates the log on this descriptor, keeping
	// its newest part (vmm/consolelog).
	if err := open(config.FileConsoleLog, doc.Console.Path, os.O_CREATE|os.O_RDWR|os.O_APPEND); err != nil {
		return nil, undo, err
	}
	made = append(made, doc.Console.Path)
	group := peercred.NoGroup
	if s.cfg.SocketGroup > 0 {
		group = s.cfg.SocketGroup
	}
	doc.Console.Group = s.cfg.SocketGroup
	ln, err := consolesock.NewListener(doc.Console.Socket, group)
	if err != nil {
		return nil, undo, err
	}
	ln.SetUnlinkOnClose(false) // the socket is the VMM's to serve now
	made = append(made, doc.Console.Socket)
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, undo, fmt.Errorf("console socket: %w", err)
	}
	named[config.FileConsoleSocket] = lf
	if v := doc.Vsock; v != nil {
		// The vsock device's host socket, as the console's: the jailed
		// VMM has no path to create it at.
		vln, err := peercred.ListenUnix(v.Socket, 0o600, peercred.NoGroup)
		if err != nil {
			return nil, undo, fmt.Errorf("vsock socket: %w", err)
		}
		vln.SetUnlinkOnClose(false) // the VMM's to serve now
		made = append(made, v.Socket)
		vf, err := vln.File()
		vln.Close()
		if err != nil {
			return nil, undo, fmt.Errorf("vsock socket: %w", err)
		}
		named[config.FileVsockSocket] = vf
	}
	_, doc.Files = vmmctl.LaunchFiles(nil, named)
	if s.cfg.Jail.Disabled {
		return named, undo, nil
	}
	uid, gid := s.cfg.Jail.UID, s.cfg.Jail.GID
	if uid == 0 || gid == 0 {
		uid, gid = DefaultVMMIDs()
	}
	host, err := jail.HostMountNamespace()
	if err != nil {
		return nil, undo, err
	}
	dir := s.jailDir(doc.Name)
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, undo, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return nil, undo, err
	}
	made = append(made, dir)
	doc.Jail = &config.Jail{Root: dir, UID: uid, GID: gid, HostMountNS: host}
	doc.NoSeccomp = s.cfg.Jail.NoSeccomp
	return named, undo, nil
}

// diskFlags opens a disk as the VMM would: read-only for ro, O_DIRECT for
// direct.
func diskFlags(d config.Disk) int {
	flag := os.O_RDWR
	if d.ReadOnly {
		flag = os.O_RDONLY
	}
	if d.Direct {
		flag |= unix.O_DIRECT
	}
	return flag
}

func closeNamed(named map[string]*os.File) {
	for _, f := range named {
		f.Close()
	}
}

// Exit describes how a subOS's VMM ended on its own.
type Exit struct {
	Time time.Time `json:"time"`
	// Seccomp names the system call the VMM was killed for making, when
	// its filter stopped it.
	Seccomp string `json:"seccomp,omitempty"`
	// Log is the last line of the VMM's own log.
	Log string `json:"log,omitempty"`
}

// maxExits bounds the exits remembered for subOSes gone.
const maxExits = 64

// fileSize is path's size (0 when it cannot be read).
func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// vmmExit reads how a VMM ended from the end of its own log (at most
// seccomp.MaxTail bytes, none before from: the log is appended to by every
// VMM of the name, and an older crash is not this one's).
func vmmExit(logPath string, from int64) Exit {
	e := Exit{Time: time.Now().UTC(), Log: logTail(logPath, 1)}
	if len(e.Log) > 512 {
		e.Log = e.Log[:512]
	}
	if f, err := os.Open(logPath); err == nil {
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			off := max(st.Size()-seccomp.MaxTail, from, 0)
			tail, _ := io.ReadAll(io.NewSectionReader(f, off, seccomp.MaxTail))
			if name, ok := seccomp.Violation(tail); ok {
				e.Seccomp = name
			}
		}
	}
	return e
}

// recordExit remembers e for name (Get shows it once the subOS is gone)
// and audits a seccomp violation.
func (s *Supervisor) recordExit(name string, e Exit) {
	if e.Seccomp != "" {
		s.event(s.cfg.Who, "seccomp", name, 0, "VMM killed by its seccomp filter: system call "+e.Seccomp)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exits == nil {
		s.exits = map[string]Exit{}
	}
	if _, ok := s.exits[name]; !ok && len(s.exits) >= maxExits {
		oldest := ""
		for n, x := range s.exits {
			if oldest == "" || x.Time.Before(s.exits[oldest].Time) {
				oldest = n
			}
		}
		delete(s.exits, oldest)
	}
	s.exits[name] = e
}
