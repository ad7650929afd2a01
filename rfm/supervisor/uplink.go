package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/net/uplink"
)

// The rootless uplink. A NIC with User set is carried by a user-mode NAT
// on gVisor's netstack (net/uplink) running as its own process, `rfm
// uplink`, in the subOS's cgroup (so the work it does for the guest is
// charged to the subOS, like the VMM's back ends). The VMM and the uplink
// share a SOCK_SEQPACKET socketpair of plain Ethernet frames (the VMM's
// framesock backend); the uplink leases the guest its address by DHCP,
// forwards outbound TCP, UDP and ping through host sockets and DNS to the
// host's resolvers, and listens on the host ports the NIC publishes. It
// goes when its VMM closes the socket, and with the subOS's cgroup.

// UplinkStarter starts the uplink process of a NIC (ExecUplink in
// production).
type UplinkStarter interface {
	// StartUplink starts an uplink with args (rfm uplink's flags, the
	// frame socket and readiness descriptors aside) on frames, one end of
	// a SOCK_SEQPACKET socketpair; join places its pid in the subOS's
	// cgroup before it serves. It returns once the uplink is ready (its
	// ports bound), or with its error (a port in use, say).
	StartUplink(args []string, frames *os.File, join func(pid int) error) (UplinkProcess, error)
}

// UplinkProcess is a running uplink.
type UplinkProcess interface {
	PID() int
	Done() <-chan struct{}
	Signal(os.Signal) error
}

// uplinkReadyTimeout bounds an uplink's start.
const uplinkReadyTimeout = 15 * time.Second

// ExecUplink starts `rfm uplink` processes.
type ExecUplink struct {
	RFM string // path of the rfm binary
}

// uplinkChild is an uplink started by ExecUplink.
type uplinkChild struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *uplinkChild) PID() int                 { return c.cmd.Process.Pid }
func (c *uplinkChild) Done() <-chan struct{}    { return c.done }
func (c *uplinkChild) Signal(s os.Signal) error { return c.cmd.Process.Signal(s) }

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.buf.String())
}

// StartUplink implements UplinkStarter.
func (u ExecUplink) StartUplink(args []string, frames *os.File, join func(pid int) error) (UplinkProcess, error) {
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	stderr := &boundedBuffer{max: 4096}
	cmd := exec.Command(u.RFM, append([]string{"uplink", "--frame-fd", "3", "--ready-fd", "4"}, args...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.MultiWriter(stderr, os.Stderr)
	cmd.ExtraFiles = []*os.File{frames, wr}
	// Its own session: it outlives a supervisor that restarts, like the
	// VMM it serves.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	wr.Close()
	if err != nil {
		return nil, fmt.Errorf("start uplink: %w", err)
	}
	c := &uplinkChild{cmd: cmd, done: make(chan struct{})}
	go func() { // owner: the process; ends when it exits
		_ = cmd.Wait()
		close(c.done)
	}()
	fail := func(err error) (UplinkProcess, error) {
		// It may still be on its way out, saying why: give it a moment.
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
		}
		_ = cmd.Process.Kill()
		<-c.done
		if msg := stderr.String(); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return nil, err
	}
	if err := join(cmd.Process.Pid); err != nil {
		return fail(fmt.Errorf("uplink: %w", err))
	}
	ready := make(chan error, 1)
	go func() { // owner: this call; ends when the pipe has an answer or closes
		b := make([]byte, 16)
		n, err := io.ReadAtLeast(rd, b, len("ready"))
		switch {
		case err == nil && strings.HasPrefix(string(b[:n]), "ready"):
			ready <- nil
		case err == nil:
			ready <- fmt.Errorf("uplink said %q", b[:n])
		default:
			ready <- errors.New("the uplink exited before it was ready")
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fail(err)
		}
	case <-time.After(uplinkReadyTimeout):
		rd.Close()
		return fail(fmt.Errorf("the uplink was not ready within %s", uplinkReadyTimeout))
	}
	return c, nil
}

// uplinkArgs are the flags of NIC n's uplink (its guest's MAC aside).
func uplinkArgs(n NIC) []string {
	var args []string
	for _, p := range n.Publish {
		args = append(args, "--publish", p)
	}
	if n.HostLoopback {
		args = append(args, "--host-loopback")
	}
	return args
}

// publishProblems lists what is wrong with NIC n's published ports.
func publishProblems(n NIC) []string {
	var out []string
	for _, p := range n.Publish {
		if _, err := uplink.ParsePublish(p); err != nil {
			out = append(out, err.Error())
		}
	}
	return out
}

// startUplink makes the socketpair of a user NIC and starts its uplink on
// one end (in the subOS's cgroup, through join); it returns the VMM's end.
func (s *Supervisor) startUplink(n NIC, join func(pid int) error) (*os.File, UplinkProcess, error) {
	if s.cfg.Uplinks == nil {
		return nil, nil, fmt.Errorf("%w: nets %s: this supervisor starts no uplinks", ErrInvalid, n.ID)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("nets %s: frame socket: %w", n.ID, err)
	}
	vmmEnd, upEnd := os.NewFile(uintptr(fds[0]), "frames-vmm"), os.NewFile(uintptr(fds[1]), "frames-uplink")
	defer upEnd.Close()
	p, err := s.cfg.Uplinks.StartUplink(uplinkArgs(n), upEnd, join)
	if err != nil {
		vmmEnd.Close()
		return nil, nil, fmt.Errorf("nets %s: %w", n.ID, err)
	}
	return vmmEnd, p, nil
}

// stopUplinks waits briefly for so's uplinks to go (their VMM closed its
// end of the frame socket), then terminates what is left.
func (s *Supervisor) stopUplinks(so *subOS) {
	s.mu.Lock()
	ups := so.uplinks
	so.uplinks = nil
	s.mu.Unlock()
	for _, p := range ups {
		select {
		case <-p.Done():
			continue
		case <-time.After(2 * time.Second):
		}
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.Done():
		case <-time.After(2 * time.Second):
			_ = p.Signal(syscall.SIGKILL)
		}
	}
}
