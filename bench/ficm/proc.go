package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// childArg, as the first argument, runs this binary as the far end of a
// process baseline instead of the benchmark.
const childArg = "__ficm_child"

// Process baselines.
const (
	mechPipe = "pipe"
	mechUnix = "unix"
	mechTCP  = "tcp"
	mechSHM  = "shm"
)

// procPlan is what both processes of a baseline agree on.
type procPlan struct {
	mech          string
	warmup, trips int // round trips
	stream        int // messages streamed one way, then one ack
	core          int // the child's core
	port          int // TCP only
}

func (p procPlan) args() []string {
	return []string{childArg, p.mech, strconv.Itoa(p.warmup), strconv.Itoa(p.trips),
		strconv.Itoa(p.stream), strconv.Itoa(p.core), strconv.Itoa(p.port)}
}

func parsePlan(args []string) (procPlan, error) {
	if len(args) != 7 || args[0] != childArg {
		return procPlan{}, fmt.Errorf("child arguments %q", args)
	}
	var n [5]int
	for i := range n {
		v, err := strconv.Atoi(args[2+i])
		if err != nil {
			return procPlan{}, fmt.Errorf("child argument %d: %w", 2+i, err)
		}
		n[i] = v
	}
	return procPlan{mech: args[1], warmup: n[0], trips: n[1], stream: n[2], core: n[3], port: n[4]}, nil
}

// Message words.
func (m *message) word(i int) uint64       { return binary.LittleEndian.Uint64(m[8*i:]) }
func (m *message) setWord(i int, v uint64) { binary.LittleEndian.PutUint64(m[8*i:], v) }

// wallNS is CLOCK_REALTIME in ns, comparable between the two processes.
func wallNS() uint64 { return uint64(time.Now().UnixNano()) }

// childMain is the child process: it pins itself, opens its end of the
// transport (inherited as fd 3 and 4, or a TCP connection) and answers.
func childMain(args []string) error {
	p, err := parsePlan(args)
	if err != nil {
		return err
	}
	if err := pinThread(p.core); err != nil {
		return err
	}
	var t transport
	switch p.mech {
	case mechPipe:
		t = fdTransport{rfd: 3, wfd: 4}
	case mechUnix:
		t = fdTransport{rfd: 3, wfd: 3}
	case mechTCP:
		fd, err := dialLoopback(p.port)
		if err != nil {
			return err
		}
		t = fdTransport{rfd: fd, wfd: fd}
	case mechSHM:
		if t, err = newSHMTransport(3, true); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown mechanism %q", p.mech)
	}
	defer t.close()
	var in, out message
	for i := 0; i < p.warmup+p.trips; i++ {
		if err := t.recv(&in); err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		now := wallNS()
		out.setWord(0, in.word(0))
		out.setWord(2, now-in.word(1)) // parent -> child one-way
		out.setWord(1, wallNS())
		if err := t.send(&out); err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
	}
	for i := 0; i < p.stream; i++ {
		if err := t.recv(&in); err != nil {
			return fmt.Errorf("stream message %d: %w", i, err)
		}
		if in.word(0) != uint64(i) {
			return fmt.Errorf("stream message %d arrived as %d", i, in.word(0))
		}
	}
	out.setWord(0, uint64(p.stream))
	return t.send(&out)
}

func dialLoopback(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("tcp socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TCP_NODELAY: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect 127.0.0.1:%d: %w", port, err)
	}
	return fd, nil
}

// listenLoopback listens on an ephemeral 127.0.0.1 port; accept on the
// returned socket gives up after timeout.
func listenLoopback(timeout time.Duration) (fd, port int, err error) {
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("tcp socket: %w", err)
	}
	fail := func(e error) (int, int, error) { unix.Close(fd); return -1, 0, e }
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fail(fmt.Errorf("bind 127.0.0.1: %w", err))
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fail(fmt.Errorf("listen: %w", err))
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail(fmt.Errorf("SO_RCVTIMEO: %w", err))
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail(fmt.Errorf("getsockname: %w", err))
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return fail(errors.New("listener is not IPv4"))
	}
	return fd, in4.Port, nil
}

// procResult is what the parent measured.
type procResult struct {
	rtt, oneWay []float64
	throughput  float64
}

// runProcessBaseline runs one baseline between this process (its
// measuring thread pinned to core) and a child pinned to plan.core.
func runProcessBaseline(ctx context.Context, plan procPlan, core int) (procResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return procResult{}, fmt.Errorf("find own binary: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var (
		t          transport
		childFiles []*os.File
		listenFD   = -1
	)
	closeChildFiles := func() {
		for _, f := range childFiles {
			f.Close()
		}
		childFiles = nil
	}
	defer closeChildFiles()
	switch plan.mech {
	case mechPipe:
		var p2c, c2p [2]int
		if err := unix.Pipe2(p2c[:], unix.O_CLOEXEC); err != nil {
			return procResult{}, fmt.Errorf("pipe: %w", err)
		}
		if err := unix.Pipe2(c2p[:], unix.O_CLOEXEC); err != nil {
			unix.Close(p2c[0])
			unix.Close(p2c[1])
			return procResult{}, fmt.Errorf("pipe: %w", err)
		}
		t = fdTransport{rfd: c2p[0], wfd: p2c[1]}
		childFiles = []*os.File{os.NewFile(uintptr(p2c[0]), "p2c"), os.NewFile(uintptr(c2p[1]), "c2p")}
	case mechUnix:
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return procResult{}, fmt.Errorf("socketpair: %w", err)
		}
		t = fdTransport{rfd: fds[0], wfd: fds[0]}
		childFiles = []*os.File{os.NewFile(uintptr(fds[1]), "unix")}
	case mechTCP:
		fd, port, err := listenLoopback(20 * time.Second)
		if err != nil {
			return procResult{}, err
		}
		listenFD = fd
		defer unix.Close(listenFD)
		plan.port = port
	case mechSHM:
		fd, err := unix.MemfdCreate("ficm-bench-ring", unix.MFD_CLOEXEC)
		if err != nil {
			return procResult{}, fmt.Errorf("memfd: %w", err)
		}
		if err := unix.Ftruncate(fd, shmBytes); err != nil {
			unix.Close(fd)
			return procResult{}, fmt.Errorf("size memfd: %w", err)
		}
		st, err := newSHMTransport(fd, false)
		if err != nil {
			unix.Close(fd)
			return procResult{}, err
		}
		t = st
		childFiles = []*os.File{os.NewFile(uintptr(fd), "ring")}
	default:
		return procResult{}, fmt.Errorf("unknown mechanism %q", plan.mech)
	}
	cmd := exec.CommandContext(ctx, exe, plan.args()...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = childFiles
	if err := cmd.Start(); err != nil {
		if t != nil {
			t.close()
		}
		return procResult{}, fmt.Errorf("start child: %w", err)
	}
	closeChildFiles()
	if plan.mech == mechTCP {
		fd, _, err := unix.Accept4(listenFD, unix.SOCK_CLOEXEC)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			t = fdTransport{rfd: fd, wfd: fd}
		}
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return procResult{}, fmt.Errorf("accept child: %w", err)
		}
	}

	type outcome struct {
		r   procResult
		err error
	}
	done := make(chan outcome, 1)
	go func() { // ends with the measurement; its pinned thread ends with it
		r, err := measureProcess(t, plan, core)
		done <- outcome{r, err}
	}()
	var o outcome
	select {
	case o = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		if st, ok := t.(*shmTransport); ok {
			st.abort()
		}
		o = <-done // the child's fds closed (or abort): the measurement fails out
	}
	t.close()
	if err := cmd.Wait(); err != nil && o.err == nil {
		o.err = fmt.Errorf("child: %w", err)
	}
	return o.r, o.err
}

// measureProcess is the parent's side of a baseline.
func measureProcess(t transport, plan procPlan, core int) (procResult, error) {
	if err := pinThread(core); err != nil {
		return procResult{}, err
	}
	var r procResult
	var out, in message
	for i := 0; i < plan.warmup+plan.trips; i++ {
		out.setWord(0, uint64(i))
		start := time.Now()
		out.setWord(1, wallNS())
		if err := t.send(&out); err != nil {
			return r, fmt.Errorf("round trip %d: %w", i, err)
		}
		if err := t.recv(&in); err != nil {
			return r, fmt.Errorf("round trip %d: %w", i, err)
		}
		back := wallNS() - in.word(1)
		rtt := time.Since(start)
		if in.word(0) != uint64(i) {
			return r, fmt.Errorf("round trip %d answered as %d", i, in.word(0))
		}
		if i >= plan.warmup {
			r.rtt = append(r.rtt, float64(rtt.Nanoseconds()))
			r.oneWay = append(r.oneWay, float64(int64(in.word(2))), float64(int64(back)))
		}
	}
	start := time.Now()
	for i := 0; i < plan.stream; i++ {
		out.setWord(0, uint64(i))
		if err := t.send(&out); err != nil {
			return r, fmt.Errorf("stream message %d: %w", i, err)
		}
	}
	if err := t.recv(&in); err != nil {
		return r, fmt.Errorf("stream ack: %w", err)
	}
	if in.word(0) != uint64(plan.stream) {
		return r, fmt.Errorf("stream ack counts %d messages, sent %d", in.word(0), plan.stream)
	}
	r.throughput = float64(plan.stream) / time.Since(start).Seconds()
	return r, nil
}
