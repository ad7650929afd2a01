package uplink

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// netnsPingEnv marks the child of TestPingHostSocket, run in a network
// namespace of its own.
const netnsPingEnv = "RF_UPLINK_PING_NETNS"

// netnsPingTarget is the address the child gives its loopback interface:
// not a loopback address, so the uplink forwards pings to it.
var netnsPingTarget = netip.MustParseAddr("192.0.2.1")

// The guest's ping through the host's own unprivileged ping socket. The
// host here may forbid ping sockets (net.ipv4.ping_group_range), a setting
// of each network namespace: as root the test runs itself in a new one
// where they are allowed. Without root it is skipped; TestUplink pings
// through the host's ping sockets wherever the host allows them.
func TestPingHostSocket(t *testing.T) {
	if os.Getenv(netnsPingEnv) == "1" {
		pingInNetns(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace that allows ping sockets")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPingHostSocket$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsPingEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) {
		t.Skipf("no network namespace for the test: %v", err)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: TestPingHostSocket") {
		t.Fatalf("the test in its network namespace: %v\n%s", err, out)
	}
}

// pingInNetns allows ping sockets in this (new) network namespace, brings
// its loopback interface up as netnsPingTarget, and pings it from the
// guest.
func pingInNetns(t *testing.T) {
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := ifr.SetInet4Addr(netnsPingTarget.AsSlice()); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		t.Fatalf("address for lo: %v", err)
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	r := startRig(t, Config{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}})
	defer r.stop(t)
	if why := r.u.PingUnavailable(); why != "" {
		t.Fatalf("ping sockets still forbidden: %s", why)
	}
	for seq := range uint16(3) {
		got, err := r.guest.ping(context.Background(), netnsPingTarget, seq, []byte("through the host"))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "through the host" {
			t.Errorf("echo data %q", got)
		}
	}
	if s := r.u.Stats(); s.PingTotal != 3 || s.DropPingDenied != 0 {
		t.Errorf("stats %+v", s)
	}
}
