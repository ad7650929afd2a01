// Package vmmctl is the control socket between the supervisor and one VMM
// process (`rfm vmm --control-fd`). The supervisor creates a listening Unix
// SOCK_SEQPACKET socket at <rundir>/<subOS>.ctl, hands the listener to the
// VMM at start and connects to it; a restarted supervisor connects to the
// same path.
//
// Every message is one JSON object (at most MaxMessage bytes) with file
// descriptors attached as SCM_RIGHTS:
//
//   - attach (supervisor -> VMM, once, before the guest boots): the shared
//     memory regions this subOS is a member of. For each region, in order,
//     the attached files are its memfd followed by Peers x Vectors
//     eventfds, peer-major (peer p's vector v at 1 + p*Vectors + v). The
//     VMM gives the guest one shared-memory PCI function per region, binds
//     its own peer's eventfds as its interrupts and every other peer's as
//     its doorbell targets. Reply: {} or {"error": "..."}.
//   - export (supervisor -> VMM, any time): the VMM answers with the
//     regions it holds and the same files in the same order, so that a
//     restarted supervisor gets the regions' memory and doorbells back.
//
// The socket lives in the supervisor's run directory (mode 0700); only its
// owner can connect.
package vmmctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"rainforest/vmm/shmem/abi"
)

// Limits.
const (
	// MaxMessage bounds a message's JSON body.
	MaxMessage = 64 << 10
	// MaxFiles bounds the descriptors in one message (the kernel's
	// SCM_MAX_FD is 253).
	MaxFiles = 253
)

// Operations.
const (
	OpAttach = "attach"
	OpExport = "export"
)

// ErrProtocol reports a malformed control message.
var ErrProtocol = errors.New("vmmctl: protocol error")

// Region is one shared-memory region a VMM is a member of.
type Region struct {
	Name       string `json:"name"`
	Protocol   uint8  `json:"protocol"`
	Peers      int    `json:"peers"`
	RWSize     uint64 `json:"rw_size"`
	OutputSize uint64 `json:"output_size"`
	Vectors    int    `json:"vectors"`
	Self       int    `json:"self"` // this VMM's peer id
	RWReadOnly bool   `json:"rw_readonly,omitempty"`
}

// Files is the number of descriptors that travel with r.
func (r Region) Files() int { return 1 + r.Peers*r.Vectors }

// Validate checks r's counts (the shared-memory layout itself is checked
// by the device model).
func (r Region) Validate() error {
	switch {
	case r.Name == "":
		return fmt.Errorf("%w: region without a name", ErrProtocol)
	case r.Peers < 1 || r.Peers > MaxFiles:
		return fmt.Errorf("%w: region %q: %d peers", ErrProtocol, r.Name, r.Peers)
	case r.Vectors < 1 || r.Vectors > abi.MaxVectors:
		return fmt.Errorf("%w: region %q: %d vectors", ErrProtocol, r.Name, r.Vectors)
	case r.Self < 0 || r.Self >= r.Peers:
		return fmt.Errorf("%w: region %q: peer id %d of %d", ErrProtocol, r.Name, r.Self, r.Peers)
	}
	return nil
}

// Message is a request or a reply.
type Message struct {
	Op      string   `json:"op,omitempty"`
	Regions []Region `json:"regions,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// FileCount checks regions and returns how many descriptors travel with
// them.
func FileCount(regions []Region) (int, error) {
	n := 0
	for _, r := range regions {
		if err := r.Validate(); err != nil {
			return 0, err
		}
		n += r.Files()
	}
	if n > MaxFiles {
		return 0, fmt.Errorf("%w: %d descriptors, at most %d per message", ErrProtocol, n, MaxFiles)
	}
	return n, nil
}

// Send writes m with files attached.
func Send(c *net.UnixConn, m Message, files []*os.File) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(body) > MaxMessage || len(files) > MaxFiles {
		return fmt.Errorf("%w: message of %d bytes with %d descriptors", ErrProtocol, len(body), len(files))
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			if fds[i], err = FD(f); err != nil {
				return err
			}
		}
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(body, oob, nil)
	if err != nil {
		return fmt.Errorf("vmmctl send: %w", err)
	}
	if n != len(body) || oobn != len(oob) {
		return fmt.Errorf("vmmctl send: short write")
	}
	return nil
}

// FD returns f's descriptor, valid while f is open, without the side effect
// of os.File.Fd (which puts the shared open file description, here also the
// peer's eventfd, in blocking mode).
func FD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// Recv reads one message and the descriptors that came with it (owned by
// the caller; closed here when the message is malformed).
func Recv(c *net.UnixConn) (Message, []*os.File, error) {
	body := make([]byte, MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(MaxFiles*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(body, oob)
	if err != nil {
		return Message{}, nil, fmt.Errorf("vmmctl receive: %w", err)
	}
	files, ferr := parseRights(oob[:oobn])
	fail := func(err error) (Message, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return Message{}, nil, err
	}
	if ferr != nil {
		return fail(ferr)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > MaxMessage {
		return fail(fmt.Errorf("%w: message truncated", ErrProtocol))
	}
	if n == 0 {
		return fail(fmt.Errorf("vmmctl receive: %w", errEOF))
	}
	var m Message
	if err := json.Unmarshal(body[:n], &m); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrProtocol, err))
	}
	return m, files, nil
}

var errEOF = errors.New("connection closed")

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %v", ErrProtocol, err)
	}
	var files []*os.File
	var bad error
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = fmt.Errorf("%w: %v", ErrProtocol, err)
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "vmmctl"))
		}
	}
	if bad != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, bad
	}
	return files, nil
}

// SplitFiles checks that files match regions (FileCount) and returns, per
// region, its memfd and its eventfds (peer-major). On a mismatch every file
// is closed.
func SplitFiles(regions []Region, files []*os.File) (mem []*os.File, bells [][]*os.File, err error) {
	n, err := FileCount(regions)
	if err == nil && n != len(files) {
		err = fmt.Errorf("%w: %d descriptors for regions needing %d", ErrProtocol, len(files), n)
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	i := 0
	for _, r := range regions {
		mem = append(mem, files[i])
		bells = append(bells, files[i+1:i+r.Files()])
		i += r.Files()
	}
	return mem, bells, nil
}

// Listen creates the control socket at path (replacing a stale one) and
// returns its listener, which does not remove path when closed (the VMM
// that inherits it keeps serving there).
func Listen(path string) (*net.UnixListener, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// Dial connects to the control socket at path.
func Dial(path string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control socket of VMM: %w", err)
	}
	return c, nil
}
