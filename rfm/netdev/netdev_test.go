package netdev

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"br0", "rf-web0", "a", "abcdefghijklmno"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b", "tab\t", "é"} {
		if err := CheckName(bad); !errors.Is(err, ErrName) {
			t.Errorf("CheckName(%q) = %v, want ErrName", bad, err)
		}
	}
}

func TestMAC(t *testing.T) {
	a, b := MAC("web", 0), MAC("web", 1)
	if a.String() != MAC("web", 0).String() {
		t.Error("MAC is not deterministic")
	}
	if a.String() == b.String() || a.String() == MAC("db", 0).String() {
		t.Errorf("MACs collide: %s %s %s", a, b, MAC("db", 0))
	}
	for _, m := range []string{a.String(), b.String()} {
		mac, err := ParseMAC(m)
		if err != nil || mac[0]&0x02 == 0 {
			t.Errorf("MAC %s: %v, want a locally administered unicast address", m, err)
		}
	}
	for _, bad := range []string{"01:00:5e:00:00:01", "00:00:00:00:00:00", "nonsense", "02:00:00:00:00:00:00:01"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) accepted", bad)
		}
	}
}

// inNetns runs f on the test's goroutine, locked to its thread, in a new
// network namespace, so that the test's devices never touch the host's;
// it skips without root or /dev/net/tun. The thread goes back to the
// host's namespace before it is unlocked, even when f fails the test.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, TAP devices)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("cannot make a network namespace: %v", err)
	}
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the host's network namespace: %v", err)
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
	}()
	f()
}

func TestTAPAndBridge(t *testing.T) {
	inNetns(t, func() {
		if _, err := EnsureBridge("rfbr0", false); !errors.Is(err, ErrNoBridge) {
			t.Errorf("EnsureBridge of a missing bridge without create: %v, want ErrNoBridge", err)
		}
		if created, err := EnsureBridge("rfbr0", true); err != nil || !created {
			t.Fatalf("EnsureBridge create: %v %v", created, err)
		}
		if created, err := EnsureBridge("rfbr0", true); err != nil || created {
			t.Errorf("EnsureBridge of an existing bridge: created %v, %v", created, err)
		}
		if !Made("rfbr0") || Made("lo") || Made("nobr") {
			t.Errorf("Made: rfbr0 %v lo %v nobr %v; want only the bridge EnsureBridge made", Made("rfbr0"), Made("lo"), Made("nobr"))
		}
		if err := CheckBridge("lo"); !errors.Is(err, ErrNotBridge) {
			t.Errorf("CheckBridge(lo) = %v, want ErrNotBridge", err)
		}
		tap, err := OpenTAP("rftap0")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := OpenTAP("rftap0"); !errors.Is(err, ErrNameTaken) {
			t.Errorf("second TAP of the same name: %v, want ErrNameTaken", err)
		}
		if _, err := OpenTAP("lo"); !errors.Is(err, ErrNameTaken) {
			t.Errorf("TAP named lo: %v, want ErrNameTaken", err)
		}
		if err := Join(tap.Name, "nobridge"); !errors.Is(err, ErrNoBridge) {
			t.Errorf("Join to a missing bridge: %v", err)
		}
		if err := Join(tap.Name, "rfbr0"); err != nil {
			t.Fatal(err)
		}
		if ports, err := Ports("rfbr0"); err != nil || !slices.Equal(ports, []string{"rftap0"}) {
			t.Errorf("Ports = %v, %v", ports, err)
		}
		if err := RemoveBridge("rfbr0"); err == nil {
			t.Error("RemoveBridge removed a bridge with a port")
		}
		// The TAP goes when its last descriptor closes.
		tap.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := netlink.LinkByName("rftap0"); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the TAP outlived its descriptor")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := RemoveBridge("rfbr0"); err != nil {
			t.Fatal(err)
		}
		if err := RemoveBridge("rfbr0"); err != nil {
			t.Errorf("RemoveBridge of a bridge gone already: %v", err)
		}
	})
}
