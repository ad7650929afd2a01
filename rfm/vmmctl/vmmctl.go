// Package vmmctl is the control socket between the supervisor and one VMM
// process (`rfm vmm --control-fd`), both ends of it. The supervisor creates
// a listening Unix SOCK_SEQPACKET socket at <rundir>/<subOS>.ctl, hands the
// listener to the VMM at start and connects to it; a restarted supervisor
// connects to the same path. Each connection carries one request and its
// reply.
//
// Every message is one JSON object (at most MaxMessage bytes, unknown
// fields refused) with file descriptors attached as SCM_RIGHTS:
//
//   - launch (supervisor -> VMM, once, before the guest boots): the VMM's
//     configuration document (vmm/config) and, for each of its regions in
//     order, the region's memfd followed by Peers x Vectors eventfds,
//     peer-major (peer p's vector v at 1 + p*Vectors + v). The VMM gives
//     the guest one shared-memory PCI function per region. Reply: {} or
//     {"error": "..."}.
//   - export (any time): the VMM answers with the regions it holds and the
//     same files in the same order, so that a restarted supervisor gets the
//     regions' memory and doorbells back.
//   - attach_disk {"disk": {...}}: hot-add a virtio-blk disk. Reply: the
//     device ({"devices": [...]}).
//   - grant {"regions": [one]} with that region's files: hot-add the
//     region's shared-memory function. Reply: the device.
//   - attach_share {"share": {...}} with one descriptor, a Unix stream
//     socket connected to the share's vhost-user back end (virtiofsd):
//     hot-add a virtio-fs device on it. Reply: the device.
//   - detach {"id": "...", "timeout_ms": N}: ask the guest to release a
//     device (a disk id, or "region/NAME") and remove it; the guest has
//     timeout_ms to let go, else the device stays and the reply is an
//     error saying so.
//   - devices: the devices plugged now.
//   - set_cpus {"cores": [...]}: pin vCPU i's thread to host core
//     cores[i] and every vCPU beyond them to cores[0] (where a vCPU the
//     guest keeps offline waits, costing no host CPU); the guest then
//     onlines vCPUs 0..len(cores)-1 (through its agent). 1 to the
//     machine's vCPU count of distinct host cores; a refusal changes
//     nothing. Reply: every vCPU's pinning ({"vcpus": [...]}).
//   - vcpus: every vCPU's pinning, as the host kernel has it.
//   - set_memory {"requested": N, "timeout_ms": T}: ask the guest to plug
//     N bytes of the VMM's hotplug memory (virtio-mem; a multiple of its
//     block size, at most its region; 0 unplugs it all) and wait up to T
//     (0: not at all, at most 10 minutes) for the guest to get there.
//     Reply: the memory's state ({"memory": {...}}), whose plugged size
//     may fall short of the requested one: a partial result, not an
//     error.
//   - memory: the hotplug memory's state.
//
// Who may talk on it: the socket file is born mode 0600 (Listen) in the
// supervisor's run directory; the VMM answers only connections from the
// uid that sent the launch request (Serve), closing others unread; and the
// supervisor talks only to the subOS's own VMM process (Call checks the
// server's SO_PEERCRED pid, which the VMM makes its own with
// peercred.Relisten in Listener).
package vmmctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"rainforest/internal/peercred"
	"rainforest/vmm/config"
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
	OpLaunch      = "launch"
	OpExport      = "export"
	OpAttachDisk  = "attach_disk"
	OpGrant       = "grant"
	OpAttachShare = "attach_share"
	OpDetach      = "detach"
	OpDevices     = "devices"
	OpSetCPUs     = "set_cpus"
	OpVCPUs       = "vcpus"
	OpSetMemory   = "set_memory"
	OpMemory      = "memory"
)

// ErrProtocol reports a malformed control message.
var ErrProtocol = errors.New("vmmctl: protocol error")

// Message is a request or a reply.
type Message struct {
	Op string `json:"op,omitempty"`
	// Config is the launch document (decoded strictly by Document).
	Config  json.RawMessage `json:"config,omitempty"`
	Regions []config.Region `json:"regions,omitempty"`
	Disk    *config.Disk    `json:"disk,omitempty"`
	// Share is an attach_share request's share (its socket comes as the
	// message's descriptor).
	Share *config.Share `json:"share,omitempty"`
	ID    string        `json:"id,omitempty"`
	// TimeoutMS bounds how long a detach waits for the guest.
	TimeoutMS int64    `json:"timeout_ms,omitempty"`
	Devices   []Device `json:"devices,omitempty"`
	// Cores are a set_cpus request's host cores, vCPU i's at i.
	Cores []int `json:"cores,omitempty"`
	// VCPUs are the vCPUs' pinnings (set_cpus and vcpus replies).
	VCPUs []VCPUPin `json:"vcpus,omitempty"`
	// Requested is a set_memory request's size in bytes.
	Requested uint64 `json:"requested,omitempty"`
	// Memory is the hotplug memory's state (set_memory and memory
	// replies).
	Memory *Memory `json:"memory,omitempty"`
	Error  string  `json:"error,omitempty"`
	// Code classifies Error for callers that branch (see the sentinels).
	Code string `json:"code,omitempty"`
}

// Device is a device plugged into a VMM.
type Device struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // "disk", "net", "region", "console", "share"
	Slot int    `json:"slot"`
	// Path is a disk's backing or a share's back-end socket; Name a
	// region's name, a share's tag, a net's TAP interface when the VMM
	// opened it by name, or a loop member's loop network.
	Path     string `json:"path,omitempty"`
	Name     string `json:"name,omitempty"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// Counters are a net's frame counters by name (virtio/net's
	// Stats.Counters; a loop member's backend's prefixed loop_), the
	// zero ones left out.
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Vhost, for a net given vhost-net, says who serves its queues:
	// "on" (the host kernel), "ready" (the kernel will, once the guest's
	// driver starts the device), "fallback" (the VMM, after vhost-net
	// failed) or "off" (the VMM: vhost-net was unusable); empty for a
	// net the VMM serves without vhost-net.
	Vhost string `json:"vhost,omitempty"`
}

// VCPUPin is where one vCPU's thread runs: the host core it is pinned
// to (-1 when its affinity is not one core), as the host kernel has it
// while the thread runs, and the thread's id in the VMM's PID namespace
// (0 while it does not run).
type VCPUPin struct {
	VCPU int `json:"vcpu"`
	Core int `json:"core"`
	TID  int `json:"tid,omitempty"`
}

// Memory is a VMM's hotplug memory (virtio-mem): the bytes the
// guest is asked to plug, the bytes it has plugged, the region's size
// and its block size.
type Memory struct {
	Requested  uint64 `json:"requested"`
	Plugged    uint64 `json:"plugged"`
	RegionSize uint64 `json:"region_size"`
	BlockSize  uint64 `json:"block_size"`
}

// Document decodes the launch message's configuration document.
func (m Message) Document() (*config.Document, error) {
	if len(m.Config) == 0 {
		return nil, fmt.Errorf("%w: launch without a configuration document", ErrProtocol)
	}
	return config.Decode(bytes.NewReader(m.Config))
}

// FileCount checks regions and returns how many descriptors travel with
// them.
func FileCount(regions []config.Region) (int, error) {
	n := 0
	for _, r := range regions {
		if err := r.Validate(); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrProtocol, err)
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
	dec := json.NewDecoder(bytes.NewReader(body[:n]))
	dec.DisallowUnknownFields()
	var m Message
	if err := dec.Decode(&m); err != nil {
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
func SplitFiles(regions []config.Region, files []*os.File) (mem []*os.File, bells [][]*os.File, err error) {
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

// Listen creates the control socket at path (replacing a stale one), its
// file born with mode 0600, and returns its listener, which does not
// remove path when closed (the VMM that inherits it keeps serving there).
func Listen(path string) (*net.UnixListener, error) {
	os.Remove(path)
	ln, err := peercred.Listen("unixpacket", path, 0o600, -1)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// Dial connects to the control socket at path, whoever serves it (the
// launch, before the VMM took the socket over; see DialVMM).
func Dial(path string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control socket of VMM: %w", err)
	}
	return c, nil
}

// ErrWrongPeer reports a control socket served by another process than
// the subOS's VMM.
var ErrWrongPeer = errors.New("control socket is not served by the subOS's VMM")

// VMM names one VMM's control socket: its path, and the pid of the VMM
// process in the caller's PID namespace (the kernel translates the
// server's pid into it, so a VMM in a PID namespace of its own still
// shows its pid here).
type VMM struct {
	Path string
	PID  int
}

// DialVMM connects to v's control socket and checks, before anything is
// sent, that the process serving it is v.PID (its SO_PEERCRED).
func DialVMM(v VMM) (*net.UnixConn, error) {
	c, err := Dial(v.Path)
	if err != nil {
		return nil, err
	}
	cred, err := peercred.Of(c)
	if err == nil && (v.PID <= 0 || int(cred.PID) != v.PID) {
		err = fmt.Errorf("%w: %s is served by pid %d (uid %d), the VMM is pid %d", ErrWrongPeer, v.Path, cred.PID, cred.UID, v.PID)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
