// Package jail confines a VMM process once it holds every file it needs,
// modelled on Firecracker's jailer: the process already runs in its own
// mount, PID, IPC and network namespaces (the supervisor starts it with
// those clone flags: a Go process cannot move all its threads into a new
// mount namespace by itself), and Enter then
//
//  1. makes every mount private (nothing propagates back to the host),
//  2. mounts a small read-only tmpfs on an empty directory the supervisor
//     made for this VMM and makes it the root (pivot_root), detaching the
//     old root: the VMM sees no host file at all, only, at /sys, a
//     read-only bind of sysfs (it reads the CPU topology and the hugepage
//     pools there),
//  3. lowers RLIMIT_NOFILE and RLIMIT_FSIZE to what the VMM needs,
//  4. drops every supplementary group and switches to an unprivileged
//     uid and gid (no /etc/passwd entry needed), which clears all
//     capabilities, and
//  5. sets PR_SET_NO_NEW_PRIVS.
//
// The VMM gets /dev/kvm, its kernel, initrd, disks and console as
// descriptors (vmm/config's descriptor table), so it needs no path after
// the jail. Nothing it does later needs root: hugetlb memfds, mbind and
// sched_setaffinity on its own threads are allowed to any user. The
// system-call filter (vmm/seccomp) comes after the jail.
package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrHostMountNamespace means Enter was called in the host's mount
// namespace: pivoting there would change the host's root.
var ErrHostMountNamespace = errors.New("jail: the process shares the host's mount namespace (start it with CLONE_NEWNS)")

// rootSize bounds the jail's tmpfs; it holds two empty directories.
const rootSize = "64k"

// Config is one jail.
type Config struct {
	// Root is an empty directory (made by the supervisor, per subOS) on
	// which the jail's root is mounted.
	Root string
	// UID and GID are the process's identity afterwards (not 0).
	UID, GID int
	// NoFile and FileSize are RLIMIT_NOFILE and RLIMIT_FSIZE (soft and
	// hard); 0 leaves a limit alone.
	NoFile, FileSize uint64
	// Sys bind-mounts the host's sysfs read-only at /sys.
	Sys bool
	// HostMountNS is the host's mount namespace as its starter read it
	// (HostMountNamespace: "mnt:[N]"; the starter's /proc/1 may be out of
	// reach), compared with the process's own before anything changes.
	HostMountNS string
}

// Enter confines the calling process (all its threads) as the package
// documentation says. On error the process is half-confined and should
// exit.
func Enter(cfg Config) error {
	if cfg.UID <= 0 || cfg.GID <= 0 {
		return fmt.Errorf("jail: uid %d, gid %d: want unprivileged ids", cfg.UID, cfg.GID)
	}
	if err := checkOwnMountNS(cfg.HostMountNS); err != nil {
		return err
	}
	if err := pivot(cfg.Root, cfg.Sys); err != nil {
		return err
	}
	if err := Limit(cfg.NoFile, cfg.FileSize); err != nil {
		return err
	}
	return DropPrivileges(cfg.UID, cfg.GID)
}

// HostMountNamespace names the calling process's mount namespace
// ("mnt:[N]"), for a starter to put in Config.HostMountNS.
func HostMountNamespace() (string, error) {
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return "", fmt.Errorf("jail: %w", err)
	}
	return ns, nil
}

// checkOwnMountNS refuses to go on in the host's mount namespace.
func checkOwnMountNS(host string) error {
	if host == "" {
		return fmt.Errorf("jail: the host's mount namespace is not known")
	}
	own, err := HostMountNamespace()
	if err != nil {
		return err
	}
	if own == host {
		return ErrHostMountNamespace
	}
	return nil
}

// pivot makes a read-only tmpfs on root the process's root.
func pivot(root string, sys bool) error {
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("jail: %s: %w", what, err)
		}
		return nil
	}
	if err := step("make mounts private", unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")); err != nil {
		return err
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := step("mount root", unix.Mount("tmpfs", root, "tmpfs", flags, "size="+rootSize+",mode=0755")); err != nil {
		return err
	}
	old := filepath.Join(root, "old")
	if err := step("old root", os.Mkdir(old, 0o700)); err != nil {
		return err
	}
	if sys {
		dir := filepath.Join(root, "sys")
		if err := step("sys", os.Mkdir(dir, 0o555)); err != nil {
			return err
		}
		// Not recursive: sysfs alone, without the cgroup and other file
		// systems mounted below it.
		if err := step("bind sys", unix.Mount("/sys", dir, "", unix.MS_BIND, "")); err != nil {
			return err
		}
		if err := step("sys read-only", unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|flags, "")); err != nil {
			return err
		}
	}
	if err := unix.PivotRoot(root, old); errors.Is(err, unix.EINVAL) {
		// The host's root is an initramfs (rootfs), which cannot be
		// pivoted away from: move the jail over it and chroot, as
		// switch_root does. The old root stays underneath, out of reach
		// of a process without CAP_SYS_CHROOT (dropped next).
		if err := moveRoot(root, old); err != nil {
			return err
		}
	} else if err := step("pivot_root", err); err != nil {
		return err
	} else {
		if err := step("chdir", unix.Chdir("/")); err != nil {
			return err
		}
		if err := step("detach old root", unix.Unmount("/old", unix.MNT_DETACH)); err != nil {
			return err
		}
		if err := step("remove old root", os.Remove("/old")); err != nil {
			return err
		}
	}
	return step("root read-only", unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""))
}

// moveRoot makes root the root where pivot_root cannot (an initramfs
// host): it moves the mount over "/" and chroots into it.
func moveRoot(root, old string) error {
	if err := os.Remove(old); err != nil {
		return fmt.Errorf("jail: remove old root: %w", err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("jail: chdir: %w", err)
	}
	if err := unix.Mount(root, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("jail: move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("jail: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("jail: chdir: %w", err)
	}
	return nil
}

// Limit sets RLIMIT_NOFILE and RLIMIT_FSIZE (soft = hard) where not 0.
// Raising a hard limit needs CAP_SYS_RESOURCE, so it comes before
// DropPrivileges.
func Limit(noFile, fileSize uint64) error {
	for _, l := range []struct {
		name     string
		resource int
		value    uint64
	}{{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, noFile}, {"RLIMIT_FSIZE", unix.RLIMIT_FSIZE, fileSize}} {
		if l.value == 0 {
			continue
		}
		if err := unix.Setrlimit(l.resource, &unix.Rlimit{Cur: l.value, Max: l.value}); err != nil {
			return fmt.Errorf("jail: %s %d: %w", l.name, l.value, err)
		}
	}
	return nil
}

// DropPrivileges drops the supplementary groups and sets the real,
// effective and saved gid and uid, on every thread (Go's syscall package
// applies them to all threads); leaving uid 0 clears the capabilities.
// Then it sets PR_SET_NO_NEW_PRIVS on every thread where the runtime can
// (without cgo), else on the calling thread (the seccomp filter's TSYNC
// then sets it on the others).
func DropPrivileges(uid, gid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("jail: setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("jail: setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("jail: setresuid %d: %w", uid, err)
	}
	return NoNewPrivileges()
}

// NoNewPrivileges sets PR_SET_NO_NEW_PRIVS on every thread (without cgo)
// or on the calling thread.
func NoNewPrivileges() error {
	_, _, errno := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0)
	if errno == syscall.ENOTSUP { // built with cgo
		return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
	}
	if errno != 0 {
		return fmt.Errorf("jail: PR_SET_NO_NEW_PRIVS: %w", errno)
	}
	return nil
}
