package loop

import (
	"errors"
	"net/netip"
	"runtime"
	"testing"
	"time"

	vnet "rainforest/vmm/virtio/net"
)

// waitABit lets other goroutines run while a test waits for them to
// reach a state (no deadline: the test's own timeout bounds it).
func waitABit() {
	runtime.Gosched()
	time.Sleep(100 * time.Microsecond)
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Network: "lan", Members: members(3)}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*Config)) Config {
		c := ok
		c.Members = append([]Member(nil), ok.Members...)
		f(&c)
		return c
	}
	for _, c := range []struct {
		name string
		cfg  Config
		err  error
	}{
		{"one member", mod(func(c *Config) { c.Members = c.Members[:1] }), ErrTooFewMembers},
		{"no member", mod(func(c *Config) { c.Members = nil }), ErrTooFewMembers},
		{"too many", mod(func(c *Config) {
			for len(c.Members) <= MaxMembers {
				c.Members = append(c.Members, Member{MAC: vnet.MAC{2, 1, 1, 1, 1, byte(len(c.Members))}})
			}
		}), ErrConfig},
		{"self out of range", mod(func(c *Config) { c.Self = 3 }), ErrConfig},
		{"slots not a power of two", mod(func(c *Config) { c.Slots = 3000 }), ErrConfig},
		{"slots too few", mod(func(c *Config) { c.Slots = 1024 }), ErrConfig},
		{"multicast MAC", mod(func(c *Config) { c.Members[1].MAC = vnet.MAC{1, 0, 0x5e, 0, 0, 1} }), ErrConfig},
		{"zero MAC", mod(func(c *Config) { c.Members[1].MAC = vnet.MAC{} }), ErrConfig},
		{"same MAC", mod(func(c *Config) { c.Members[2].MAC = c.Members[0].MAC }), ErrConfig},
		{"same IP", mod(func(c *Config) { c.Members[2].IP = c.Members[0].IP }), ErrConfig},
		{"IPv6", mod(func(c *Config) { c.Members[2].IP = netip.MustParseAddr("fe80::1") }), ErrConfig},
		{"broadcast IP", mod(func(c *Config) { c.Members[2].IP = netip.MustParseAddr("255.255.255.255") }), ErrConfig},
		{"multicast IP", mod(func(c *Config) { c.Members[2].IP = netip.MustParseAddr("224.0.0.1") }), ErrConfig},
		{"unspecified IP", mod(func(c *Config) { c.Members[2].IP = netip.IPv4Unspecified() }), ErrConfig},
	} {
		if err := c.cfg.Validate(); !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
		}
	}
	if _, err := New(mod(func(c *Config) { c.Members = c.Members[:1] }), nil, nil); !errors.Is(err, ErrTooFewMembers) {
		t.Errorf("New with one member: %v", err)
	}
	if _, err := New(ok, make([][]byte, 2), nil); !errors.Is(err, ErrConfig) {
		t.Errorf("New with two lanes for three members: %v", err)
	}
}

func TestLinkLocal(t *testing.T) {
	got := netip.AddrFrom16(linkLocal(vnet.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}))
	if want := netip.MustParseAddr("fe80::5054:ff:fe12:3456"); got != want {
		t.Fatalf("link-local %s, want %s", got, want)
	}
}
