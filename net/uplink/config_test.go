package uplink

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

func TestParsePublish(t *testing.T) {
	good := map[string]Publish{
		"8080:80":               {Proto: TCP, HostPort: 8080, GuestPort: 80},
		"8080:80/udp":           {Proto: UDP, HostPort: 8080, GuestPort: 80},
		"127.0.0.1:8080:80/TCP": {Proto: TCP, HostAddr: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, GuestPort: 80},
		"[::1]:53:53/udp":       {Proto: UDP, HostAddr: netip.MustParseAddr("::1"), HostPort: 53, GuestPort: 53},
	}
	for s, want := range good {
		p, err := ParsePublish(s)
		if err != nil || p != want {
			t.Errorf("ParsePublish(%q) = %+v, %v; want %+v", s, p, err, want)
			continue
		}
		if again, err := ParsePublish(p.String()); err != nil || again != p {
			t.Errorf("%q: String %q parses as %+v, %v", s, p.String(), again, err)
		}
	}
	for _, s := range []string{"", "80", "0:80", "8080:0", "8080:80/sctp", "host:8080:80", "70000:80", "a:b", "[fe80::1%eth0]:1:2"} {
		if p, err := ParsePublish(s); !errors.Is(err, ErrConfig) {
			t.Errorf("ParsePublish(%q) = %+v, %v; want ErrConfig", s, p, err)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:0")}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Subnet.String() != DefaultSubnet || c.Gateway.String() != "10.0.2.2" || c.DNS.String() != "10.0.2.3" ||
		c.Guest.String() != "10.0.2.15" || c.MAC.String() != "52:55:0a:00:02:02" || c.MTU != 1500 {
		t.Errorf("defaults %+v", c)
	}
	if c.Nameservers[0].Port() != 53 {
		t.Errorf("nameserver port %d, want 53", c.Nameservers[0].Port())
	}
	small, err := Config{Subnet: netip.MustParsePrefix("192.168.9.16/28"), Nameservers: c.Nameservers}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if small.Guest.String() != "192.168.9.20" || small.Gateway.String() != "192.168.9.18" {
		t.Errorf("a /28: guest %v, gateway %v", small.Guest, small.Gateway)
	}
	bad := []Config{
		{Subnet: netip.MustParsePrefix("10.0.0.0/30")},
		{Subnet: netip.MustParsePrefix("fd00::/64")},
		{Guest: netip.MustParseAddr("10.0.3.15")},
		{Guest: netip.MustParseAddr("10.0.2.2")},
		{Gateway: netip.MustParseAddr("10.0.2.255")},
		{MTU: 100},
		{MAC: []byte{1, 2, 3, 4, 5, 6}},
		{Publish: []Publish{{Proto: TCP, HostPort: 1, GuestPort: 1}, {Proto: TCP, HostPort: 1, GuestPort: 2}}},
		{Publish: []Publish{{Proto: "sctp", HostPort: 1, GuestPort: 1}}},
	}
	for i, b := range bad {
		b.Nameservers = c.Nameservers
		if _, err := b.withDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("bad config %d (%+v): %v, want ErrConfig", i, b, err)
		}
	}
}

func TestResolvConf(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "resolv.conf")
	os.WriteFile(p, []byte("# comment\nsearch example.org\nnameserver 127.0.0.53\nnameserver ::1\nnameserver bogus\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions edns0\n"), 0o644)
	ns, err := ReadResolvConf(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("[::1]:53"), netip.MustParseAddrPort("192.0.2.1:53"),
	}
	if !reflect.DeepEqual(ns, want) {
		t.Errorf("nameservers %v, want %v", ns, want)
	}
	os.WriteFile(p, []byte("search example.org\n"), 0o644)
	if ns, _ := ReadResolvConf(p); len(ns) != 1 || ns[0].String() != "127.0.0.1:53" {
		t.Errorf("a file with no nameserver: %v, want the local resolver", ns)
	}
	if ns, err := ReadResolvConf(filepath.Join(dir, "missing")); err != nil || len(ns) != 1 || ns[0].String() != "127.0.0.1:53" {
		t.Errorf("no file: %v, %v; want the local resolver, as the C library", ns, err)
	}
	if _, err := ReadResolvConf(dir); err == nil {
		t.Error("a directory read as resolv.conf")
	}
	// The Config reads it when it names no nameservers.
	os.WriteFile(p, []byte("nameserver 192.0.2.7\n"), 0o644)
	c, err := Config{ResolvConf: p}.withDefaults()
	if err != nil || len(c.Nameservers) != 1 || c.Nameservers[0].String() != "192.0.2.7:53" {
		t.Errorf("Config from %s: %v, %v", p, c.Nameservers, err)
	}
}

func TestStaticCmdline(t *testing.T) {
	s, err := StaticCmdline(Config{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.3"; s != want {
		t.Errorf("StaticCmdline = %q, want %q", s, want)
	}
	s, err = StaticCmdline(Config{Subnet: netip.MustParsePrefix("172.30.0.0/16")}, "enp0s3")
	if err != nil || s != "ip=172.30.0.15::172.30.0.2:255.255.0.0::enp0s3:off:172.30.0.3" {
		t.Errorf("a /16 on enp0s3: %q, %v", s, err)
	}
	if _, err := StaticCmdline(Config{}, "eth0:1"); err == nil {
		t.Error("a device with a colon accepted")
	}
	if s, err := ImageCmdline(Config{}); err != nil || s != "rf.ip=10.0.2.15/24,10.0.2.2" {
		t.Errorf("ImageCmdline = %q, %v", s, err)
	}
	if _, err := ImageCmdline(Config{Subnet: netip.MustParsePrefix("10.0.0.0/31")}); err == nil {
		t.Error("a /31 accepted")
	}
}

func TestHostTarget(t *testing.T) {
	u := &Uplink{cfg: Config{
		Gateway: netip.MustParseAddr("10.0.2.2"), DNS: netip.MustParseAddr("10.0.2.3"),
		Nameservers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")},
	}, subnet: netip.MustParsePrefix(DefaultSubnet)}
	a := func(s string) tcpip.Address { return tcpip.AddrFrom4(netip.MustParseAddr(s).As4()) }
	cases := []struct {
		dst      string
		port     uint16
		tcp      bool
		loopback bool
		want     string // "" for refused
	}{
		{"198.51.100.1", 443, true, false, "198.51.100.1:443"},
		{"198.51.100.1", 53, false, false, "198.51.100.1:53"},
		{"10.0.2.3", 53, true, false, "192.0.2.53:53"},
		{"10.0.2.3", 53, false, false, ""}, // UDP is the forwarder's own socket
		{"10.0.2.3", 80, true, false, ""},
		{"10.0.2.2", 8080, true, false, ""},
		{"10.0.2.2", 8080, true, true, "127.0.0.1:8080"},
		{"10.0.2.77", 80, true, true, ""},
		{"127.0.0.1", 80, true, true, ""},
		{"0.0.0.0", 80, true, false, ""},
		{"224.0.0.251", 5353, false, false, ""},
		{"255.255.255.255", 68, false, false, ""},
		{"198.51.100.1", 0, true, false, ""},
	}
	for _, c := range cases {
		u.cfg.HostLoopback = c.loopback
		got, ok := u.hostTarget(a(c.dst), c.port, c.tcp)
		if (c.want == "") == ok || (ok && got.String() != c.want) {
			t.Errorf("hostTarget(%s:%d tcp=%v loopback=%v) = %v, %v; want %q", c.dst, c.port, c.tcp, c.loopback, got, ok, c.want)
		}
	}
}
