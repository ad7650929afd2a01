package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/internal/buildinfo"
	"rainforest/internal/units"
)

// Errors of SetCPUs.
var (
	// ErrCPURefused means the guest did not end with exactly the CPUs
	// asked for online: a CPU refused to go online or offline (the
	// kernel's error, quoted), or is not there.
	ErrCPURefused = errors.New("the guest refused a CPU change")
	// ErrUnsupported means the agent speaks a protocol older than the
	// request (cpus needs 1.1).
	ErrUnsupported = errors.New("the agent is too old for this request")
)

// maxSysfsFile bounds what is read of a sysfs CPU list.
const maxSysfsFile = 64 << 10

// cpuDir is the sysfs directory of the guest's CPUs.
func (s *Server) cpuDir() string {
	root := s.cfg.SysRoot
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(root, "devices/system/cpu")
}

// setCPUs makes exactly CPUs 0..n-1 online and reports what is online
// after.
func (s *Server) setCPUs(n int) *agentproto.CPUsResult {
	s.cpus.Lock()
	defer s.cpus.Unlock()
	dir := s.cpuDir()
	err := changeCPUs(dir, n)
	online, rerr := readCPUList(filepath.Join(dir, "online"))
	if err == nil && rerr == nil && !isFirstCPUs(online, n) {
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		err = fmt.Errorf("CPUs %s are online after the change, not %s", units.FormatCPUList(online), units.FormatCPUList(want))
	}
	res := &agentproto.CPUsResult{Online: online}
	if len(res.Online) > agentproto.MaxCPUs {
		res.Online = res.Online[:agentproto.MaxCPUs]
	}
	if err = errors.Join(err, rerr); err != nil {
		msg := strings.ReplaceAll(err.Error(), "\x00", "")
		if len(msg) > agentproto.MaxText {
			msg = msg[:agentproto.MaxText]
		}
		res.Error = strings.ToValidUTF8(msg, "")
	}
	s.log.Info("cpus changed", "asked", n, "online", units.FormatCPUList(online), "err", err)
	return res
}

// isFirstCPUs says whether cpus is 0..n-1.
func isFirstCPUs(cpus []int, n int) bool {
	if len(cpus) != n {
		return false
	}
	for i, c := range cpus {
		if c != i {
			return false
		}
	}
	return true
}

// changeCPUs onlines CPUs 1..n-1 that are offline, lowest first, then
// offlines the present CPUs from n up that are online, highest first
// (CPU 0 stays); it stops at the first CPU that refuses. A CPU's state
// is its own online file; one without (not hot-pluggable) is left alone,
// and the caller's check of the online list tells whether that was right.
func changeCPUs(dir string, n int) error {
	present, err := readCPUList(filepath.Join(dir, "present"))
	if err != nil {
		return err
	}
	for cpu := 1; cpu < n; cpu++ {
		if !slices.Contains(present, cpu) {
			return fmt.Errorf("cpu%d is not present (present: %s)", cpu, units.FormatCPUList(present))
		}
		if err := setOnline(dir, cpu, true); err != nil {
			return err
		}
	}
	for i := len(present) - 1; i >= 0 && present[i] >= n && present[i] != 0; i-- {
		if err := setOnline(dir, present[i], false); err != nil {
			return err
		}
	}
	return nil
}

// setOnline brings cpu online or offline unless it is already, or has
// no online file.
func setOnline(dir string, cpu int, on bool) error {
	path := filepath.Join(dir, "cpu"+strconv.Itoa(cpu), "online")
	want := "0"
	if on {
		want = "1"
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && strings.TrimSpace(string(b)) == want) {
		return nil
	}
	return writeOnline(path, cpu, on)
}

// writeOnline writes cpu's online file, path: "1" or "0".
func writeOnline(path string, cpu int, on bool) error {
	what, v := "offlining", "0"
	if on {
		what, v = "onlining", "1"
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%s cpu%d: %w", what, cpu, err)
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s cpu%d: %w", what, cpu, err)
	}
	return nil
}

// readCPUList reads a sysfs CPU list file.
func readCPUList(path string) ([]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSysfsFile))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	cpus, err := units.ParseCPUList(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cpus, nil
}

// SetCPUs asks the agent at the other end of c (a fresh connection, the
// agent's hello not read yet) to make exactly the guest's CPUs 0..n-1
// online, and returns the guest's online CPUs after. When the guest
// ended with others (a CPU refused to change), the error wraps
// ErrCPURefused and the CPUs are still returned; an agent older than
// protocol 1.1 gives ErrUnsupported. ctx bounds the exchange (through
// c's deadline); the caller closes c.
func SetCPUs(ctx context.Context, c net.Conn, n int) ([]int, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	online, err := setCPUs(c, n)
	if err != nil && ctx.Err() != nil {
		return online, fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return online, err
}

func setCPUs(c net.Conn, n int) ([]int, error) {
	req := &agentproto.CPUs{Online: n}
	if _, err := agentproto.Encode(req); err != nil {
		return nil, err
	}
	pc := agentproto.NewConn(c)
	hello, err := agentproto.HostHandshake(pc, "rfm "+buildinfo.Read().String())
	if err != nil {
		return nil, err
	}
	if hello.ProtocolMinor < 1 {
		return nil, fmt.Errorf("%w: it speaks protocol %d.%d (%s), CPU changes need %d.1; update rf-agent in the guest",
			ErrUnsupported, hello.ProtocolMajor, hello.ProtocolMinor, strconv.Quote(hello.Software), agentproto.ProtocolMajor)
	}
	if err := pc.Send(req); err != nil {
		return nil, fmt.Errorf("agent: sending cpus: %w", err)
	}
	for {
		m, err := pc.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("agent: waiting for the cpus result: %w", err)
		}
		switch m := m.(type) {
		case *agentproto.CPUsResult:
			if m.Error != "" {
				return m.Online, fmt.Errorf("%w: %s (online now: %s)", ErrCPURefused, strconv.Quote(m.Error), units.FormatCPUList(m.Online))
			}
			return m.Online, nil
		case *agentproto.Error:
			return nil, m
		default:
			return nil, fmt.Errorf("%w: the agent answered cpus with %s", agentproto.ErrMalformed, m.Type())
		}
	}
}
