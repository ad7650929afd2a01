package images

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMmdebstrapArgs(t *testing.T) {
	args := mmdebstrapArgs("bookworm", "/o/debian-root", "/o/my cache", []string{"systemd", "fio"}, []string{"http://m/debian"}, true)
	for _, w := range []string{"--mode=root", "--format=directory", "--variant=minbase", "--include=systemd,fio",
		"--skip=essential/unlink", "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--hook-dir=" + mergedUsrHooks} {
		if !slices.Contains(args, w) {
			t.Errorf("args lack %q: %q", w, args)
		}
	}
	if tail := args[len(args)-4:]; !slices.Equal(tail, []string{"--", "bookworm", "/o/debian-root", "http://m/debian"}) {
		t.Errorf("args end in %q", tail)
	}
	hooks := strings.Join(args, "\n")
	if !strings.Contains(hooks, `'/o/my cache'/*.deb`) {
		t.Errorf("the cache directory is not quoted in the hooks:\n%s", hooks)
	}
	if slices.Contains(mmdebstrapArgs("bookworm", "/r", "/c", nil, nil, false), "--hook-dir="+mergedUsrHooks) {
		t.Error("merged-usr hooks without the hook directory")
	}
}

// TestMmdebstrapCacheHooks runs the setup and customize hooks as
// mmdebstrap would (sh -c HOOK exec ROOT): the cache's packages go into
// the root's apt archives, and afterwards the cache holds exactly the
// root's.
func TestMmdebstrapCacheHooks(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	cache, root := filepath.Join(t.TempDir(), "a cache"), t.TempDir()
	for _, f := range []string{"old_1.deb", "kept_1.deb"} {
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cache, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(prefix string) {
		for _, a := range mmdebstrapArgs("bookworm", root, cache, []string{"x"}, nil, false) {
			if hook, ok := strings.CutPrefix(a, prefix); ok {
				if out, err := exec.Command(sh, "-c", hook, "exec", root).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", a, err, out)
				}
			}
		}
	}
	run("--setup-hook=")
	archives := filepath.Join(root, "var/cache/apt/archives")
	if got, _ := filepath.Glob(filepath.Join(archives, "*.deb")); len(got) != 2 {
		t.Errorf("archives after setup: %q", got)
	}
	// apt installs: one package is gone from the set, one is new.
	os.Remove(filepath.Join(archives, "old_1.deb"))
	if err := os.WriteFile(filepath.Join(archives, "new_1.deb"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("--customize-hook=")
	ents, _ := os.ReadDir(cache)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"kept_1.deb", "new_1.deb"}) {
		t.Errorf("cache after the build: %q", names)
	}
}

func TestDebianDiskSize(t *testing.T) {
	const mib = 1 << 20
	if got, err := debianDiskSize(357*mib, 0); err != nil || got != 1472*mib {
		t.Errorf("auto size = %d MiB, %v", got/mib, err)
	}
	if got, err := debianDiskSize(357*mib, 4<<30); err != nil || got != 4<<30 {
		t.Errorf("4G = %d, %v", got, err)
	}
	if got, err := debianDiskSize(357*mib, 500*mib+1); err != nil || got != 512*mib {
		t.Errorf("500M+1 = %d MiB, %v", got/mib, err)
	}
	if _, err := debianDiskSize(357*mib, 390*mib); err == nil {
		t.Error("a disk too small for the content was accepted")
	}
}

func TestParseMountsUnder(t *testing.T) {
	info := `22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:5 / /o/debian-root/dev rw - devtmpfs udev rw
31 30 0:6 / /o/debian-root/dev/pts rw - devpts devpts rw
32 22 0:7 / /o/debian-root/proc rw - proc proc rw
33 22 0:8 / /o/debian-root2/proc rw - proc proc rw
34 22 0:9 / /o/with\040space/proc rw - proc proc rw
`
	got, err := parseMountsUnder(strings.NewReader(info), "/o/debian-root")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/o/debian-root/dev/pts", "/o/debian-root/proc", "/o/debian-root/dev"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, _ := parseMountsUnder(strings.NewReader(info), "/o/with space"); !slices.Equal(got, []string{"/o/with space/proc"}) {
		t.Errorf("escaped: %q", got)
	}
}

func TestUUIDOf(t *testing.T) {
	u := uuidOf([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if u != "ffffffff-ffff-4fff-bfff-ffffffffffff" {
		t.Errorf("uuid %s", u)
	}
}

func TestFindDebianNotBuilt(t *testing.T) {
	if _, err := FindDebian(t.TempDir()); !errors.Is(err, ErrDebianNotBuilt) {
		t.Errorf("err = %v", err)
	}
}

// TestDebianImageReal inspects a Debian image that was built (make
// image-debian; skipped otherwise) with debugfs: the settings, the
// agent and its service enabled, the kernel's modules, and no SSH host
// key baked in.
func TestDebianImageReal(t *testing.T) {
	img, err := FindDebian(imagesOut())
	if errors.Is(err, ErrDebianNotBuilt) {
		t.Skipf("no Debian image (make image-debian): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	debugfs, err := lookSbin("debugfs")
	if err != nil {
		t.Skip("no debugfs")
	}
	run := func(req string) string {
		out, err := exec.Command(debugfs, "-R", req, img.Disk).Output()
		if err != nil {
			t.Fatalf("debugfs %s: %v", req, err)
		}
		return string(out)
	}
	if got := run("cat /etc/fstab"); !strings.Contains(got, "LABEL="+DebianLabel) {
		t.Errorf("fstab:\n%s", got)
	}
	if got := run("cat /etc/ssh/sshd_config.d/rainforest.conf"); !strings.Contains(got, "PasswordAuthentication no") {
		t.Errorf("sshd settings:\n%s", got)
	}
	if got := run("ls /etc/ssh"); strings.Contains(got, "ssh_host_") {
		t.Errorf("SSH host keys are baked into the image:\n%s", got)
	}
	if got := run("stat /etc/machine-id"); !strings.Contains(got, "Size: 0") {
		t.Errorf("the image has a machine ID:\n%s", got)
	}
	for dir, name := range map[string]string{
		DebianToolsDir: "rf-agent",
		"/etc/systemd/system/multi-user.target.wants": "rf-agent.service",
		"/etc/systemd/system/sysinit.target.wants":    "systemd-network-generator.service",
		"/etc/systemd/system/ssh.service.wants":       "rf-ssh-host-keys.service",
		"/usr/lib/modules/" + img.KernelVersion:       "modules.dep.bin",
	} {
		if got := run("ls " + dir); !strings.Contains(got, name) {
			t.Errorf("%s lacks %s:\n%s", dir, name, got)
		}
	}
	pkgs, err := os.ReadFile(img.Packages)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"systemd", "openssh-server", "iperf3", "fio", "systemd-resolved"} {
		if !strings.Contains(string(pkgs), "\n"+p+" ") {
			t.Errorf("package %s not installed", p)
		}
	}
}
