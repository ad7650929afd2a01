package netdev

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

// ruleShape is what a rule matches, in words the test can compare:
// each Cmp as "base+off/len!=hex" or "proto==hex", then the verdict.
func ruleShape(t *testing.T, r GuardRule) []string {
	t.Helper()
	var out []string
	var loaded string
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Payload:
			if e.DestRegister != 1 {
				t.Errorf("payload into register %d", e.DestRegister)
			}
			base := map[expr.PayloadBase]string{expr.PayloadBaseLLHeader: "ll", expr.PayloadBaseNetworkHeader: "nh"}[e.Base]
			loaded = base + "+" + itoa(e.Offset) + "/" + itoa(e.Len)
		case *expr.Meta:
			if e.Key != expr.MetaKeyPROTOCOL {
				t.Errorf("meta key %v", e.Key)
			}
			loaded = "proto"
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "==", expr.CmpOpNeq: "!="}[e.Op]
			out = append(out, loaded+op+hexs(e.Data))
		case *expr.Counter:
			out = append(out, "counter")
		case *expr.Verdict:
			if e.Kind != expr.VerdictDrop {
				t.Errorf("verdict %v", e.Kind)
			}
			out = append(out, "drop")
		default:
			t.Errorf("unexpected expression %T", e)
		}
	}
	return out
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

func hexs(b []byte) string { return hex.EncodeToString(b) }

func TestGuardRules(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	rules, err := GuardRules(mac, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || rules[0].Counter != CounterSpoofedMAC {
		t.Fatalf("MAC-only guard: %+v", rules)
	}
	if got, want := ruleShape(t, rules[0]), []string{"ll+6/6!=020000000001", "counter", "drop"}; !slices.Equal(got, want) {
		t.Errorf("MAC rule %v, want %v", got, want)
	}

	rules, err = GuardRules(mac, netip.MustParseAddr("10.77.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		counter string
		shape   []string
	}{
		{CounterSpoofedMAC, []string{"ll+6/6!=020000000001", "counter", "drop"}},
		{CounterSpoofedIP, []string{"proto==0806", "nh+0/6!=000108000604", "counter", "drop"}},
		{CounterSpoofedMAC, []string{"proto==0806", "nh+8/6!=020000000001", "counter", "drop"}},
		{CounterSpoofedIP, []string{"proto==0806", "nh+14/4!=0a4d0002", "nh+14/4!=00000000", "counter", "drop"}},
		{CounterSpoofedIP, []string{"proto==0800", "nh+12/4!=0a4d0002", "nh+12/4!=00000000", "counter", "drop"}},
	}
	if len(rules) != len(want) {
		t.Fatalf("%d rules, want %d", len(rules), len(want))
	}
	for i, w := range want {
		if got := ruleShape(t, rules[i]); rules[i].Counter != w.counter || !slices.Equal(got, w.shape) {
			t.Errorf("rule %d: %s %v, want %s %v", i, rules[i].Counter, got, w.counter, w.shape)
		}
	}

	if _, err := GuardRules(mac, netip.MustParseAddr("fd00::2")); err == nil {
		t.Error("an IPv6 lock was taken")
	}
	if _, err := GuardRules(mac[:4], netip.Addr{}); err == nil {
		t.Error("a 4-byte MAC was taken")
	}
}

// frame is an Ethernet frame from src with EtherType typ and payload p,
// behind the zero virtio_net_hdr a TAP with IFF_VNET_HDR expects.
func frame(src net.HardwareAddr, typ uint16, p []byte) []byte {
	b := make([]byte, 10) // virtio_net_hdr: no offloads
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, p...)
}

// ipv4 is a minimal IPv4 header (UDP, no payload) from src.
func ipv4(src netip.Addr) []byte {
	h := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0}
	s := src.As4()
	h = append(h, s[:]...)
	return append(h, 10, 77, 0, 1)
}

// arp is an ARP request from sha/spa.
func arp(sha net.HardwareAddr, spa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	b = append(b, sha...)
	s := spa.As4()
	b = append(b, s[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, 10, 77, 0, 1)
}

// TestGuardKernel installs a guard on a TAP in a network namespace of
// its own, writes frames into the TAP as a guest would, and reads the
// counters back; it skips without root or nftables' netdev family.
func TestGuardKernel(t *testing.T) {
	inNetns(t, func() {
		if c, err := nftables.New(); err != nil {
			t.Skipf("no nftables: %v", err)
		} else if _, err := c.ListTablesOfFamily(nftables.TableFamilyNetdev); err != nil {
			t.Skipf("no nftables: %v", err)
		}
		tap, err := OpenTAP("rfguard0")
		if err != nil {
			t.Fatal(err)
		}
		defer tap.Close()
		if err := Join(tap.Name, ""); err != nil {
			t.Fatal(err)
		}
		mac, _ := net.ParseMAC("02:00:00:00:00:01")
		bad, _ := net.ParseMAC("02:00:00:00:00:99")
		own, other := netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("10.77.0.3")
		if err := (Host{}).GuardTAP(tap.Name, mac.String(), own); err != nil {
			if errors.Is(err, os.ErrPermission) {
				t.Skipf("nftables refused: %v", err)
			}
			t.Fatal(err)
		}
		// Installing again replaces the chain, and keeps one.
		if err := GuardTAP(tap.Name, mac, own); err != nil {
			t.Fatal(err)
		}
		send := func(f []byte) {
			t.Helper()
			if _, err := tap.File.Write(f); err != nil {
				t.Fatalf("write frame: %v", err)
			}
		}
		send(frame(bad, etherTypeIPv4, ipv4(own)))                     // MAC
		send(frame(bad, etherTypeIPv4, ipv4(own)))                     // MAC
		send(frame(mac, etherTypeIPv4, ipv4(other)))                   // IP
		send(frame(mac, etherTypeARP, arp(bad, own)))                  // ARP sender MAC
		send(frame(mac, etherTypeARP, arp(mac, other)))                // ARP sender IP
		send(frame(mac, etherTypeIPv4, ipv4(own)))                     // fine
		send(frame(mac, etherTypeIPv4, ipv4(netip.IPv4Unspecified()))) // DHCP: fine
		send(frame(mac, etherTypeARP, arp(mac, own)))                  // fine
		got, err := GuardCounters(tap.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got[CounterSpoofedMAC] != 3 || got[CounterSpoofedIP] != 2 {
			t.Errorf("counters %v, want %s 3, %s 2", got, CounterSpoofedMAC, CounterSpoofedIP)
		}
		if err := UnguardTAP(tap.Name); err != nil {
			t.Fatal(err)
		}
		if _, err := GuardCounters(tap.Name); !errors.Is(err, ErrNoGuard) {
			t.Errorf("counters after unguard: %v, want ErrNoGuard", err)
		}
		if err := UnguardTAP(tap.Name); err != nil {
			t.Errorf("unguard of a TAP without a guard: %v", err)
		}

		// The TAP goes with a guard on it: unguarding afterwards is clean.
		if err := GuardTAP(tap.Name, mac, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
		tap.Close()
		for i := 0; i < 250; i++ {
			if _, err := netlink.LinkByName(tap.Name); err != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if c, err := nftables.New(); err == nil {
			kept, err := hasChain(c, guardChainName(tap.Name))
			t.Logf("the kernel kept the chain of a TAP that went: %v (%v)", kept, err)
		}
		if err := UnguardTAP(tap.Name); err != nil {
			t.Errorf("unguard after the TAP went: %v", err)
		}
		if _, err := GuardCounters(tap.Name); !errors.Is(err, ErrNoGuard) {
			t.Errorf("a chain is left after the TAP went and unguard: %v", err)
		}
	})
}
