// Package agentproto is the protocol between the supervisor (host) and
// rf-agent, the agent inside every subOS (the paper's subOScon), spoken
// over a virtio-vsock stream. It is the one definition of that ABI: the
// agent and the supervisor both use it.
//
// # Framing
//
// A frame is a 4-byte big-endian length N, then N bytes: a 1-byte message
// type and the body. N is at least 1 and at most MaxFrame (1 MiB);
// ReadFrame refuses a larger length before reading or allocating the body.
//
// # Bodies
//
// Control messages (hello, heartbeat, stats, watch, exec, resize, signal,
// exit, error, cpus, cpus_result) are JSON objects with snake_case keys: they are rare (one
// every few seconds), easy to read in a trace, and a minor protocol
// version can add fields that an older peer ignores. The exec streams
// (stdout, stderr, stdin) are the raw bytes with no encoding, since they
// carry the bulk of the traffic and base64 in JSON would cost a third
// more; stdin_close has no body.
//
// # A session
//
// The supervisor connects (for a subOS, through the VMM's vsock Unix
// socket, "CONNECT <Port>\n"). The agent sends Hello first; the host
// answers with its own Hello. Either side refuses a different major
// version (CheckVersion; the agent answers with an Error of code
// "version" and closes). The host's next message decides what the
// connection is for:
//
//   - Watch: the agent sends a Heartbeat every heartbeat_ms and a Stats
//     report every stats_ms, until the host closes; a later Watch changes
//     the intervals.
//   - Exec: the agent runs the command; it sends Stdout and Stderr chunks
//     (only Stdout with a TTY), takes Stdin, StdinClose, Resize and
//     Signal, and ends with Exit, then closes. The host closing the
//     connection kills the command's process tree. An agent already
//     running its maximum of commands answers Error "busy".
//   - CPUs (since 1.1): the agent makes exactly the guest's CPUs
//     0..online-1 online (lowest first) and the higher ones offline
//     (highest first; never CPU 0), stopping at the first CPU that
//     refuses, answers CPUsResult with the online CPUs it then reads
//     and the refusal, and closes. The host sends it only to an agent
//     whose hello says 1.1 or later (an older one would ignore it).
//
// # Untrusted input
//
// Everything the guest sends is untrusted. Decode bounds every field of
// every message (counts, lengths, string sizes, numeric ranges) and
// returns an error wrapping ErrMalformed for anything outside them; the
// fuzz target FuzzDecode checks that it never panics and that whatever it
// accepts re-encodes and decodes the same. Strings it accepts are still
// guest text: quote them (internal/untrusted) before showing them.
package agentproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Port is the vsock port the agent listens on.
const Port = 1024

// MaxFrame bounds a frame's length (type byte and body).
const MaxFrame = 1 << 20

// ErrFrameTooLarge means a frame's length is over MaxFrame (or zero).
var ErrFrameTooLarge = errors.New("agentproto: frame length out of range")

// Frame is one undecoded frame.
type Frame struct {
	Type Type
	Body []byte
}

// ReadFrame reads one frame. A length over MaxFrame, or zero, is refused
// with ErrFrameTooLarge without reading the body; a stream that ends
// inside a frame gives io.ErrUnexpectedEOF, and one that ends between
// frames io.EOF.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n == 0 || n > MaxFrame {
		return Frame{}, fmt.Errorf("%w: %d bytes (at most %d)", ErrFrameTooLarge, n, MaxFrame)
	}
	if _, err := io.ReadFull(r, hdr[4:5]); err != nil {
		return Frame{}, noEOF(err)
	}
	body := make([]byte, n-1)
	if _, err := io.ReadFull(r, body); err != nil {
		return Frame{}, noEOF(err)
	}
	return Frame{Type: Type(hdr[4]), Body: body}, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendFrame appends f, framed, to b.
func AppendFrame(b []byte, f Frame) ([]byte, error) {
	if len(f.Body)+1 > MaxFrame {
		return b, fmt.Errorf("%w: %d bytes (at most %d)", ErrFrameTooLarge, len(f.Body)+1, MaxFrame)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(f.Body)+1))
	b = append(b, byte(f.Type))
	return append(b, f.Body...), nil
}

// WriteFrame writes f in one Write call.
func WriteFrame(w io.Writer, f Frame) error {
	b, err := AppendFrame(make([]byte, 0, 5+len(f.Body)), f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
