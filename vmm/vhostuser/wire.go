package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// ReadMessage reads one message from c: the header, then exactly the
// payload it announces (at most MaxPayload bytes), with the descriptors
// that came with either (at most maxFDs; the caller owns them). On error
// every descriptor received is closed; a connection closed before the
// first byte is io.EOF.
func ReadMessage(c *net.UnixConn, maxFDs int) (Message, error) {
	var fds []int
	fail := func(err error) (Message, error) {
		closeFDs(fds)
		return Message{}, err
	}
	var hb [HeaderSize]byte
	if err := readFull(c, hb[:], &fds, maxFDs, true); err != nil {
		return fail(err)
	}
	h, err := ParseHeader(hb[:])
	if err != nil {
		return fail(err)
	}
	payload := make([]byte, h.Size)
	if err := readFull(c, payload, &fds, maxFDs, false); err != nil {
		return fail(err)
	}
	return Message{Header: h, Payload: payload, FDs: fds}, nil
}

// readFull fills b from c, collecting descriptors into fds (bounded by
// maxFDs). first: b is the start of a message, where a clean end of the
// stream is io.EOF rather than a truncated message.
func readFull(c *net.UnixConn, b []byte, fds *[]int, maxFDs int, first bool) error {
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	got := 0
	for got < len(b) {
		n, oobn, flags, _, err := c.ReadMsgUnix(b[got:], oob)
		if oobn > 0 {
			rights, perr := parseRights(oob[:oobn])
			*fds = append(*fds, rights...)
			if perr != nil {
				return perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fmt.Errorf("%w: descriptors truncated (more than %d)", ErrProtocol, MaxFDs)
		}
		if len(*fds) > maxFDs {
			return fmt.Errorf("%w: %d descriptors with one message, at most %d", ErrProtocol, len(*fds), maxFDs)
		}
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) && got == 0 && first {
				return io.EOF
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: message cut short after %d of %d bytes", ErrProtocol, got, len(b))
			}
			return err
		}
		if n == 0 {
			if got == 0 && first {
				return io.EOF
			}
			return fmt.Errorf("%w: message cut short after %d of %d bytes", ErrProtocol, got, len(b))
		}
	}
	return nil
}

// parseRights returns the descriptors of SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %w", ErrProtocol, err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		r, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, fmt.Errorf("%w: control message: %w", ErrProtocol, err)
		}
		fds = append(fds, r...)
	}
	return fds, nil
}

// WriteMessage writes one message to c with fds (at most MaxFDs) attached
// to its first byte.
func WriteMessage(c *net.UnixConn, h Header, payload []byte, fds []int) error {
	if len(payload) > MaxPayload || len(fds) > MaxFDs {
		return fmt.Errorf("vhost-user: %v: %d payload bytes and %d descriptors (at most %d and %d)", h.Request, len(payload), len(fds), MaxPayload, MaxFDs)
	}
	h.Size = uint32(len(payload))
	hb := h.Encode()
	buf := append(hb[:], payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.WriteMsgUnix(buf, oob, nil)
	if err != nil {
		return err
	}
	// A stream socket may take part of it; the descriptors went with
	// the first byte.
	for n < len(buf) {
		m, err := c.Write(buf[n:])
		if err != nil {
			return err
		}
		n += m
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
