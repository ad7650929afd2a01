package uplink

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The guest's ICMP echo requests to destinations outside the subnet never
// reach the netstack (which, promiscuous, would answer every one itself):
// inbound diverts them here. Each destination and echo identifier the
// guest uses is a flow with a host ping socket of its own (SOCK_DGRAM,
// IPPROTO_ICMP: no privilege, where net.ipv4.ping_group_range holds one
// of the process's groups); the host kernel gives the requests its own
// identifier and hands back only the replies to it, which are rewritten
// to the guest's identifier and written to the guest as frames. Where the
// host forbids ping sockets the requests are counted and dropped, and New
// says why (PingUnavailable).

// pingConn is a host ping socket.
type pingConn interface {
	// Send sends an ICMP echo request (header and data; the kernel sets
	// the identifier and checksum) to dst.
	Send(msg []byte, dst netip.Addr) error
	// Recv reads one ICMP message (no IP header) sent to the socket.
	Recv(b []byte) (int, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// hostPing is a pingConn over the host's unprivileged ping socket.
type hostPing struct{ c *net.UDPConn }

// openHostPing opens a host ping socket.
func openHostPing() (pingConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)", err)
	}
	f := os.NewFile(uintptr(fd), "ping")
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("ping socket: %w", err)
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("ping socket: unexpected %T", c)
	}
	return hostPing{c: uc}, nil
}

func (h hostPing) Send(msg []byte, dst netip.Addr) error {
	_, err := h.c.WriteToUDPAddrPort(msg, netip.AddrPortFrom(dst, 0))
	return err
}
func (h hostPing) Recv(b []byte) (int, error)        { return h.c.Read(b) }
func (h hostPing) SetReadDeadline(t time.Time) error { return h.c.SetReadDeadline(t) }
func (h hostPing) Close() error                      { return h.c.Close() }

// pingDeniedReason says why a ping socket could not be opened.
func pingDeniedReason(err error) string {
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		r, rerr := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
		rng := "unreadable"
		if rerr == nil {
			rng = strings.Join(strings.Fields(string(r)), " ")
		}
		return fmt.Sprintf("the host forbids unprivileged ping sockets to this process: net.ipv4.ping_group_range is %q and holds none of its groups (gid %d); widen it (sysctl net.ipv4.ping_group_range=\"0 2147483647\") to forward pings", rng, os.Getegid())
	}
	return "ping socket: " + err.Error()
}

// pingKey names an echo flow: the destination and the guest's echo
// identifier.
type pingKey struct {
	dst [4]byte
	id  uint16
}

// pingFlow is one echo flow's host socket.
type pingFlow struct {
	conn pingConn
	key  pingKey
	from tcpip.Address // the destination, the replies' source
	mac  atomic.Value  // tcpip.LinkAddress: where the guest's requests came from
	last atomic.Int64  // unix nanoseconds of the last request
}

// pingTable is the echo flows by key.
type pingTable struct {
	mu    sync.Mutex
	flows map[pingKey]*pingFlow
	ipID  atomic.Uint32
}

func newPingTable() *pingTable { return &pingTable{flows: map[pingKey]*pingFlow{}} }

// divertICMP forwards an echo request of the guest's to a destination
// outside the subnet; any other ICMP message to such a destination is
// dropped.
func (u *Uplink) divertICMP(srcMAC tcpip.LinkAddress, ip header.IPv4) {
	if ip.FragmentOffset() != 0 || ip.More() {
		u.stat.dropPingOther.Add(1)
		return
	}
	msg := header.ICMPv4(ip.Payload())
	if len(msg) < header.ICMPv4MinimumSize {
		u.stat.dropMalformed.Add(1)
		return
	}
	if msg.Type() != header.ICMPv4Echo || msg.Code() != 0 {
		u.stat.dropPingOther.Add(1)
		return
	}
	if u.pingUnavailableReason != "" {
		u.stat.dropPingDenied.Add(1)
		if !u.pingDeniedLogged.Swap(true) {
			u.cfg.Logger.Warn("uplink: dropping the guest's pings", "reason", u.pingUnavailableReason)
		}
		return
	}
	dst := ip.DestinationAddress()
	target, ok := u.hostTarget(dst, 1, false)
	if !ok {
		u.stat.dropRefused.Add(1)
		return
	}
	f := u.pingFlow(pingKey{dst: dst.As4(), id: msg.Ident()}, dst)
	if f == nil {
		return
	}
	f.mac.Store(srcMAC)
	f.last.Store(time.Now().UnixNano())
	if err := f.conn.Send(msg, target.Addr()); err != nil {
		u.stat.dropPingOther.Add(1)
	}
}

// pingFlow returns key's flow, opening it (and its reader) if new; nil
// when it cannot be had (counted).
func (u *Uplink) pingFlow(key pingKey, from tcpip.Address) *pingFlow {
	t := u.pings
	t.mu.Lock()
	defer t.mu.Unlock()
	if f, ok := t.flows[key]; ok {
		return f
	}
	if len(t.flows) >= u.cfg.Limits.PingFlows {
		u.stat.dropPingLimit.Add(1)
		return nil
	}
	if !u.newFlowAllowed() {
		return nil
	}
	c, err := u.openPing()
	if err != nil {
		u.stat.dropPingOther.Add(1)
		return nil
	}
	if !u.track(c) {
		return nil
	}
	f := &pingFlow{conn: c, key: key, from: from}
	f.last.Store(time.Now().UnixNano())
	if !u.spawn(func() { u.relayPings(f) }) {
		u.untrack(c)
		return nil
	}
	t.flows[key] = f
	return f
}

// relayPings writes the echo replies of f's socket to the guest until f
// is idle for Limits.PingIdle, then closes it.
func (u *Uplink) relayPings(f *pingFlow) {
	u.stat.pingActive.Add(1)
	u.stat.pingTotal.Add(1)
	defer dec(&u.stat.pingActive)
	defer func() {
		u.pings.mu.Lock()
		delete(u.pings.flows, f.key)
		u.pings.mu.Unlock()
		u.untrack(f.conn)
	}()
	idle := u.cfg.Limits.PingIdle
	buf := make([]byte, maxDatagram)
	for {
		f.conn.SetReadDeadline(time.Now().Add(idle))
		n, err := f.conn.Recv(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, f.last.Load())) < idle {
				continue
			}
			return
		}
		reply := header.ICMPv4(buf[:n])
		if n < header.ICMPv4MinimumSize || reply.Type() != header.ICMPv4EchoReply ||
			n+header.IPv4MinimumSize > u.cfg.MTU {
			continue
		}
		mac, _ := f.mac.Load().(tcpip.LinkAddress)
		u.link.queue(u.echoReplyFrame(mac, f.from, f.key.id, reply))
	}
}

// echoReplyFrame builds the frame that brings the guest an echo reply
// from `from`, with the guest's identifier.
func (u *Uplink) echoReplyFrame(mac tcpip.LinkAddress, from tcpip.Address, id uint16, reply header.ICMPv4) []byte {
	const off = header.EthernetMinimumSize + header.IPv4MinimumSize
	frame := make([]byte, off+len(reply))
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: u.mac, DstAddr: mac, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(reply)),
		ID:          uint16(u.pings.ipID.Add(1)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     from,
		DstAddr:     u.guest,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	msg := header.ICMPv4(frame[off:])
	copy(msg, reply)
	msg.SetIdent(id)
	msg.SetChecksum(0)
	msg.SetChecksum(^checksum.Checksum(msg, 0))
	return frame
}
