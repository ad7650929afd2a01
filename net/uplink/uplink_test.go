package uplink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"rainforest/internal/tokenbucket"
)

// fakeDNS is a nameserver on the host's loopback: it answers A queries
// for example.test. with 192.0.2.10 and every other query with an empty
// answer.
type fakeDNS struct {
	c       *net.UDPConn
	done    chan struct{}
	queries chan string
}

func startFakeDNS(t *testing.T) *fakeDNS {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDNS{c: c, done: make(chan struct{}), queries: make(chan string, 100)}
	go func() {
		defer close(f.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			q := buf[:n]
			end, ok := questionEnd(q)
			if !ok {
				continue
			}
			name := qname(q)
			select {
			case f.queries <- name:
			default:
			}
			qtype := binary.BigEndian.Uint16(q[end-4:])
			r := append([]byte(nil), q[:dnsHeaderLen]...)
			r[2], r[3] = 0x81, 0x80 // QR RD, RA
			binary.BigEndian.PutUint16(r[4:], 1)
			binary.BigEndian.PutUint16(r[6:], 0)
			binary.BigEndian.PutUint16(r[8:], 0)
			binary.BigEndian.PutUint16(r[10:], 0)
			r = append(r, q[dnsHeaderLen:end]...)
			if strings.EqualFold(name, "example.test.") && qtype == 1 {
				binary.BigEndian.PutUint16(r[6:], 1)
				r = append(r, 0xc0, dnsHeaderLen, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 10)
			}
			c.WriteToUDPAddrPort(r, from)
		}
	}()
	return f
}

func (f *fakeDNS) addr() netip.AddrPort { return f.c.LocalAddr().(*net.UDPAddr).AddrPort() }

func (f *fakeDNS) close() {
	f.c.Close()
	<-f.done
}

// qname returns the first question's name, dotted.
func qname(m []byte) string {
	var b strings.Builder
	for i := dnsHeaderLen; i < len(m) && m[i] != 0; i += 1 + int(m[i]) {
		b.Write(m[i+1 : min(len(m), i+1+int(m[i]))])
		b.WriteByte('.')
	}
	return b.String()
}

// echoTCP serves an upper-casing echo on a loopback port.
func echoTCP(t *testing.T, l net.Listener) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(bytes.ToUpper(buf[:n])); err != nil {
						return
					}
				}
			}()
		}
	}()
	return &wg
}

// echoUDP serves an upper-casing datagram echo.
func echoUDP(c net.PacketConn) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(bytes.ToUpper(buf[:n]), from)
		}
	}()
	return &wg
}

// roundTrip writes msg to c and reads as many bytes back.
func roundTrip(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(buf)
}

// waitGoroutines waits for the goroutine count to come back to base
// (goroutines that were told to stop may take a moment to return); it
// fails with the stacks of those left only if they never do.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	for i := 0; ; i++ {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if i == 3000 { // a hang guard, not a timing requirement
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines left after Close, want at most %d:\n%s", n, base, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rig is an uplink on one end of a Pipe, running, with a guest on the
// other end holding a DHCP lease.
type rig struct {
	u       *Uplink
	guest   *testGuest
	lease   lease
	ran     chan error
	stopped bool
}

func startRig(t *testing.T, cfg Config, prep ...func(*Uplink)) *rig {
	t.Helper()
	u, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range prep {
		p(u)
	}
	a, b := Pipe(64)
	r := &rig{u: u, ran: make(chan error, 1)}
	go func() { r.ran <- u.Run(context.Background(), a) }()
	r.lease = dhcpClient(t, b)
	r.guest = startGuest(t, b, r.lease)
	return r
}

// stop closes the uplink and the guest (once).
func (r *rig) stop(t *testing.T) {
	t.Helper()
	if r.stopped {
		return
	}
	r.stopped = true
	if err := r.u.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-r.ran; err != nil {
		t.Errorf("Run: %v", err)
	}
	r.guest.close()
}

func TestUplink(t *testing.T) {
	base := runtime.NumGoroutine()
	ctx := t.Context()
	ns := startFakeDNS(t)
	hostTCP, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpWG := echoTCP(t, hostTCP)
	hostUDP, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpWG := echoUDP(hostUDP)
	loop := netip.MustParseAddr("127.0.0.1")

	r := startRig(t, Config{
		Logger:       testLogger(t),
		Nameservers:  []netip.AddrPort{ns.addr()},
		HostLoopback: true,
		Publish: []Publish{
			{Proto: TCP, HostAddr: loop, GuestPort: 80},
			{Proto: UDP, HostAddr: loop, GuestPort: 5353},
		},
	})
	gw := netip.MustParseAddr("10.0.2.2")

	t.Run("dhcp", func(t *testing.T) {
		want := lease{addr: netip.MustParseAddr("10.0.2.15"), router: gw, dns: netip.MustParseAddr("10.0.2.3"),
			mask: netip.MustParseAddr("255.255.255.0"), mtu: 1500}
		if r.lease != want {
			t.Errorf("lease %+v, want %+v", r.lease, want)
		}
		if s := r.u.Stats(); s.DHCPAcks != 1 {
			t.Errorf("DHCPAcks %d, want 1", s.DHCPAcks)
		}
	})

	t.Run("dns", func(t *testing.T) {
		res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return r.guest.dialUDP(netip.AddrPortFrom(r.lease.dns, 53))
		}}
		addrs, err := res.LookupHost(ctx, "example.test")
		if err != nil {
			t.Fatalf("LookupHost through the forwarder: %v", err)
		}
		if len(addrs) != 1 || addrs[0] != "192.0.2.10" {
			t.Errorf("example.test is %q, want [192.0.2.10]", addrs)
		}
		select {
		case q := <-ns.queries:
			if q != "example.test." {
				t.Errorf("the nameserver was asked %q", q)
			}
		default:
			t.Error("the nameserver was not asked")
		}
	})

	t.Run("dns-tcp", func(t *testing.T) {
		// TCP to the DNS address's port 53 reaches the first nameserver's
		// TCP port: here an echo server on the fake nameserver's port.
		l, err := net.Listen("tcp", ns.addr().String())
		if err != nil {
			t.Skipf("the nameserver's port is taken for TCP: %v", err)
		}
		wg := echoTCP(t, l)
		defer func() {
			l.Close()
			wg.Wait()
		}()
		c, err := r.guest.dialTCP(ctx, netip.AddrPortFrom(r.lease.dns, 53))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := roundTrip(t, c, "dns over tcp"); got != "DNS OVER TCP" {
			t.Errorf("got %q", got)
		}
	})

	t.Run("tcp", func(t *testing.T) {
		port := uint16(hostTCP.Addr().(*net.TCPAddr).Port)
		c, err := r.guest.dialTCP(ctx, netip.AddrPortFrom(gw, port))
		if err != nil {
			t.Fatalf("guest dial to the host's loopback through the gateway: %v", err)
		}
		big := strings.Repeat("payload ", 20000)
		go c.Write([]byte(big))
		got := make([]byte, len(big))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != strings.ToUpper(big) {
			t.Error("the echo differs")
		}
		c.Close()
		// A port nobody listens on is refused at once.
		dead, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadPort := uint16(dead.Addr().(*net.TCPAddr).Port)
		dead.Close()
		if c, err := r.guest.dialTCP(ctx, netip.AddrPortFrom(gw, deadPort)); err == nil {
			c.Close()
			t.Error("a closed host port accepted")
		}
		// A destination in the subnet is not forwarded: reset at once.
		if c, err := r.guest.dialTCP(ctx, netip.MustParseAddrPort("10.0.2.77:80")); err == nil {
			c.Close()
			t.Error("10.0.2.77 was forwarded")
		}
		s := r.u.Stats()
		if s.TCPDialFailed != 1 || s.DropRefused != 1 || s.TCPTotal != 2 {
			t.Errorf("stats %+v: want a failed dial, a refused destination and two connections", s)
		}
	})

	t.Run("udp", func(t *testing.T) {
		port := uint16(hostUDP.LocalAddr().(*net.UDPAddr).Port)
		c, err := r.guest.dialUDP(netip.AddrPortFrom(gw, port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 3 {
			msg := fmt.Sprintf("datagram %d", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) != strings.ToUpper(msg) {
				t.Errorf("got %q", buf[:n])
			}
		}
		if s := r.u.Stats(); s.UDPActive != 1 {
			t.Errorf("UDPActive %d, want 1 (one flow for the three datagrams)", s.UDPActive)
		}
	})

	t.Run("ping-host-socket", func(t *testing.T) {
		if why := r.u.PingUnavailable(); why != "" {
			t.Skip("the host forbids ping sockets here: " + why)
		}
		dst := hostAddr(t)
		got, err := r.guest.ping(ctx, dst, 7, []byte("are you there"))
		if err != nil {
			t.Fatalf("ping %v: %v", dst, err)
		}
		if string(got) != "are you there" {
			t.Errorf("echo data %q", got)
		}
	})

	t.Run("ping-gateway", func(t *testing.T) {
		// The netstack answers for its own addresses.
		if _, err := r.guest.ping(ctx, gw, 1, []byte("gw")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("published-tcp", func(t *testing.T) {
		l, err := gonet.ListenTCP(r.guest.st, fullAddr(netip.AddrPortFrom(r.lease.addr, 80)), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		served := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				served <- err.Error()
				return
			}
			defer c.Close()
			served <- c.RemoteAddr().String()
			io.Copy(c, c)
		}()
		addr := r.u.PublishedAddrs()[0].String()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := roundTrip(t, c, "hello guest"); got != "hello guest" {
			t.Errorf("got %q", got)
		}
		if from := <-served; !strings.HasPrefix(from, "10.0.2.2:") {
			t.Errorf("the guest saw the connection from %s, want the gateway", from)
		}
		// The supervisor's way in, with no host port.
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(c, c)
		}()
		d, err := r.u.DialGuest(ctx, 80)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if got := roundTrip(t, d, "from the supervisor"); got != "from the supervisor" {
			t.Errorf("got %q", got)
		}
		if _, err := r.u.DialGuest(ctx, 81); err == nil {
			t.Error("a port the guest does not listen on connected")
		}
	})

	t.Run("published-udp", func(t *testing.T) {
		la := fullAddr(netip.AddrPortFrom(r.lease.addr, 5353))
		gc, err := gonet.DialUDP(r.guest.st, &la, nil, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		wg := echoUDP(gc)
		defer func() {
			gc.Close()
			wg.Wait()
		}()
		c, err := net.Dial("udp", r.u.PublishedAddrs()[1].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := roundTrip(t, c, "to the guest"); got != "TO THE GUEST" {
			t.Errorf("got %q", got)
		}
	})

	t.Run("close", func(t *testing.T) {
		addrs := r.u.PublishedAddrs()
		r.stop(t)
		// The published ports are free again.
		l, err := net.Listen("tcp", addrs[0].String())
		if err != nil {
			t.Errorf("published TCP port still held after Close: %v", err)
		} else {
			l.Close()
		}
		p, err := net.ListenPacket("udp", addrs[1].String())
		if err != nil {
			t.Errorf("published UDP port still held after Close: %v", err)
		} else {
			p.Close()
		}
		s := r.u.Stats()
		if s.TCPActive != 0 || s.UDPActive != 0 || s.PingActive != 0 {
			t.Errorf("flows left open: %+v", s)
		}
		if s.FramesIn == 0 || s.FramesOut == 0 {
			t.Errorf("no frames counted: %+v", s)
		}
	})

	hostTCP.Close()
	tcpWG.Wait()
	hostUDP.Close()
	udpWG.Wait()
	ns.close()
	waitGoroutines(t, base)
}

// hostAddr returns a non-loopback IPv4 address of this host, to ping.
func hostAddr(t *testing.T) netip.Addr {
	t.Helper()
	as, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr()
		}
	}
	t.Skip("this host has no non-loopback IPv4 address to ping")
	return netip.Addr{}
}

// stubPing is a pingConn standing in for the host's ping socket: it
// answers each echo request itself, with its own identifier as the host
// kernel's would be.
type stubPing struct {
	mu       sync.Mutex
	replies  chan []byte
	deadline time.Time
	closed   chan struct{}
	once     sync.Once
	sent     *pingRecord
}

// pingRecord is where the stubs' requests went.
type pingRecord struct {
	mu  sync.Mutex
	dst []netip.Addr
}

func (s *stubPing) Send(msg []byte, dst netip.Addr) error {
	s.sent.mu.Lock()
	s.sent.dst = append(s.sent.dst, dst)
	s.sent.mu.Unlock()
	r := append([]byte(nil), msg...)
	r[0] = 0                                  // echo reply
	binary.BigEndian.PutUint16(r[4:], 0xbeef) // the host's identifier
	select {
	case s.replies <- r:
	default:
	}
	return nil
}

func (s *stubPing) Recv(b []byte) (int, error) {
	s.mu.Lock()
	d := s.deadline
	s.mu.Unlock()
	t := time.NewTimer(time.Until(d))
	defer t.Stop()
	select {
	case r := <-s.replies:
		return copy(b, r), nil
	case <-t.C:
		return 0, stubTimeout{}
	case <-s.closed:
		return 0, net.ErrClosed
	}
}

func (s *stubPing) SetReadDeadline(d time.Time) error {
	s.mu.Lock()
	s.deadline = d
	s.mu.Unlock()
	return nil
}

func (s *stubPing) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

type stubTimeout struct{}

func (stubTimeout) Error() string   { return "timeout" }
func (stubTimeout) Timeout() bool   { return true }
func (stubTimeout) Temporary() bool { return true }

// The echo path (divert, flow, reply frame) with a stand-in for the
// host's ping socket, so that it is tested where the host forbids them.
func TestPingForwarding(t *testing.T) {
	base := runtime.NumGoroutine()
	u, err := New(Config{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}})
	if err != nil {
		t.Fatal(err)
	}
	sent := &pingRecord{}
	u.openPing = func() (pingConn, error) {
		return &stubPing{replies: make(chan []byte, 8), closed: make(chan struct{}), sent: sent, deadline: time.Now()}, nil
	}
	u.pingUnavailableReason = ""
	a, b := Pipe(64)
	ran := make(chan error, 1)
	go func() { ran <- u.Run(context.Background(), a) }()
	l := dhcpClient(t, b)
	g := startGuest(t, b, l)
	dst := netip.MustParseAddr("198.51.100.7")
	for seq := range uint16(3) {
		got, err := g.ping(t.Context(), dst, seq, []byte("ping "+strconv.Itoa(int(seq))))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "ping "+strconv.Itoa(int(seq)) {
			t.Errorf("echo data %q", got)
		}
	}
	sent.mu.Lock()
	if len(sent.dst) != 3 || sent.dst[0] != dst {
		t.Errorf("sent to %v, want 3 times %v", sent.dst, dst)
	}
	sent.mu.Unlock()
	if s := u.Stats(); s.PingTotal != 3 {
		t.Errorf("PingTotal %d, want 3 flows (each ping's socket has its own identifier)", s.PingTotal)
	}
	// A destination in the subnet is not forwarded.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	g.ping(ctx, netip.MustParseAddr("10.0.2.77"), 1, nil)
	u.Close()
	if err := <-ran; err != nil {
		t.Error(err)
	}
	g.close()
	waitGoroutines(t, base)
}

func TestPingDenied(t *testing.T) {
	u, err := New(Config{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.pingUnavailableReason = pingDeniedReason(errors.New("EACCES stand-in"))
	if why := pingDeniedReason(fmt.Errorf("socket: %w", unix.EACCES)); !strings.Contains(why, "ping_group_range") {
		t.Errorf("reason %q does not name ping_group_range", why)
	}
	a, b := Pipe(64)
	ran := make(chan error, 1)
	go func() { ran <- u.Run(context.Background(), a) }()
	l := dhcpClient(t, b)
	g := startGuest(t, b, l)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	g.ping(ctx, netip.MustParseAddr("198.51.100.7"), 1, nil)
	// A round trip behind the echo request: the reader handled it first.
	g.ping(t.Context(), netip.MustParseAddr("10.0.2.2"), 2, nil)
	if s := u.Stats(); s.DropPingDenied != 1 {
		t.Errorf("DropPingDenied %d, want 1", s.DropPingDenied)
	}
	u.Close()
	<-ran
	g.close()
}

func TestPortInUse(t *testing.T) {
	base := runtime.NumGoroutine()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := uint16(held.Addr().(*net.TCPAddr).Port)
	free, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freePort := uint16(free.LocalAddr().(*net.UDPAddr).Port)
	free.Close()
	_, err = New(Config{
		Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		Publish: []Publish{
			{Proto: UDP, HostAddr: netip.MustParseAddr("127.0.0.1"), HostPort: freePort, GuestPort: 53},
			{Proto: TCP, HostAddr: netip.MustParseAddr("127.0.0.1"), HostPort: port, GuestPort: 80},
		},
	})
	if !errors.Is(err, ErrPortInUse) {
		t.Fatalf("New with a held port: %v, want ErrPortInUse", err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(int(port))) {
		t.Errorf("error %q does not name port %d", err, port)
	}
	// The UDP port bound before the failure was released.
	p, err := net.ListenPacket("udp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort).String())
	if err != nil {
		t.Errorf("the other published port is still held: %v", err)
	} else {
		p.Close()
	}
	waitGoroutines(t, base)
}

// Floods from the guest are bounded, dropped and counted.
func TestFloodsBounded(t *testing.T) {
	base := runtime.NumGoroutine()
	hostUDP, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpWG := echoUDP(hostUDP)
	hostTCP, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpWG := echoTCP(t, hostTCP)
	r := startRig(t, Config{
		Nameservers:  []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		HostLoopback: true,
		// 13 new flows: the ten UDP flows and three TCP connections below.
		Limits: Limits{UDPFlows: 4, TCPConns: 2, NewFlows: tokenbucket.Limit{Rate: 1, Burst: 13}},
	}, func(u *Uplink) {
		frozen := time.Now().Add(-time.Hour) // the bucket never refills
		u.now = func() time.Time { return frozen }
	})
	gw := netip.MustParseAddr("10.0.2.2")
	ctx := t.Context()

	// Ten UDP flows: four get through, six are dropped.
	uport := uint16(hostUDP.LocalAddr().(*net.UDPAddr).Port)
	var conns []net.Conn
	for i := range 10 {
		c, err := r.guest.dialUDP(netip.AddrPortFrom(gw, uport))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.Write([]byte("flow " + strconv.Itoa(i)))
	}
	// Two TCP connections get through; the third is refused with a reset.
	tport := uint16(hostTCP.Addr().(*net.TCPAddr).Port)
	for range 2 {
		c, err := r.guest.dialTCP(ctx, netip.AddrPortFrom(gw, tport))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		roundTrip(t, c, "x")
	}
	if c, err := r.guest.dialTCP(ctx, netip.AddrPortFrom(gw, tport)); err == nil {
		c.Close()
		t.Error("a third TCP connection got through a limit of two")
	}
	s := r.u.Stats()
	if s.UDPActive > 4 || s.DropUDPLimit != 6 {
		t.Errorf("UDP: %d active, %d dropped; want at most 4 and 6", s.UDPActive, s.DropUDPLimit)
	}
	if s.TCPActive != 2 || s.DropTCPLimit != 1 {
		t.Errorf("TCP: %d active, %d dropped; want 2 and 1", s.TCPActive, s.DropTCPLimit)
	}
	for _, c := range conns {
		c.Close()
	}

	// A new flow over the rate is dropped: the 13 tokens are spent.
	c, err := r.guest.dialUDP(netip.AddrPortFrom(gw, uport))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("over the rate"))
	c.Close()

	// Frames the uplink does not take, written raw.
	raw := r.guest.conn
	spoofed := udpFrame(tcpipLink(r.u.cfg.MAC), tcpipAddr("10.0.2.99"), tcpipAddr("10.0.2.2"), 1000, uport, []byte("spoofed"))
	notOurs := udpFrame(tcpipLink(net.HardwareAddr{2, 0, 0, 0, 0, 1}), tcpipAddr("10.0.2.15"), tcpipAddr("10.0.2.2"), 1000, uport, nil)
	v6 := append([]byte(nil), notOurs...)
	copy(v6, r.u.cfg.MAC)
	v6[12], v6[13] = 0x86, 0xdd
	oversize := make([]byte, 1600)
	copy(oversize, spoofed)
	for _, f := range [][]byte{spoofed, notOurs, v6, oversize, {1, 2, 3}} {
		if err := raw.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	// A round trip after them: the reader handled them first.
	if _, err := r.guest.ping(ctx, gw, 9, nil); err != nil {
		t.Fatal(err)
	}
	s = r.u.Stats()
	if s.DropFlowRate != 1 {
		t.Errorf("no flow dropped over the rate: %+v", s)
	}
	if s.DropSpoofed != 1 || s.DropNotForUs != 1 || s.DropProtocol != 1 || s.DropOversize != 1 || s.DropMalformed != 1 {
		t.Errorf("drops %+v: want one each of spoofed, not for us, protocol, oversize, malformed", s)
	}
	r.stop(t)
	hostUDP.Close()
	udpWG.Wait()
	hostTCP.Close()
	tcpWG.Wait()
	waitGoroutines(t, base)
}

func tcpipLink(mac net.HardwareAddr) tcpip.LinkAddress { return tcpip.LinkAddress(mac) }

func tcpipAddr(s string) tcpip.Address { return tcpip.AddrFrom4(netip.MustParseAddr(s).As4()) }

// testLogger logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Frames over Limits.Frames are dropped before anything looks at them.
func TestFrameRate(t *testing.T) {
	u, err := New(Config{
		Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		Limits:      Limits{Frames: tokenbucket.Limit{Rate: 1, Burst: 2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	frozen := time.Now().Add(-time.Hour)
	u.now = func() time.Time { return frozen }
	for range 5 {
		u.inbound([]byte{1, 2, 3})
	}
	if s := u.Stats(); s.FramesIn != 5 || s.DropRate != 3 || s.DropMalformed != 2 {
		t.Errorf("stats %+v: want 5 in, 3 over the rate, 2 malformed", s)
	}
}
