package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"rainforest/internal/agentproto"
	"rainforest/rfm/api"
	"rainforest/rfm/supervisor"
)

// The CLI tests' agents: web has one, the others none.

func (b *cliBackend) AgentStats(name string) (supervisor.AgentStats, error) {
	switch name {
	case "web":
		return supervisor.AgentStats{Name: "web", Stats: agentproto.Stats{Seq: 3, IntervalMS: 2000,
			All:       agentproto.CPUUse{User: 25, Idle: 75},
			CPUs:      []agentproto.CPUUse{{CPU: 0, User: 50, Idle: 50}, {CPU: 1, Idle: 100}},
			Memory:    agentproto.Memory{Total: 1 << 30, Available: 768 << 20},
			Load:      agentproto.Load{Load1: 0.5, Tasks: 60, Runnable: 1},
			PSI:       &agentproto.PSI{CPU: &agentproto.Pressure{Some: agentproto.PressureLine{Avg10: 1.5}}},
			Processes: 60},
			Host: &supervisor.HostUsage{VCPUSeconds: 12.5, BackendSeconds: 0.75, OtherSeconds: 0.25,
				Processes: []supervisor.HostProcess{{PID: 500, Comm: "rfm", CPUSeconds: 13.25}, {PID: 700, Comm: "virtiofsd", CPUSeconds: 0.25}}}}, nil
	case "stuck":
		return supervisor.AgentStats{}, fmt.Errorf("%w: subOS %q has sent no report yet", supervisor.ErrNoAgent, name)
	}
	return supervisor.AgentStats{}, notFound(name)
}

// Exec plays web's agent: it prints the command line, echoes stdin
// (with -i), and ends as the command says: "killed" by SIGKILL,
// "nosuch" not started, a last argument "...exit N" with status N.
func (b *cliBackend) Exec(_ context.Context, name string, req agentproto.Exec) (*supervisor.ExecStream, error) {
	switch name {
	case "web":
	case "stuck":
		return nil, fmt.Errorf("%w: subOS %q is stopping, not running", supervisor.ErrNoAgent, name)
	default:
		return nil, notFound(name)
	}
	h, g := net.Pipe()
	go func() {
		defer g.Close()
		pc := agentproto.NewConn(g)
		switch req.Argv[0] {
		case "killed":
			pc.Send(&agentproto.Exit{Signal: 9})
			return
		case "nosuch":
			pc.Send(&agentproto.Exit{Code: -1, Error: "exec: \"nosuch\": executable file not found in $PATH"})
			return
		}
		pc.Send(&agentproto.Data{Stream: agentproto.TypeStdout, Bytes: []byte(strings.Join(req.Argv, " ") + "\n")})
		for req.Stdin {
			m, err := pc.Recv()
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *agentproto.Data:
				pc.Send(&agentproto.Data{Stream: agentproto.TypeStderr, Bytes: m.Bytes})
			case *agentproto.StdinClose:
				req.Stdin = false
			}
		}
		code := int32(0)
		fmt.Sscanf(req.Argv[len(req.Argv)-1][max(0, strings.LastIndex(req.Argv[len(req.Argv)-1], "exit ")):], "exit %d", &code)
		pc.Send(&agentproto.Exit{Code: code})
	}()
	return supervisor.NewExecStream(h), nil
}

// rfm exec -i forwards stdin to the command until its end.
func TestCLIExecStdin(t *testing.T) {
	bin := rfmBinary(t)
	sock := serveAPI(t, api.Handler(newCLIBackend(t)))
	cmd := exec.Command(bin, "exec", "-i", "web", "--", "cat")
	cmd.Env = append(os.Environ(), "RFM_SOCKET="+sock)
	cmd.Stdin = strings.NewReader("data\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if stdout.String() != "cat\n" || stderr.String() != "data\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}
