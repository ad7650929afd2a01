package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/bench/net/tool"
	"rainforest/internal/agentproto"
)

// runner runs a command where one end of the path is and returns its
// standard output (at most tool.MaxOutput bytes).
type runner interface {
	run(ctx context.Context, argv []string) ([]byte, error)
}

// parseWhere returns the runner of a -server or -client value.
func parseWhere(where, rfm string) (runner, error) {
	kind, arg, _ := strings.Cut(where, ":")
	switch {
	case where == "local":
		return localRunner{}, nil
	case kind == "rfm" && arg != "":
		return localRunner{prefix: []string{rfm, "exec", arg, "--"}}, nil
	case kind == "vsock":
		cid, err := strconv.ParseUint(arg, 10, 32)
		if err != nil || cid < 3 {
			return nil, fmt.Errorf("%w: %q", errWhere, where)
		}
		return vsockRunner{cid: uint32(cid)}, nil
	}
	return nil, fmt.Errorf("%w: %q", errWhere, where)
}

// limitedBuffer keeps the first tool.MaxOutput+1 bytes written to it (one
// more than a report may be, so that the parser refuses it).
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := tool.MaxOutput + 1 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// localRunner runs commands on this machine, after prefix (rfm exec).
type localRunner struct{ prefix []string }

func (r localRunner) run(ctx context.Context, argv []string) ([]byte, error) {
	full := append(append([]string(nil), r.prefix...), argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	var out, errOut limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", full[0], err, clip(errOut.Bytes()))
	}
	return out.Bytes(), nil
}

// vsockRunner runs commands in a QEMU guest through its agent, dialled
// over AF_VSOCK (the guest's vhost-vsock device).
type vsockRunner struct{ cid uint32 }

func (r vsockRunner) run(ctx context.Context, argv []string) ([]byte, error) {
	c, err := dialVsock(r.cid, agentproto.Port)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	pc := agentproto.NewConn(c)
	m, err := pc.Recv()
	if err != nil {
		return nil, fmt.Errorf("vsock %d: hello: %w", r.cid, err)
	}
	if h, ok := m.(*agentproto.Hello); !ok {
		return nil, fmt.Errorf("vsock %d: first message %v, want hello", r.cid, m.Type())
	} else if err := agentproto.CheckVersion(h); err != nil {
		return nil, fmt.Errorf("vsock %d: %w", r.cid, err)
	}
	if err := pc.Send(agentproto.NewHello("rfnet")); err != nil {
		return nil, fmt.Errorf("vsock %d: %w", r.cid, err)
	}
	if err := pc.Send(&agentproto.Exec{Argv: argv}); err != nil {
		return nil, fmt.Errorf("vsock %d: exec: %w", r.cid, err)
	}
	var out, errOut limitedBuffer
	for {
		m, err := pc.Recv()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return out.Bytes(), fmt.Errorf("vsock %d: %s: %w", r.cid, argv[0], err)
		}
		switch m := m.(type) {
		case *agentproto.Data:
			if m.Stream == agentproto.TypeStdout {
				out.Write(m.Bytes)
			} else {
				errOut.Write(m.Bytes)
			}
		case *agentproto.Exit:
			if m.Code != 0 || m.Error != "" {
				return out.Bytes(), fmt.Errorf("vsock %d: %s exited %d (signal %d) %s: %s", r.cid, argv[0], m.Code, m.Signal, clipString(m.Error), clip(errOut.Bytes()))
			}
			return out.Bytes(), nil
		case *agentproto.Error:
			return out.Bytes(), fmt.Errorf("vsock %d: agent: %w", r.cid, m)
		}
	}
}

// dialVsock connects to port on the guest of cid. The socket is made
// non-blocking once connected, so that the *os.File polls and Close
// interrupts a read (the net package takes no AF_VSOCK socket).
func dialVsock(cid, port uint32) (io.ReadWriteCloser, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock %d:%d: connect: %w", cid, port, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock %d:%d: %w", cid, port, err)
	}
	return os.NewFile(uintptr(fd), "vsock"), nil
}

func clipString(s string) string { return clip([]byte(s)) }
