package jail

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEnterRefusesHostMountNamespace(t *testing.T) {
	host, err := HostMountNamespace()
	if err != nil {
		t.Fatal(err)
	}
	err = Enter(Config{Root: t.TempDir(), UID: 64434, GID: 64434, HostMountNS: host})
	if !errors.Is(err, ErrHostMountNamespace) {
		t.Fatalf("Enter in our own namespace as the host's: %v", err)
	}
}

func TestEnterRefusesRoot(t *testing.T) {
	for _, ids := range [][2]int{{0, 64434}, {64434, 0}, {-1, 5}} {
		if err := Enter(Config{Root: t.TempDir(), UID: ids[0], GID: ids[1]}); err == nil {
			t.Errorf("uid %d gid %d accepted", ids[0], ids[1])
		}
	}
}

// Limit with zeros changes nothing.
func TestLimitZeroLeavesLimits(t *testing.T) {
	var before, after unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &before)
	if err := Limit(0, 0); err != nil {
		t.Fatal(err)
	}
	unix.Getrlimit(unix.RLIMIT_NOFILE, &after)
	if before != after {
		t.Errorf("RLIMIT_NOFILE %v -> %v", before, after)
	}
}

const helperEnv, hostNSEnv = "RF_JAIL_TEST_HELPER", "RF_JAIL_TEST_HOST_NS"

// TestMain runs the jailed helper when the test binary is re-executed
// for TestEnterJails.
func TestMain(m *testing.M) {
	if root := os.Getenv(helperEnv); root != "" {
		os.Exit(jailedHelper(root))
	}
	os.Exit(m.Run())
}

// jailedHelper enters a jail and reports what it sees, one key=value a
// line.
func jailedHelper(root string) int {
	if err := Enter(Config{Root: root, UID: 64434, GID: 64435, NoFile: 64, FileSize: 1 << 20, Sys: true, HostMountNS: os.Getenv(hostNSEnv)}); err != nil {
		fmt.Println("error=" + err.Error())
		return 1
	}
	status, err := os.ReadFile("/proc/self/status")
	fmt.Printf("proc=%v\n", err == nil && len(status) > 0)
	ents, _ := os.ReadDir("/")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	fmt.Println("root=" + strings.Join(names, ","))
	_, err = os.ReadFile("/sys/devices/system/cpu/online")
	fmt.Printf("sys=%v\n", err == nil)
	fmt.Printf("write_root=%v\n", os.WriteFile("/x", nil, 0o600) == nil)
	fmt.Printf("write_sys=%v\n", os.WriteFile("/sys/kernel/mm/hugepages/x", nil, 0o600) == nil)
	fmt.Printf("uid=%d gid=%d groups=%v\n", os.Getuid(), os.Getgid(), len(must(os.Getgroups())))
	var nofile, fsize unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile)
	unix.Getrlimit(unix.RLIMIT_FSIZE, &fsize)
	fmt.Printf("nofile=%d fsize=%d\n", nofile.Max, fsize.Max)
	nnp, _ := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	fmt.Printf("nnp=%d\n", nnp)
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	unix.Capget(&hdr, &data[0])
	fmt.Printf("capeff=%x\n", uint64(data[0].Effective)|uint64(data[1].Effective)<<32)
	return 0
}

func must[T any](v T, _ error) T { return v }

// A process started in new namespaces and jailed sees an empty read-only
// root with a read-only /sys, runs as the unprivileged ids with no
// capabilities and no new privileges, and has the limits.
func TestEnterJails(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, mounts)")
	}
	root := filepath.Join(t.TempDir(), "jail")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	host, err := HostMountNamespace()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), helperEnv+"="+root, hostNSEnv+"="+host)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true,
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{"root=sys\n", "sys=true\n", "write_root=false\n", "write_sys=false\n",
		"uid=64434 gid=64435 groups=0\n", "nofile=64 fsize=1048576\n", "nnp=1\n", "capeff=0\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("helper output lacks %q:\n%s", want, got)
		}
	}
	// The host's view is untouched: the directory is still empty here.
	if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
		t.Errorf("jail root on the host: %v, %v", ents, err)
	}
}
