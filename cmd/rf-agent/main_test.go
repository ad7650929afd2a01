package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/internal/agent"
	"rainforest/internal/agentproto"
)

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--version"}, 0, fmt.Sprintf("protocol %d.%d", agentproto.ProtocolMajor, agentproto.ProtocolMinor)},
		{[]string{"--help"}, 0, "examples:"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--port", "0"}, 2, "not a vsock port"},
		{[]string{"--max-execs", "0"}, 2, "at least 1"},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"latency"}, 2, "give one p99 latency"},
		{[]string{"latency", "fast"}, 2, `"fast"`},
		{[]string{"latency", "--help"}, 0, "rf-agent latency 12.5ms"},
		{[]string{"latency", "--socket", "/nonexistent/l.sock", "3ms"}, 1, "is rf-agent running?"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != tc.code || !strings.Contains(out.String()+errb.String(), tc.out) {
			t.Errorf("rf-agent %q: exit %d, %q %q; want %d and %q", tc.args, code, out.String(), errb.String(), tc.code, tc.out)
		}
	}
}

// The vsock listener, over the local loopback transport (vsock_loopback)
// where this kernel has it.
func TestVsockLoopback(t *testing.T) {
	ln, err := listenVsock(0x7a6b0)
	if err != nil {
		t.Skipf("no vsock here: %v", err)
	}
	s := agent.NewServer(agent.Config{Software: "rf-agent test", Proc: os.DirFS("/proc")})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: 0x7a6b0}); err != nil {
		unix.Close(fd)
		// No loopback transport (vsock_loopback) answers here; the
		// listener itself is the code under test, not the transport.
		t.Skipf("no vsock loopback transport: %v", err)
	}
	f := os.NewFile(uintptr(fd), "vsock-client")
	c, err := net.FileConn(f)
	var pc *agentproto.Conn
	if err == nil {
		defer c.Close()
		pc = agentproto.NewConn(c)
	} else {
		defer f.Close()
		pc = agentproto.NewConn(f)
	}
	m, err := pc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := m.(*agentproto.Hello); !ok || h.Software != "rf-agent test" {
		t.Fatalf("hello %+v", m)
	}
	pc.Send(agentproto.NewHello("rfm test"))
	pc.Send(&agentproto.Exec{Argv: []string{"echo", "over vsock"}})
	var out bytes.Buffer
	for {
		m, err := pc.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := m.(*agentproto.Data); ok {
			out.Write(d.Bytes)
		}
		if e, ok := m.(*agentproto.Exit); ok {
			if e.Code != 0 || out.String() != "over vsock\n" {
				t.Errorf("exit %+v, output %q", e, out.String())
			}
			return
		}
	}
}

// The listener's accept loop, close and connections, on a Unix socket
// (the same code path as vsock but for the address family).
func TestFDListener(t *testing.T) {
	path := t.TempDir() + "/l.sock"
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		t.Fatal(err)
	}
	ln, err := newFDListener(fd, vsockAddr{cid: 3, port: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != "3:1024" || ln.Addr().Network() != "vsock" {
		t.Errorf("addr %v", ln.Addr())
	}
	s := agent.NewServer(agent.Config{Software: "rf-agent test", Proc: os.DirFS("/proc")})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()

	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := agentproto.NewConn(c)
	if m, err := pc.Recv(); err != nil || m.Type() != agentproto.TypeHello {
		t.Fatalf("hello: %v %v", m, err)
	}
	pc.Send(agentproto.NewHello("rfm test"))
	pc.Send(&agentproto.Exec{Argv: []string{"echo", "accepted"}})
	var out bytes.Buffer
	for {
		m, err := pc.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := m.(*agentproto.Data); ok {
			out.Write(d.Bytes)
		}
		if e, ok := m.(*agentproto.Exit); ok {
			if e.Code != 0 || out.String() != "accepted\n" {
				t.Errorf("exit %+v, output %q", e, out.String())
			}
			break
		}
	}
	// Cancelling closes the listener, which ends a waiting Accept.
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// Without vsock the agent keeps trying, silently, until it can listen or
// is stopped.
func TestListenPatiently(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	tries := 0
	ln, err := listenPatiently(context.Background(), func() (net.Listener, error) {
		tries++
		if tries < 3 {
			return nil, errors.New("address family not supported")
		}
		return net.Listen("unix", t.TempDir()+"/a.sock")
	}, log)
	if err != nil || tries != 3 {
		t.Fatalf("%v after %d tries", err, tries)
	}
	ln.Close()
	if logs.Len() != 0 {
		t.Errorf("logged at info level:\n%s", logs.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := listenPatiently(ctx, func() (net.Listener, error) { return nil, errors.New("no") }, log); !errors.Is(err, context.Canceled) {
		t.Errorf("stopped while waiting: %v", err)
	}
}

// rf-agent latency sends one sample to the agent's socket.
func TestLatencyCommand(t *testing.T) {
	dir, err := os.MkdirTemp("", "rfl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := dir + "/latency.sock"
	c, err := agent.ListenLatency(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var errb bytes.Buffer
	if code := run([]string{"latency", "--socket", path, "12.5ms"}, &bytes.Buffer{}, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	buf := make([]byte, 512)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := agent.ParseLatency(buf[:n]); err != nil || got.String() != "12.5ms" {
		t.Errorf("the socket got %q (%v, %v)", buf[:n], got, err)
	}
}
