package uplink

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"rainforest/internal/tokenbucket"
)

// ErrConfig is wrapped by every error about a Config or a Publish that
// cannot work.
var ErrConfig = errors.New("uplink: bad configuration")

// DefaultSubnet is the network of an uplink whose Config names none: as
// slirp's, gateway 10.0.2.2, DNS 10.0.2.3, guest 10.0.2.15.
const DefaultSubnet = "10.0.2.0/24"

// DefaultResolvConf is where the host's resolvers are read from.
const DefaultResolvConf = "/etc/resolv.conf"

// Config is an uplink's network. The zero Config is slirp's 10.0.2.0/24
// with the host's resolvers and no published ports.
type Config struct {
	// Subnet is the private IPv4 network between the guest and the
	// uplink, from /8 to /29 (default DefaultSubnet). Its addresses are
	// the guest's and the uplink's only: no destination inside it is
	// forwarded.
	Subnet netip.Prefix
	// Gateway, DNS and Guest are addresses in Subnet: the uplink's router
	// (default the network's .2), its DNS forwarder (.3) and the one
	// address DHCP leases to the guest (.15).
	Gateway, DNS, Guest netip.Addr
	// MAC is the uplink's Ethernet address (default 52:55 then the
	// gateway's four bytes, as slirp's).
	MAC net.HardwareAddr
	// MTU is the link's IP MTU, also offered by DHCP (default 1500;
	// 576 to 65521).
	MTU int
	// Nameservers are the resolvers the DNS forwarder asks, in order
	// (port 53 when the port is 0). Default: the nameserver lines of
	// ResolvConf. A loopback resolver (systemd-resolved's 127.0.0.53)
	// works as it is: the uplink asks it from the host.
	Nameservers []netip.AddrPort
	// ResolvConf is read for Nameservers when none are given (default
	// DefaultResolvConf).
	ResolvConf string
	// HostLoopback makes connections and flows to Gateway reach the
	// host's 127.0.0.1 (slirp's default, Podman's allow_host_loopback).
	// Off, the guest reaches no service bound to the host's loopback.
	HostLoopback bool
	// Publish are the host ports forwarded to the guest.
	Publish []Publish
	// Lease is the DHCP lease time (default 1h).
	Lease time.Duration
	// Limits bound what the guest can make the uplink hold.
	Limits Limits
	// Logger receives the uplink's log (default: discarded).
	Logger *slog.Logger
}

// Limits bound the state an untrusted guest can make the uplink hold and
// the rate at which it can ask for more. What is over a limit is dropped
// (a TCP connection refused with a reset) and counted in Stats; zero
// fields take the defaults.
type Limits struct {
	// TCPConns is the most forwarded TCP connections open at once,
	// outbound and published together (default 256). Each holds at most
	// 256 KiB of netstack buffer each way and 64 KiB of copy buffers.
	TCPConns int
	// TCPHandshakes is the most guest connection attempts being dialed
	// on the host at once (default 64); further SYNs are ignored (the
	// guest retransmits).
	TCPHandshakes int
	// UDPFlows is the most UDP flows at once, outbound and published
	// together (default 256). A flow holds two 64 KiB buffers.
	UDPFlows int
	// PingFlows is the most ICMP echo flows (destination and identifier)
	// at once (default 32).
	PingFlows int
	// DNSQueries is the most DNS queries in flight (default 64).
	DNSQueries int
	// UDPIdle and PingIdle close a flow with no datagram either way for
	// that long (default 60s and 10s).
	UDPIdle, PingIdle time.Duration
	// DialTimeout bounds connecting to a host for the guest (default 10s).
	DialTimeout time.Duration
	// DNSTimeout bounds each nameserver's answer (default 3s).
	DNSTimeout time.Duration
	// NewFlows is the rate of new connections and flows the guest may
	// open (default 200 a second, a burst of 400).
	NewFlows tokenbucket.Limit
	// Frames is the rate of frames read from the guest (default
	// unlimited: the frame socket's own buffer pushes back on the VMM).
	Frames tokenbucket.Limit
	// TxQueue is the most frames queued for the guest (default 1024).
	TxQueue int
}

// Proto is a published port's transport protocol.
type Proto string

// Transport protocols of a Publish.
const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// Publish forwards a host port to a port of the guest (rfm create
// --publish 8080:80, ports: in a layout).
type Publish struct {
	Proto Proto `json:"proto"`
	// HostAddr is the host address listened on; the zero Addr is every
	// address (as Docker's and Podman's -p).
	HostAddr netip.Addr `json:"host_addr,omitzero"`
	// HostPort is the host port; 0 (not from ParsePublish) binds a free
	// one, which Uplink.PublishedAddrs shows.
	HostPort  uint16 `json:"host_port"`
	GuestPort uint16 `json:"guest_port"`
}

// String formats p as ParsePublish reads it.
func (p Publish) String() string {
	s := strconv.Itoa(int(p.HostPort)) + ":" + strconv.Itoa(int(p.GuestPort)) + "/" + string(p.Proto)
	if p.HostAddr.IsValid() {
		h := p.HostAddr.String()
		if p.HostAddr.Is6() {
			h = "[" + h + "]"
		}
		s = h + ":" + s
	}
	return s
}

// ParsePublish reads [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (tcp when
// no protocol is named; an IPv6 HOSTADDR in brackets).
func ParsePublish(s string) (Publish, error) {
	p := Publish{Proto: TCP}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		p.Proto = Proto(strings.ToLower(rest[i+1:]))
		rest = rest[:i]
		if p.Proto != TCP && p.Proto != UDP {
			return Publish{}, fmt.Errorf("%w: publish %q: protocol %q is neither tcp nor udp", ErrConfig, s, p.Proto)
		}
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return Publish{}, fmt.Errorf("%w: publish %q: want [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]", ErrConfig, s)
	}
	guest, hostPart := rest[i+1:], rest[:i]
	host := hostPart
	if j := strings.LastIndexByte(hostPart, ':'); j >= 0 {
		addr := strings.TrimSuffix(strings.TrimPrefix(hostPart[:j], "["), "]")
		a, err := netip.ParseAddr(addr)
		if err != nil || a.Zone() != "" {
			return Publish{}, fmt.Errorf("%w: publish %q: host address %q is not an IP address", ErrConfig, s, hostPart[:j])
		}
		p.HostAddr = a.Unmap()
		host = hostPart[j+1:]
	}
	var err error
	if p.HostPort, err = parsePort(host); err != nil {
		return Publish{}, fmt.Errorf("%w: publish %q: host port: %v", ErrConfig, s, err)
	}
	if p.GuestPort, err = parsePort(guest); err != nil {
		return Publish{}, fmt.Errorf("%w: publish %q: guest port: %v", ErrConfig, s, err)
	}
	return p, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port from 1 to 65535", s)
	}
	return uint16(n), nil
}

// check reports what is wrong with p.
func (p Publish) check() error {
	if p.Proto != TCP && p.Proto != UDP {
		return fmt.Errorf("%w: publish %v: protocol %q is neither tcp nor udp", ErrConfig, p, p.Proto)
	}
	if p.GuestPort == 0 {
		return fmt.Errorf("%w: publish %v: the guest port is 1 to 65535", ErrConfig, p)
	}
	return nil
}

// withDefaults returns l with its zero fields set.
func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.TCPConns, 256)
	def(&l.TCPHandshakes, 64)
	def(&l.UDPFlows, 256)
	def(&l.PingFlows, 32)
	def(&l.DNSQueries, 64)
	def(&l.TxQueue, 1024)
	defDur(&l.UDPIdle, 60*time.Second)
	defDur(&l.PingIdle, 10*time.Second)
	defDur(&l.DialTimeout, 10*time.Second)
	defDur(&l.DNSTimeout, 3*time.Second)
	if l.NewFlows.Unlimited() {
		l.NewFlows = tokenbucket.Limit{Rate: 200, Burst: 400}
	}
	return l
}

// withDefaults returns c with its zero fields set and checked; the
// nameservers are read from ResolvConf when none are given.
func (c Config) withDefaults() (Config, error) {
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix(DefaultSubnet)
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() < 8 || c.Subnet.Bits() > 29 {
		return c, fmt.Errorf("%w: subnet %v: want an IPv4 network from /8 to /29", ErrConfig, c.Subnet)
	}
	nth := func(n int) netip.Addr {
		b := c.Subnet.Addr().As4()
		b[3] += byte(n)
		return netip.AddrFrom4(b)
	}
	if !c.Gateway.IsValid() {
		c.Gateway = nth(2)
	}
	if !c.DNS.IsValid() {
		c.DNS = nth(3)
	}
	if !c.Guest.IsValid() {
		c.Guest = nth(15)
		if c.Subnet.Bits() > 27 {
			c.Guest = nth(4)
		}
	}
	bcast := broadcast(c.Subnet)
	for _, a := range []struct {
		name string
		addr netip.Addr
	}{{"gateway", c.Gateway}, {"dns", c.DNS}, {"guest", c.Guest}} {
		if !c.Subnet.Contains(a.addr) || a.addr == c.Subnet.Addr() || a.addr == bcast {
			return c, fmt.Errorf("%w: %s address %v is not a host address of %v", ErrConfig, a.name, a.addr, c.Subnet)
		}
	}
	if c.Guest == c.Gateway || c.Guest == c.DNS || c.Gateway == c.DNS {
		return c, fmt.Errorf("%w: gateway %v, dns %v and guest %v must differ", ErrConfig, c.Gateway, c.DNS, c.Guest)
	}
	if c.MAC == nil {
		g := c.Gateway.As4()
		c.MAC = net.HardwareAddr{0x52, 0x55, g[0], g[1], g[2], g[3]}
	}
	if len(c.MAC) != 6 || c.MAC[0]&1 != 0 {
		return c, fmt.Errorf("%w: MAC %v is not a unicast Ethernet address", ErrConfig, c.MAC)
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.MTU < 576 || c.MTU > 65521 {
		return c, fmt.Errorf("%w: MTU %d: want 576 to 65521", ErrConfig, c.MTU)
	}
	if c.Lease <= 0 {
		c.Lease = time.Hour
	}
	if c.Lease < time.Minute || c.Lease > 365*24*time.Hour {
		return c, fmt.Errorf("%w: lease %v: want a minute to a year", ErrConfig, c.Lease)
	}
	if c.ResolvConf == "" {
		c.ResolvConf = DefaultResolvConf
	}
	if len(c.Nameservers) == 0 {
		ns, err := ReadResolvConf(c.ResolvConf)
		if err != nil {
			return c, err
		}
		c.Nameservers = ns
	}
	c.Nameservers = append([]netip.AddrPort(nil), c.Nameservers...)
	for i, ns := range c.Nameservers {
		if !ns.Addr().IsValid() {
			return c, fmt.Errorf("%w: nameserver %v is no address", ErrConfig, ns)
		}
		if ns.Port() == 0 {
			c.Nameservers[i] = netip.AddrPortFrom(ns.Addr(), 53)
		}
	}
	seen := map[string]bool{}
	for _, p := range c.Publish {
		if err := p.check(); err != nil {
			return c, err
		}
		k := fmt.Sprintf("%s/%d", p.Proto, p.HostPort)
		if seen[k] && p.HostPort != 0 {
			return c, fmt.Errorf("%w: host port %d/%s is published twice", ErrConfig, p.HostPort, p.Proto)
		}
		seen[k] = true
	}
	c.Publish = append([]Publish(nil), c.Publish...)
	c.Limits = c.Limits.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// broadcast returns p's directed broadcast address.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// netmask returns p's mask as an address (255.255.255.0 for a /24).
func netmask(p netip.Prefix) netip.Addr {
	m := net.CIDRMask(p.Bits(), 32)
	return netip.AddrFrom4([4]byte(m))
}

// ReadResolvConf returns the nameservers of a resolv.conf(5) file, at
// most three as the C library takes, each with port 53. A file with none,
// or no file (a minimal host), means the local resolver (127.0.0.1), as
// for the C library.
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return parseResolvConf(strings.NewReader(""))
	}
	if err != nil {
		return nil, fmt.Errorf("host resolvers: %w", err)
	}
	defer f.Close()
	return parseResolvConf(f)
}

func parseResolvConf(r io.Reader) ([]netip.AddrPort, error) {
	var ns []netip.AddrPort
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || len(ns) == 3 {
			continue
		}
		ns = append(ns, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("host resolvers: %w", err)
	}
	if len(ns) == 0 {
		ns = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}
	}
	return ns, nil
}

// StaticCmdline returns the kernel command line argument that gives the
// guest's interface device (eth0 when empty) c's addressing without DHCP:
// ip=GUEST::GATEWAY:NETMASK::DEVICE:off:DNS, the Linux kernel's own
// IP autoconfiguration (CONFIG_IP_PNP). The kernel writes the nameserver
// to /proc/net/pnp in resolv.conf(5) form, so an image with a link from
// /etc/resolv.conf to it resolves through the uplink too.
func StaticCmdline(c Config, device string) (string, error) {
	c, err := c.withStaticDefaults()
	if err != nil {
		return "", err
	}
	if device == "" {
		device = "eth0"
	}
	if strings.ContainsAny(device, ": \t\n") {
		return "", fmt.Errorf("%w: device %q", ErrConfig, device)
	}
	return fmt.Sprintf("ip=%s::%s:%s::%s:off:%s", c.Guest, c.Gateway, netmask(c.Subnet), device, c.DNS), nil
}

// ImageCmdline returns the argument of RainForest's own image that gives
// its first NIC c's guest address and default route without DHCP:
// rf.ip=GUEST/BITS,GATEWAY (images/build.go's /init). That init sets no
// nameserver; the guest's resolv.conf names c.DNS for it to resolve.
func ImageCmdline(c Config) (string, error) {
	c, err := c.withStaticDefaults()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("rf.ip=%s/%d,%s", c.Guest, c.Subnet.Bits(), c.Gateway), nil
}

// withStaticDefaults is withDefaults without reading the host's
// resolvers (the static command line needs none).
func (c Config) withStaticDefaults() (Config, error) {
	if len(c.Nameservers) == 0 {
		c.Nameservers = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}
	}
	return c.withDefaults()
}
