package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrRefused means the device closed a host connection without "OK":
// nothing in the guest listens on the port (or the guest is not up yet).
var ErrRefused = errors.New("vsock: the guest refused the connection")

// Dial is the host side of a host-initiated connection: it connects to a
// device's Unix socket at path, writes "CONNECT <port>\n" and reads the
// device's "OK <hostport>\n" (at most maxHandshake bytes, byte by byte, so
// that nothing of the stream after it is consumed). ctx bounds the whole
// exchange; the returned connection is the byte stream to the guest.
func Dial(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("vsock: connecting to %s: %w", path, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	line, err := connect(c, port)
	if !stop() || ctx.Err() != nil {
		c.Close()
		return nil, fmt.Errorf("vsock: connecting to guest port %d: %w", port, ctx.Err())
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	if _, err := ParseOK(line); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func connect(c net.Conn, port uint32) (string, error) {
	if _, err := c.Write([]byte("CONNECT " + uitoa(port) + "\n")); err != nil {
		return "", fmt.Errorf("vsock: sending CONNECT: %w", err)
	}
	line, err := readLine(c)
	if err != nil {
		if errors.Is(err, net.ErrClosed) || isEOF(err) {
			return "", fmt.Errorf("%w (port %d)", ErrRefused, port)
		}
		return "", fmt.Errorf("vsock: reading the device's answer: %w", err)
	}
	return line, nil
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// ParseOK parses the device's "OK <hostport>" line (without its newline).
func ParseOK(line string) (uint32, error) {
	arg, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return 0, fmt.Errorf("vsock: the device answered %q, want \"OK <port>\"", line)
	}
	p, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("vsock: the device answered %q: bad port", line)
	}
	return uint32(p), nil
}
