package uplink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// ErrPortInUse is wrapped by New's error for a published host port that
// something else on the host holds.
var ErrPortInUse = errors.New("uplink: host port already in use")

// portInUseError names the port.
type portInUseError struct {
	p   Publish
	err error
}

func (e *portInUseError) Error() string {
	return fmt.Sprintf("uplink: host port %d/%s is already in use (publish %v): %v", e.p.HostPort, e.p.Proto, e.p, e.err)
}

func (e *portInUseError) Unwrap() error { return e.err }

func (e *portInUseError) Is(target error) bool { return target == ErrPortInUse }

// publishedPort is one Publish's host listener and its flows.
type publishedPort struct {
	u   *Uplink
	p   Publish
	tcp net.Listener
	udp *net.UDPConn

	mu    sync.Mutex
	flows map[netip.AddrPort]*publishedFlow
}

// publishedFlow is a UDP flow from one host peer to the guest's port.
type publishedFlow struct {
	conn *gonet.UDPConn
	last atomic.Int64
}

// listen binds p's host listener.
func (u *Uplink) listen(p Publish) (*publishedPort, error) {
	host := ""
	if p.HostAddr.IsValid() {
		host = p.HostAddr.String()
	}
	addr := net.JoinHostPort(host, strconv.Itoa(int(p.HostPort)))
	pp := &publishedPort{u: u, p: p, flows: map[netip.AddrPort]*publishedFlow{}}
	var err error
	if p.Proto == TCP {
		pp.tcp, err = net.Listen("tcp", addr)
	} else {
		var c net.PacketConn
		if c, err = net.ListenPacket("udp", addr); err == nil {
			pp.udp = c.(*net.UDPConn)
		}
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, &portInUseError{p: p, err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("uplink: publish %v: %w", p, err)
	}
	return pp, nil
}

// Addr returns the published port's host address.
func (pp *publishedPort) addr() net.Addr {
	if pp.tcp != nil {
		return pp.tcp.Addr()
	}
	return pp.udp.LocalAddr()
}

// close closes the listener; the flows are closed as the uplink's.
func (pp *publishedPort) close() {
	if pp.tcp != nil {
		pp.tcp.Close()
	} else {
		pp.udp.Close()
	}
}

// serve forwards the listener's connections or datagrams until it is
// closed.
func (pp *publishedPort) serve() {
	if pp.tcp != nil {
		pp.serveTCP()
	} else {
		pp.serveUDP()
	}
}

// pause waits a moment after a failed accept or read (a process out of
// descriptors), so the loop does not spin; false once the uplink closes.
func (u *Uplink) pause() bool {
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-u.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (pp *publishedPort) serveTCP() {
	u := pp.u
	for {
		c, err := pp.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || u.ctx.Err() != nil || !u.pause() {
				return
			}
			continue
		}
		if !u.tcpConns.tryAcquire() {
			u.stat.dropTCPLimit.Add(1)
			c.Close()
			continue
		}
		if !u.track(c) {
			u.tcpConns.release()
			return
		}
		if !u.spawn(func() {
			defer u.tcpConns.release()
			pp.connectGuest(c.(*net.TCPConn))
		}) {
			u.untrack(c)
			u.tcpConns.release()
			return
		}
	}
}

// DialGuest connects to the guest's TCP port through the netstack, from
// the gateway's address, as a published port does: the supervisor's own
// way to a service of the guest's with no host port. The caller closes
// the connection; closing the uplink ends it (reads and writes fail).
func (u *Uplink) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	if u.ctx.Err() != nil {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Limits.DialTimeout)
	defer cancel()
	stop := context.AfterFunc(u.ctx, cancel)
	defer stop()
	c, err := gonet.DialTCPWithBind(ctx, u.st,
		tcpip.FullAddress{NIC: nicID, Addr: u.gateway},
		tcpip.FullAddress{NIC: nicID, Addr: u.guest, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("uplink: guest port %d: %w", port, err)
	}
	return c, nil
}

// connectGuest connects to the guest's port and splices host to it. A
// guest not listening refuses it, and the host peer's connection is
// closed.
func (pp *publishedPort) connectGuest(host *net.TCPConn) {
	u := pp.u
	c, err := u.DialGuest(u.ctx, pp.p.GuestPort)
	if err != nil {
		u.cfg.Logger.Debug("uplink: published port: guest refused", "publish", pp.p.String(), "err", err)
		u.untrack(host)
		return
	}
	g := c.(*gonet.TCPConn)
	if !u.track(g) {
		u.untrack(host)
		return
	}
	u.splice(g, host)
}

func (pp *publishedPort) serveUDP() {
	u := pp.u
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := pp.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || u.ctx.Err() != nil || !u.pause() {
				return
			}
			continue
		}
		f := pp.flow(from)
		if f == nil {
			continue
		}
		f.last.Store(time.Now().UnixNano())
		f.conn.Write(buf[:n])
	}
}

// flow returns the flow of the host peer from, opening it if new; nil
// when it cannot be had (counted).
func (pp *publishedPort) flow(from netip.AddrPort) *publishedFlow {
	u := pp.u
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if f, ok := pp.flows[from]; ok {
		return f
	}
	if !u.udpFlows.tryAcquire() {
		u.stat.dropUDPLimit.Add(1)
		return nil
	}
	c, err := gonet.DialUDP(u.st, &tcpip.FullAddress{NIC: nicID, Addr: u.gateway},
		&tcpip.FullAddress{NIC: nicID, Addr: u.guest, Port: pp.p.GuestPort}, ipv4.ProtocolNumber)
	if err != nil {
		u.udpFlows.release()
		return nil
	}
	if !u.track(c) {
		u.udpFlows.release()
		return nil
	}
	f := &publishedFlow{conn: c}
	f.last.Store(time.Now().UnixNano())
	if !u.spawn(func() {
		defer u.udpFlows.release()
		pp.relayToPeer(f, from)
	}) {
		u.untrack(c)
		u.udpFlows.release()
		return nil
	}
	pp.flows[from] = f
	return f
}

// relayToPeer sends the guest's datagrams of f back to the host peer
// until the flow is idle for Limits.UDPIdle.
func (pp *publishedPort) relayToPeer(f *publishedFlow, peer netip.AddrPort) {
	u := pp.u
	u.stat.udpActive.Add(1)
	u.stat.udpTotal.Add(1)
	defer dec(&u.stat.udpActive)
	defer func() {
		pp.mu.Lock()
		delete(pp.flows, peer)
		pp.mu.Unlock()
		u.untrack(f.conn)
	}()
	idle := u.cfg.Limits.UDPIdle
	buf := make([]byte, maxDatagram)
	for {
		f.conn.SetReadDeadline(time.Now().Add(idle))
		n, err := f.conn.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, f.last.Load())) < idle {
				continue
			}
			return
		}
		f.last.Store(time.Now().UnixNano())
		pp.udp.WriteToUDPAddrPort(buf[:n], peer)
	}
}

// PublishedAddrs returns the host addresses of the published ports, in
// Config.Publish's order (a port 0 in a test's Publish is bound to a free
// port, shown here).
func (u *Uplink) PublishedAddrs() []net.Addr {
	a := make([]net.Addr, len(u.published))
	for i, pp := range u.published {
		a[i] = pp.addr()
	}
	return a
}
