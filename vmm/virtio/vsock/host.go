package vsock

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// HandshakeTimeout bounds how long a host peer may take to send its
// CONNECT line.
const HandshakeTimeout = 5 * time.Second

// maxHandshake bounds the CONNECT line ("CONNECT 4294967295\n" is 19).
const maxHandshake = 32

// readChunk is the most read from a host peer at once.
const readChunk = 16 << 10

// DialUnix returns a Dial for Options that connects guest port P's
// connections to the Unix socket "<path>_<P>", as Firecracker does.
func DialUnix(path string) func(ctx context.Context, port uint32) (net.Conn, error) {
	return func(ctx context.Context, port uint32) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", path+"_"+uitoa(port))
	}
}

// accept takes host-initiated connections until the listener closes.
func (d *Device) accept() {
	defer d.wg.Done()
	for {
		hc, err := d.ln.Accept()
		if err != nil {
			if d.ctx.Err() == nil {
				d.log.Warn("vsock: listener failed; host-initiated connections stop", "err", err)
			}
			return
		}
		d.mu.Lock()
		if d.closing || len(d.conns)+len(d.handshakes) >= MaxConns {
			d.mu.Unlock()
			hc.Close()
			continue
		}
		d.handshakes[hc] = struct{}{}
		d.wg.Add(1)
		d.mu.Unlock()
		go d.handshake(hc)
	}
}

// ParseConnect parses a host peer's "CONNECT <port>" line (without its
// newline).
func ParseConnect(line string) (uint32, error) {
	arg, ok := strings.CutPrefix(line, "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("vsock: %q: want \"CONNECT <port>\"", line)
	}
	p, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("vsock: %q: port: want 0..4294967295", line)
	}
	return uint32(p), nil
}

// readLine reads one line byte by byte (nothing after the newline is
// consumed: it is the connection's first data).
func readLine(c net.Conn) (string, error) {
	var b [maxHandshake]byte
	for n := 0; n < len(b); n++ {
		if _, err := c.Read(b[n : n+1]); err != nil {
			return "", err
		}
		if b[n] == '\n' {
			return string(b[:n]), nil
		}
	}
	return "", fmt.Errorf("vsock: CONNECT line longer than %d bytes", maxHandshake)
}

// handshake reads a host peer's CONNECT line and asks the guest to
// accept the connection.
func (d *Device) handshake(hc net.Conn) {
	defer d.wg.Done()
	_ = hc.SetReadDeadline(time.Now().Add(HandshakeTimeout))
	line, err := readLine(hc)
	var port uint32
	if err == nil {
		port, err = ParseConnect(line)
	}
	_ = hc.SetReadDeadline(time.Time{})
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.handshakes, hc)
	if err != nil || d.closing || d.rx == nil {
		if err != nil {
			d.log.Debug("vsock: host connection refused", "err", err)
		}
		hc.Close()
		return
	}
	key := connKey{host: d.freePortLocked(port), guest: port}
	c := d.addLocked(key, hc, stateConnecting)
	c.sendRequest = true
	d.startLocked(c)
	d.kickLocked()
}

// freePortLocked picks a host port for a connection to guest port.
func (d *Device) freePortLocked(guest uint32) uint32 {
	for {
		p := d.nextPort
		d.nextPort++
		if d.nextPort == 0 {
			d.nextPort = 1 << 30
		}
		if _, taken := d.conns[connKey{host: p, guest: guest}]; !taken {
			return p
		}
	}
}

// startLocked starts c's reader and writer.
func (d *Device) startLocked(c *conn) {
	d.wg.Add(2)
	go d.readHost(c)
	go d.writeHost(c)
}

// dialHost connects a guest-initiated connection to its host peer.
func (d *Device) dialHost(c *conn) {
	defer d.wg.Done()
	hc, err := d.dial(d.ctx, c.key.host)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil || c.closed {
		if err != nil {
			d.log.Debug("vsock: guest connection refused", "port", c.key.host, "err", err)
			d.dropLocked(c, true)
		} else {
			hc.Close()
		}
		return
	}
	c.host, c.state, c.sendResponse = hc, stateEstablished, true
	d.stats.Dialed++
	d.startLocked(c)
	d.kickLocked()
}

// readHost copies the host peer's bytes into c.in, never holding more
// than MaxHostPending.
func (d *Device) readHost(c *conn) {
	defer d.wg.Done()
	buf := make([]byte, readChunk)
	for {
		d.mu.Lock()
		for !c.closed && len(c.in) >= MaxHostPending {
			d.mu.Unlock()
			<-c.room
			d.mu.Lock()
		}
		room := MaxHostPending - len(c.in)
		closed := c.closed
		d.mu.Unlock()
		if closed {
			return
		}
		n, err := c.host.Read(buf[:min(len(buf), room)])
		d.mu.Lock()
		if c.closed {
			d.mu.Unlock()
			return
		}
		if n > 0 && !c.guestShutRcv {
			c.in = append(c.in, buf[:n]...)
		}
		if err != nil {
			c.hostEOF = true // EOF or a broken peer: nothing more comes
			d.settleLocked(c)
		}
		d.kickLocked()
		d.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// writeHost writes c.out to the host peer and counts what the guest sent
// as forwarded (credit it gets back).
func (d *Device) writeHost(c *conn) {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		for !c.closed && len(c.out) == 0 {
			d.mu.Unlock()
			<-c.wake
			d.mu.Lock()
		}
		if c.closed {
			d.mu.Unlock()
			return
		}
		chunk := c.out
		d.mu.Unlock()
		n, err := c.host.Write(chunk)
		d.mu.Lock()
		if c.closed {
			d.mu.Unlock()
			return
		}
		c.out = c.out[n:]
		if len(c.out) == 0 {
			c.out = nil
		}
		pre := min(n, c.outPreamble)
		c.outPreamble -= pre
		c.fwdCnt += uint32(n - pre)
		if c.fwdCnt-c.lastFwdSent >= creditThreshold {
			c.sendCredit = true
		}
		if err != nil {
			d.log.Debug("vsock: host peer write failed", "port", c.key.host, "err", err)
			d.dropLocked(c, true)
		} else {
			d.settleLocked(c)
		}
		d.kickLocked()
		d.mu.Unlock()
	}
}
