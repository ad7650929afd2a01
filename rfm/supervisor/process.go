package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/internal/untrusted"
)

// Process is a running VMM process.
type Process interface {
	PID() int
	StartTime() uint64
	// Done is closed once the process has exited.
	Done() <-chan struct{}
	Signal(sig syscall.Signal) error
	// Release stops watching the process (which keeps running); Done is
	// not closed by a later exit.
	Release()
}

// Launcher starts VMM processes and re-attaches to running ones.
type Launcher interface {
	// Start runs argv (the VMM command line without the binary), in its own
	// session so that it outlives the supervisor, with output appended to
	// logPath and files inherited as descriptors FirstExtraFD, +1, .... The VMM waits before doing anything until prepare(pid) has
	// returned (the supervisor moves it into its cgroup there); Start
	// returns once the VMM reports it is running. A VMM that exits first,
	// or a failing prepare, is an error carrying the tail of its log.
	Start(ctx context.Context, argv []string, logPath string, files []*os.File, prepare func(pid int) error) (Process, error)
	// Adopt attaches to a VMM started by an earlier supervisor; it fails
	// when pid no longer is that process (start time differs).
	Adopt(pid int, startTime uint64) (Process, error)
}

// FirstExtraFD is the descriptor number of the first file a Launcher passes
// (0-2 are stdio, 3 and 4 the ready and wait pipes).
const FirstExtraFD = 5

// vmmCloneFlags are the namespaces a VMM starts in. In its new PID
// namespace the VMM is init: signals reach it only for the handlers it has,
// and the Go runtime has one for every signal stopProcess sends.
const vmmCloneFlags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET

// ExecLauncher runs `RFM vmm ...` processes.
type ExecLauncher struct {
	RFM      string // path of the rfm binary
	ProcRoot string // "/proc" when empty
}

// Start implements Launcher.
func (l ExecLauncher) Start(ctx context.Context, argv []string, logPath string, files []*os.File, prepare func(pid int) error) (Process, error) {
	// Read-write: the VMM's console log (vmm/consolelog) rotates on this
	// descriptor and reads its tail back to keep it.
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("subOS log: %w", err)
	}
	defer logf.Close()
	rd, wr, err := os.Pipe() // VMM -> supervisor: "ready"
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	goRd, goWr, err := os.Pipe() // supervisor -> VMM: "go"
	if err != nil {
		wr.Close()
		return nil, err
	}
	defer goWr.Close()
	cmd := exec.Command(l.RFM, append(argv, "--ready-fd", "3", "--wait-fd", "4")...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = append([]*os.File{wr, goRd}, files...)
	// Its own session (it outlives the supervisor) and its own mount, PID,
	// IPC and network namespaces, in which it jails itself (vmm/jail) once
	// it has its files.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: vmmCloneFlags}
	err = cmd.Start()
	wr.Close()
	goRd.Close()
	if err != nil {
		return nil, fmt.Errorf("start VMM: %w", err)
	}
	p := &childProcess{cmd: cmd, done: make(chan struct{})}
	go func() { // owner: the process; ends when it exits
		_ = cmd.Wait()
		close(p.done)
	}()
	st, err := procStartTime(l.procRoot(), cmd.Process.Pid)
	if err == nil {
		p.start = st
	}
	if prepare != nil {
		if err := prepare(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			<-p.done
			return nil, err
		}
	}
	if _, err := goWr.Write([]byte("go\n")); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, fmt.Errorf("VMM exited before starting: %s", vmmLastWords(logPath))
	}
	ready := make(chan error, 1)
	go func() { // ends when the pipe yields a line or EOF (the VMM exited)
		line, err := bufio.NewReader(rd).ReadString('\n')
		if strings.TrimSpace(line) == "ready" {
			ready <- nil
			return
		}
		if err == nil || errors.Is(err, io.EOF) {
			ready <- errors.New("VMM exited before running")
			return
		}
		ready <- fmt.Errorf("VMM exited before running: %w", err)
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, fmt.Errorf("%w: %s", err, vmmLastWords(logPath))
	}
	return p, nil
}

func (l ExecLauncher) procRoot() string {
	if l.ProcRoot == "" {
		return "/proc"
	}
	return l.ProcRoot
}

// Adopt implements Launcher with a pidfd, which works for processes that
// are not our children.
func (l ExecLauncher) Adopt(pid int, startTime uint64) (Process, error) {
	st, err := procStartTime(l.procRoot(), pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	if st != startTime {
		return nil, fmt.Errorf("process %d is not the recorded VMM (start time %d, recorded %d)", pid, st, startTime)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	p := &adoptedProcess{pid: pid, start: st, fd: fd, stop: r, stopW: w, done: make(chan struct{})}
	go p.watch()
	return p, nil
}

type childProcess struct {
	cmd   *exec.Cmd
	start uint64
	done  chan struct{}
}

// ExitStatus says how the process ended ("exit status 1", "signal:
// killed"); see exitDetail.
func (p *childProcess) ExitStatus() string {
	select {
	case <-p.done:
		return p.cmd.ProcessState.String()
	default:
		return "still running"
	}
}

func (p *childProcess) PID() int                        { return p.cmd.Process.Pid }
func (p *childProcess) StartTime() uint64               { return p.start }
func (p *childProcess) Done() <-chan struct{}           { return p.done }
func (p *childProcess) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Release implements Process. A child's waiter goroutine must reap it, so it
// ends only when the child exits (at the latest with the supervisor).
func (p *childProcess) Release() {}

type adoptedProcess struct {
	pid     int
	start   uint64
	fd      int
	stop    *os.File // closing the write end ends watch
	stopW   *os.File
	release sync.Once
	done    chan struct{}
}

func (p *adoptedProcess) PID() int              { return p.pid }
func (p *adoptedProcess) StartTime() uint64     { return p.start }
func (p *adoptedProcess) Done() <-chan struct{} { return p.done }

func (p *adoptedProcess) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return unix.PidfdSendSignal(p.fd, sig, nil, 0)
}

// watch is the process's own goroutine: it ends when the process exits (its
// pidfd becomes readable) or Release is called.
func (p *adoptedProcess) watch() {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}, {Fd: int32(p.stop.Fd()), Events: unix.POLLIN}}
	exited := false
	for {
		n, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err == nil && n > 0 {
			exited = fds[0].Revents != 0
		}
		break
	}
	unix.Close(p.fd)
	p.stop.Close()
	p.Release() // the write end too: nothing needs it once watch ends
	if exited {
		close(p.done)
	}
}

// Release implements Process.
func (p *adoptedProcess) Release() { p.release.Do(func() { p.stopW.Close() }) }

// procStartTime reads field 22 (starttime) of /proc/PID/stat.
func procStartTime(procRoot string, pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the comm: state is field 3, so starttime (22) is index 19.
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Bounds on the guest-written log text that reaches errors and audit
// events.
const (
	logTailBytes = 16 << 10 // read from the end of a log, at most
	logLineBytes = 200      // of each line quoted
)

// logTail returns the last n lines of a log file, each quoted and bounded
// (untrusted.Quote: the guest writes the log), joined with " | ". It reads
// at most logTailBytes from the end of the file, however big it is.
func logTail(path string, n int) string {
	b, err := untrusted.ReadTail(path, logTailBytes)
	if err != nil {
		return "(no log)"
	}
	lines := untrusted.LastLines(b, n)
	if len(lines) == 0 {
		return "(empty log)"
	}
	q := make([]string, len(lines))
	for i, l := range lines {
		q[i] = untrusted.Quote(l, logLineBytes)
	}
	return strings.Join(q, " | ")
}

// vmmLastWords says why a VMM that failed to start ended: its last error
// line ("rfm: ..."), quoted and bounded, when its log has one among its
// last lines, else those lines.
func vmmLastWords(path string) string {
	b, err := untrusted.ReadTail(path, logTailBytes)
	if err != nil {
		return "(no log)"
	}
	lines := untrusted.LastLines(b, 20)
	for i := len(lines) - 1; i >= 0; i-- {
		if bytes.HasPrefix(lines[i], []byte("rfm: ")) {
			return untrusted.Quote(lines[i], 2*logLineBytes)
		}
	}
	return logTail(path, 3)
}

// exitDetail is the audit detail of a VMM that exited on its own: its
// exit status where known (a child's, not an adopted process's) and its
// log's last line, quoted and bounded.
func exitDetail(p Process, logPath string) string {
	status := "exit status unknown"
	if e, ok := p.(interface{ ExitStatus() string }); ok {
		status = e.ExitStatus()
	}
	return fmt.Sprintf("VMM exited (%s); last console line: %s", status, logTail(logPath, 1))
}

// stopProcess asks a VMM to stop (SIGTERM: it powers the guest off hard and
// releases everything), then kills it after grace.
func stopProcess(p Process, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
		return
	case <-time.After(grace):
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.Done()
}

// trimLog keeps the log at path (a back end's, written by a process that
// holds it open with O_APPEND) under max bytes: past that it keeps the
// last lines of its last max/2 bytes, after a line saying so. Lines a
// writer appends while it trims may be lost; the log's size is what
// matters (a guest can make a back end log).
func trimLog(path string, max int64) error {
	st, err := os.Stat(path)
	if err != nil || st.Size() <= max {
		return err
	}
	tail, err := untrusted.ReadTail(path, max/2)
	if err != nil {
		return err
	}
	if i := bytes.IndexByte(tail, '\n'); i >= 0 {
		tail = tail[i+1:]
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	head := fmt.Sprintf("[rfm: the log passed %d bytes; earlier lines dropped]\n", max)
	_, err = f.Write(append([]byte(head), tail...))
	return err
}
