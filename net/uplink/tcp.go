package uplink

import (
	"errors"
	"io"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// spliceBuffer is each direction's buffer of a forwarded TCP connection.
const spliceBuffer = 32 << 10

// forwardTCP handles the guest's SYN to a destination: it dials the host
// socket first, so a refused or unreachable destination gives the guest a
// reset, then completes the handshake and splices the two connections.
// The netstack's forwarder runs it on a goroutine of its own for each
// SYN, at most Limits.TCPHandshakes at once.
func (u *Uplink) forwardTCP(r *tcp.ForwarderRequest) {
	if !u.enter() {
		// Closing: a goroutine the forwarder started as Close began.
		r.Complete(true)
		return
	}
	defer u.exit()
	id := r.ID()
	target, ok := u.hostTarget(id.LocalAddress, id.LocalPort, true)
	if !ok || id.RemoteAddress != u.guest {
		u.stat.dropRefused.Add(1)
		u.cfg.Logger.Debug("uplink: TCP destination not forwarded", "to", id.LocalAddress.String(), "port", id.LocalPort)
		r.Complete(true)
		return
	}
	if !u.newFlowAllowed() {
		r.Complete(false) // dropped: the guest retransmits its SYN
		return
	}
	if !u.tcpConns.tryAcquire() {
		u.stat.dropTCPLimit.Add(1)
		r.Complete(true)
		return
	}
	defer u.tcpConns.release()
	d := net.Dialer{Timeout: u.cfg.Limits.DialTimeout}
	host, err := d.DialContext(u.ctx, "tcp", target.String())
	if err != nil {
		u.stat.tcpDialFailed.Add(1)
		u.cfg.Logger.Debug("uplink: outbound TCP refused", "to", target, "err", err)
		r.Complete(true)
		return
	}
	if !u.track(host) {
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		u.untrack(host)
		return
	}
	guest := gonet.NewTCPConn(&wq, ep)
	if !u.track(guest) {
		u.untrack(host)
		return
	}
	u.splice(guest, host.(*net.TCPConn))
}

// halfCloser is a connection whose write side closes alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies a to b and b to a, each through a bounded buffer, passing
// on each side's end of writing, until both directions end; then it
// closes (and forgets) both. A failed direction closes both at once. The
// calling goroutine copies one way, a goroutine of the uplink's the other.
func (u *Uplink) splice(a, b halfCloser) {
	u.stat.tcpActive.Add(1)
	u.stat.tcpTotal.Add(1)
	defer dec(&u.stat.tcpActive)
	done := make(chan struct{})
	if !u.spawn(func() {
		defer close(done)
		u.copyHalf(a, b)
	}) {
		close(done)
	}
	u.copyHalf(b, a)
	<-done
	u.untrack(a)
	u.untrack(b)
}

// copyHalf copies from src to dst until src ends, then closes dst's
// write side; on an error it closes both.
func (u *Uplink) copyHalf(dst, src halfCloser) {
	buf := make([]byte, spliceBuffer)
	// Plain Reader and Writer: io.CopyBuffer would otherwise hand the
	// copy to ReadFrom or WriteTo, with buffers of their own.
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		src.Close()
		dst.Close()
		return
	}
	dst.CloseWrite()
}
