package uplink

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxDatagram is the largest UDP payload either way.
const maxDatagram = 65535

// forwardUDP handles the first datagram of a guest's UDP flow (a source
// and destination pair no endpoint has yet): it opens a host socket
// connected to the destination and a netstack endpoint connected to the
// guest, and relays between them until the flow is idle for
// Limits.UDPIdle. It runs on the reader's goroutine, inside the
// netstack's processing of the datagram, so it does not block.
func (u *Uplink) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	if id.RemoteAddress != u.guest {
		// The netstack's own broadcasts (DHCP answers) loop back here.
		return true
	}
	target, ok := u.hostTarget(id.LocalAddress, id.LocalPort, false)
	if !ok {
		u.stat.dropRefused.Add(1)
		u.cfg.Logger.Debug("uplink: UDP destination not forwarded", "to", id.LocalAddress.String(), "port", id.LocalPort)
		return false // the netstack answers port unreachable
	}
	if !u.newFlowAllowed() {
		return true
	}
	if !u.udpFlows.tryAcquire() {
		u.stat.dropUDPLimit.Add(1)
		return true
	}
	host, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		u.udpFlows.release()
		u.stat.dropRefused.Add(1)
		return true
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		host.Close()
		u.udpFlows.release()
		return true
	}
	guest := gonet.NewUDPConn(&wq, ep)
	if !u.track(host) || !u.track(guest) {
		host.Close()
		guest.Close()
		u.udpFlows.release()
		return true
	}
	if !u.spawn(func() {
		defer u.udpFlows.release()
		u.relayUDP(guest, host)
	}) {
		u.untrack(host)
		u.untrack(guest)
		u.udpFlows.release()
	}
	return true
}

// relayUDP copies datagrams both ways between two connected sockets until
// neither has carried one for Limits.UDPIdle or one fails, then closes
// (and forgets) both.
func (u *Uplink) relayUDP(a, b net.Conn) {
	u.stat.udpActive.Add(1)
	u.stat.udpTotal.Add(1)
	defer dec(&u.stat.udpActive)
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{})
	if !u.spawn(func() {
		defer close(done)
		u.relayHalf(b, a, &last)
	}) {
		close(done)
	}
	u.relayHalf(a, b, &last)
	<-done
	u.untrack(a)
	u.untrack(b)
}

// relayHalf copies datagrams from src to dst; when it ends it closes both
// (so the other half ends too).
func (u *Uplink) relayHalf(dst, src net.Conn, last *atomic.Int64) {
	defer func() {
		src.Close()
		dst.Close()
	}()
	idle := u.cfg.Limits.UDPIdle
	buf := make([]byte, maxDatagram)
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other way was busy
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // an ICMP port unreachable from the host's side
			}
			return
		}
		last.Store(time.Now().UnixNano())
		dst.Write(buf[:n]) // a datagram that cannot be sent is lost, as on a wire
	}
}

// isTimeout reports whether err is a read deadline's (the host's sockets
// and the netstack's say so differently).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
