package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runSwitchRoot runs the root= part of /init with the host's sh, with
// stand-ins for the commands it runs that print what they were asked
// ("CMD args"), and the new root at a temporary directory that has
// /sbin/init when withInit is set. mountFails makes the root mount fail.
func runSwitchRoot(t *testing.T, cmdline string, withInit, mountFails bool) []string {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	bin := t.TempDir()
	stub := func(name, body string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"insmod", "umount", "switch_root"} {
		stub(name, `echo "`+strings.ToUpper(name)+` $*"`)
	}
	stub("sleep", ":")
	stub("findfs", `[ "$1" = LABEL=rfdebian ] && echo /dev/rf-test-disk`)
	fail := "0"
	if mountFails {
		fail = "1"
	}
	stub("mount", `echo "MOUNT $*"; [ "$1" = --move ] || exit `+fail)
	newroot := t.TempDir()
	if withInit {
		if err := os.MkdirAll(filepath.Join(newroot, "sbin"), 0o755); err != nil {
			t.Fatal(err)
		}
		// An absolute link that resolves only inside the new root.
		if err := os.Symlink("/lib/systemd/systemd-not-on-this-host", filepath.Join(newroot, "sbin", "init")); err != nil {
			t.Fatal(err)
		}
	}
	s := l2Init(nil, []Module{{Name: "ext4"}})
	start := strings.Index(s, "param() {")
	end := strings.Index(s[start:], "\n}\n") + start + 3
	part := switchRoot([]Module{{Name: "ext4"}})
	if !strings.Contains(s, part) {
		t.Fatal("/init lacks the root= part")
	}
	script := "PATH=" + bin + ":$PATH\ncmdline='" + cmdline + "'\n" + s[start:end] + strings.ReplaceAll(part, "/newroot", newroot) + "echo FELL-THROUGH\n"
	out, err := exec.Command(sh, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	return strings.Split(strings.TrimSpace(strings.ReplaceAll(string(out), newroot, "NEWROOT")), "\n")
}

func TestSwitchRoot(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline        string
		withInit, mountFails bool
		want                 []string
	}{
		// Without root= the default /init runs on as before: not one
		// command.
		{"no root", "console=ttyS0 rf.cmd=true", true, false, []string{"FELL-THROUGH"}},
		{"label", "console=ttyS0 root=LABEL=rfdebian quiet", true, false, []string{
			"INSMOD /lib/modules/ext4.ko", "MOUNT -o ro /dev/rf-test-disk NEWROOT", RootSwitchMarker + " /dev/rf-test-disk",
			"UMOUNT /tmp", "MOUNT --move /dev NEWROOT/dev", "MOUNT --move /sys NEWROOT/sys", "MOUNT --move /proc NEWROOT/proc",
			"SWITCH_ROOT NEWROOT /sbin/init"}},
		{"rf.root wins, rw, rootfstype", "root=/dev/rf-test-none rf.root=LABEL=rfdebian rw rootfstype=ext4", true, false, []string{
			"INSMOD /lib/modules/ext4.ko", "MOUNT -t ext4 -o rw /dev/rf-test-disk NEWROOT", RootSwitchMarker + " /dev/rf-test-disk",
			"UMOUNT /tmp", "MOUNT --move /dev NEWROOT/dev", "MOUNT --move /sys NEWROOT/sys", "MOUNT --move /proc NEWROOT/proc",
			"SWITCH_ROOT NEWROOT /sbin/init"}},
		{"no device", "root=/dev/rf-test-none", true, false, []string{
			"INSMOD /lib/modules/ext4.ko", RootFailedMarker + " /dev/rf-test-none: no such block device", "FELL-THROUGH"}},
		{"mount fails", "root=LABEL=rfdebian", true, true, []string{
			"INSMOD /lib/modules/ext4.ko", "MOUNT -o ro /dev/rf-test-disk NEWROOT", RootFailedMarker + " LABEL=rfdebian: cannot mount /dev/rf-test-disk", "FELL-THROUGH"}},
		{"no init", "root=LABEL=rfdebian init=/bin/systemd", true, false, []string{
			"INSMOD /lib/modules/ext4.ko", "MOUNT -o ro /dev/rf-test-disk NEWROOT", "UMOUNT NEWROOT",
			RootFailedMarker + " LABEL=rfdebian: no /bin/systemd on /dev/rf-test-disk", "FELL-THROUGH"}},
		{"empty disk", "root=LABEL=rfdebian", false, false, []string{
			"INSMOD /lib/modules/ext4.ko", "MOUNT -o ro /dev/rf-test-disk NEWROOT", "UMOUNT NEWROOT",
			RootFailedMarker + " LABEL=rfdebian: no /sbin/init on /dev/rf-test-disk", "FELL-THROUGH"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := runSwitchRoot(t, tc.cmdline, tc.withInit, tc.mountFails)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestL2InitWithoutRootModules checks that a kernel with ext4 built in
// gives a root= part with no insmod, and that the part is the only
// difference root modules make.
func TestL2InitWithoutRootModules(t *testing.T) {
	mods := []Module{{Name: "virtio"}}
	a, b := l2Init(mods, nil), l2Init(mods, []Module{{Name: "ext4"}})
	if strings.Contains(switchRoot(nil), "insmod") {
		t.Error("insmod without root modules")
	}
	if strings.Replace(b, switchRoot([]Module{{Name: "ext4"}}), switchRoot(nil), 1) != a {
		t.Error("root modules change /init beyond the root= part")
	}
}

func TestBuiltinModules(t *testing.T) {
	dir := t.TempDir()
	if got := builtinModules(dir); len(got) != 0 {
		t.Errorf("without modules.builtin: %v", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := builtinModules(dir)
	if !got["ext4"] || !got["crc32c_generic"] || len(got) != 2 {
		t.Errorf("builtin %v", got)
	}
}
