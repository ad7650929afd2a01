package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	// creack/pty allocates the pseudo-terminal for `rfm exec -it`
	// (already a test dependency of the console client; it has no cgo).
	"github.com/creack/pty"

	"rainforest/internal/agentproto"
	"rainforest/internal/procstat"
)

// chunk is the most output bytes sent in one frame.
const chunk = 32 << 10

// stdinQueue bounds the stdin chunks held for a command that is not
// reading (each at most agentproto.MaxChunk).
const stdinQueue = 16

// baseEnv is a command's environment before the request's entries.
func baseEnv(tty bool) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	if tty {
		env = append(env, "TERM=xterm")
	}
	return env
}

// startExitCode is the exit status of a command that could not start, as
// shells report it: 127 not found, 126 not runnable.
func startExitCode(err error) int32 {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		return 127
	}
	return 126
}

// running is one command and what the connection's goroutines share.
type running struct {
	s     *Server
	pc    *agentproto.Conn
	cmd   *exec.Cmd
	tty   *os.File   // the pty master, or nil
	stdin *os.File   // where stdin goes, or nil
	outs  []*os.File // output read ends (pipes; the master with a TTY)

	goneOnce sync.Once
	gone     chan struct{} // closed when the host went away
	exited   chan struct{} // closed once the command was reaped
}

// exec runs req and streams it over pc until the command ends (Exit) or
// the host goes away (the command's tree is killed). It calls release
// once the command has ended, and closes c.
func (s *Server) exec(ctx context.Context, c net.Conn, pc *agentproto.Conn, req *agentproto.Exec, release func()) error {
	r := &running{s: s, pc: pc, gone: make(chan struct{}), exited: make(chan struct{})}
	if err := r.start(req); err != nil {
		release()
		pc.Send(&agentproto.Exit{Code: startExitCode(err), Error: truncate(err.Error(), agentproto.MaxText)})
		return nil
	}
	s.log.Debug("exec started", "argv0", req.Argv[0], "pid", r.cmd.Process.Pid, "tty", req.TTY)

	var wg sync.WaitGroup
	// Reap the command.
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.cmd.Wait()
		close(r.exited)
	}()
	// Its output to the host.
	var outputs sync.WaitGroup
	for i, f := range r.outs {
		stream := agentproto.TypeStdout
		if i == 1 {
			stream = agentproto.TypeStderr
		}
		outputs.Add(1)
		go func() {
			defer outputs.Done()
			r.copyOut(f, stream)
		}()
	}
	// The host's messages; stdin through a bounded queue, so that a
	// command not reading stdin does not stop the agent from seeing the
	// host go away.
	stdinQ := make(chan []byte, stdinQueue) // nil: stdin closed
	done := make(chan struct{})             // the command ended and was reported
	wg.Add(2)
	go func() {
		defer wg.Done()
		r.readHost(stdinQ, done)
	}()
	go func() {
		defer wg.Done()
		r.pumpStdin(stdinQ, done)
	}()
	stopCtx := context.AfterFunc(ctx, r.hostGone)

	<-r.exited
	select {
	case <-r.gone:
		// Nobody reads the output: unblock the readers (pipes are
		// pollable; a pty master sees EIO once its tree is dead).
		for _, f := range r.outs {
			if f != r.tty {
				f.Close()
			}
		}
	default:
	}
	outputs.Wait()
	stopCtx()
	release()
	var err error
	select {
	case <-r.gone:
		err = errors.New("agent: exec: the host went away; the command was killed")
	default:
		if serr := pc.Send(exitOf(r.cmd.ProcessState)); serr != nil {
			err = fmt.Errorf("agent: exec: reporting the exit: %w", serr)
		}
	}
	close(done)
	c.Close() // ends readHost
	if r.stdin != nil {
		r.stdin.Close() // ends a blocked pumpStdin
	}
	for _, f := range r.outs {
		f.Close()
	}
	wg.Wait()
	return err
}

// start starts the command with pipes or on a pseudo-terminal.
func (r *running) start(req *agentproto.Exec) error {
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env = append(baseEnv(req.TTY), req.Env...)
	cmd.Dir = req.Dir
	r.cmd = cmd
	if req.TTY {
		// A session of its own with the pty as its controlling
		// terminal: its process group is the command's PID.
		ptmx, err := pty.StartWithAttrs(cmd, &pty.Winsize{Rows: req.Rows, Cols: req.Cols},
			&syscall.SysProcAttr{Setsid: true, Setctty: true})
		if err != nil {
			return err
		}
		r.tty, r.outs = ptmx, []*os.File{ptmx}
		if req.Stdin {
			r.stdin = ptmx
		}
		return nil
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var child []*os.File // the command's ends, closed here once it started
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	pipe := func() (*os.File, *os.File, error) {
		rd, wr, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("agent: exec: %w", err)
		}
		return rd, wr, nil
	}
	if req.Stdin {
		rd, wr, err := pipe()
		if err != nil {
			return err
		}
		child = append(child, rd)
		cmd.Stdin, r.stdin = rd, wr
	}
	for _, dst := range []*io.Writer{&cmd.Stdout, &cmd.Stderr} {
		rd, wr, err := pipe()
		if err != nil {
			r.closeOurs()
			return err
		}
		child = append(child, wr)
		*dst = wr
		r.outs = append(r.outs, rd)
	}
	if err := cmd.Start(); err != nil {
		r.closeOurs()
		return err
	}
	return nil
}

func (r *running) closeOurs() {
	if r.stdin != nil {
		r.stdin.Close()
	}
	for _, f := range r.outs {
		f.Close()
	}
}

// copyOut sends f's bytes as stream frames until f ends (EOF; EIO from a
// pty master whose terminal closed). A failed send means the host went
// away.
func (r *running) copyOut(f *os.File, stream agentproto.Type) {
	buf := make([]byte, chunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if serr := r.pc.Send(&agentproto.Data{Stream: stream, Bytes: buf[:n]}); serr != nil {
				r.hostGone()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// readHost takes the host's messages until the connection ends, which
// before done means the host went away.
func (r *running) readHost(stdinQ chan<- []byte, done <-chan struct{}) {
	for {
		m, err := r.pc.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		if err != nil {
			select {
			case <-done:
			default:
				r.hostGone()
			}
			return
		}
		switch m := m.(type) {
		case *agentproto.Data:
			if m.Stream != agentproto.TypeStdin || r.stdin == nil {
				continue
			}
			select {
			case stdinQ <- append([]byte(nil), m.Bytes...):
			case <-done:
				return
			case <-r.exited:
			}
		case *agentproto.StdinClose:
			if r.stdin == nil {
				continue
			}
			select {
			case stdinQ <- nil:
			case <-done:
				return
			case <-r.exited:
			}
		case *agentproto.Resize:
			if r.tty != nil {
				pty.Setsize(r.tty, &pty.Winsize{Rows: m.Rows, Cols: m.Cols})
			}
		case *agentproto.Signal:
			r.signal(syscall.Signal(m.Signal))
		}
	}
}

// pumpStdin writes queued stdin to the command. Closing stdin closes the
// pipe, or types ^D (end of file) on a TTY.
func (r *running) pumpStdin(stdinQ <-chan []byte, done <-chan struct{}) {
	if r.stdin == nil {
		return
	}
	for {
		select {
		case b := <-stdinQ:
			if b == nil {
				if r.tty != nil {
					r.tty.Write([]byte{4})
				} else {
					r.stdin.Close()
				}
				continue
			}
			if _, err := r.stdin.Write(b); err != nil {
				// The command closed its stdin: drop the rest.
				continue
			}
		case <-done:
			return
		}
	}
}

// signal sends sig to the command's process group while it runs.
func (r *running) signal(sig syscall.Signal) {
	select {
	case <-r.exited:
		return
	default:
	}
	if err := syscall.Kill(-r.cmd.Process.Pid, sig); err != nil {
		r.cmd.Process.Signal(sig)
	}
}

// hostGone kills the command's process tree, once.
func (r *running) hostGone() {
	r.goneOnce.Do(func() {
		close(r.gone)
		select {
		case <-r.exited:
		default:
			r.s.killTree(r.cmd.Process)
		}
	})
}

// killTree kills p, its process group and every process below it: it
// stops the tree first (so that nothing forks while it is walked, a few
// passes), then kills all of it. A descendant that left both the group
// and the tree (double fork, setsid) escapes; a guest with cgroups could
// do better.
func (s *Server) killTree(p *os.Process) {
	pid := p.Pid
	p.Signal(syscall.SIGSTOP) // a pidfd: never another process
	syscall.Kill(-pid, syscall.SIGSTOP)
	seen := map[int]bool{}
	var tree []int
	for range 4 {
		d, err := procstat.Descendants(s.cfg.Proc, pid)
		if err != nil {
			s.log.Warn("listing a command's processes", "err", err)
			break
		}
		more := false
		for _, c := range d {
			if !seen[c] {
				seen[c], more = true, true
				tree = append(tree, c)
				syscall.Kill(c, syscall.SIGSTOP)
			}
		}
		if !more {
			break
		}
	}
	for _, c := range tree {
		syscall.Kill(c, syscall.SIGKILL)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	p.Signal(syscall.SIGKILL)
	s.log.Info("the host went away: killed a command", "pid", pid, "descendants", len(tree))
}

// exitOf is the Exit message for a reaped command.
func exitOf(st *os.ProcessState) *agentproto.Exit {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		sig := uint32(ws.Signal())
		return &agentproto.Exit{Code: int32(128 + sig), Signal: sig}
	}
	code := st.ExitCode()
	if code < 0 || code > 255 {
		code = 255
	}
	return &agentproto.Exit{Code: int32(code)}
}

// truncate cuts s to at most n bytes of valid UTF-8.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}
