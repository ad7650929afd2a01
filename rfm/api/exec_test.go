package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"rainforest/internal/agentproto"
	"rainforest/rfm/supervisor"
)

// agentBackend is a fakeBackend with agents: "a" has one (a fake that
// echoes stdin to stdout, says its argv on stderr and exits 3), "b" has
// none.
type agentBackend struct {
	*fakeBackend
	stats supervisor.AgentStats
}

func (b *agentBackend) AgentStats(name string) (supervisor.AgentStats, error) {
	switch name {
	case "a":
		return b.stats, nil
	case "b":
		return supervisor.AgentStats{}, fmt.Errorf("%w: subOS %q has sent no report yet", supervisor.ErrNoAgent, name)
	}
	return supervisor.AgentStats{}, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
}

func (b *agentBackend) Exec(ctx context.Context, name string, req agentproto.Exec) (*supervisor.ExecStream, error) {
	if name != "a" {
		return nil, fmt.Errorf("%w: %q", supervisor.ErrNotFound, name)
	}
	h, g := net.Pipe()
	go func() {
		defer g.Close()
		pc := agentproto.NewConn(g)
		pc.Send(&agentproto.Data{Stream: agentproto.TypeStderr, Bytes: []byte(strings.Join(req.Argv, " "))})
		for req.Stdin {
			m, err := pc.Recv()
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *agentproto.Data:
				pc.Send(&agentproto.Data{Stream: agentproto.TypeStdout, Bytes: m.Bytes})
			case *agentproto.StdinClose:
				req.Stdin = false
			default:
				pc.Send(&agentproto.Data{Stream: agentproto.TypeStdout, Bytes: []byte("<" + m.Type().String() + ">")})
			}
		}
		pc.Send(&agentproto.Exit{Code: 3})
	}()
	return supervisor.NewExecStream(h), nil
}

func TestExecStream(t *testing.T) {
	b := &agentBackend{fakeBackend: &fakeBackend{subos: map[string]supervisor.Info{}}}
	path, _ := serveBackend(t, b, DefaultLimits())
	c := NewClient(path)
	ctx := context.Background()
	ex, err := c.Exec(ctx, "a", agentproto.Exec{Argv: []string{"cat", "-"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	for _, m := range []agentproto.Message{
		&agentproto.Data{Stream: agentproto.TypeStdin, Bytes: []byte("hi")},
		&agentproto.Resize{Rows: 1, Cols: 2},
		&agentproto.Data{Stream: agentproto.TypeStdout, Bytes: []byte("not the client's to send")},
		&agentproto.Watch{HeartbeatMS: 1000},
		&agentproto.StdinClose{},
	} {
		if err := ex.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	var out, errOut strings.Builder
	for {
		m, err := ex.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := m.(*agentproto.Data); ok {
			if d.Stream == agentproto.TypeStdout {
				out.Write(d.Bytes)
			} else {
				errOut.Write(d.Bytes)
			}
			continue
		}
		if e, ok := m.(*agentproto.Exit); !ok || e.Code != 3 {
			t.Fatalf("end: %#v", m)
		}
		break
	}
	if out.String() != "hi<resize>" || errOut.String() != "cat -" {
		t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
	}
}

func TestExecErrors(t *testing.T) {
	b := &agentBackend{fakeBackend: &fakeBackend{subos: map[string]supervisor.Info{}}}
	path, _ := serveBackend(t, b, DefaultLimits())
	c := NewClient(path)
	ctx := context.Background()
	if _, err := c.Exec(ctx, "nope", agentproto.Exec{Argv: []string{"true"}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("no such subOS: %v", err)
	}
	if _, err := c.Exec(ctx, "a", agentproto.Exec{}); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("no argv: %v", err)
	}
	// A backend without agents answers 409.
	path2, _ := serveBackend(t, &fakeBackend{subos: map[string]supervisor.Info{}}, DefaultLimits())
	if _, err := NewClient(path2).Exec(ctx, "a", agentproto.Exec{Argv: []string{"true"}}); !errors.Is(err, ErrConflict) {
		t.Errorf("no agents: %v", err)
	}
	if _, err := NewClient(path2).Stats(ctx, "a"); !errors.Is(err, ErrConflict) {
		t.Errorf("no agents: %v", err)
	}
}

func TestStats(t *testing.T) {
	b := &agentBackend{fakeBackend: &fakeBackend{subos: map[string]supervisor.Info{}}}
	b.stats = supervisor.AgentStats{Name: "a", Stats: agentproto.Stats{Seq: 7, Processes: 12, CPUs: []agentproto.CPUUse{{CPU: 0, User: 50, Idle: 50}}}}
	path, _ := serveBackend(t, b, DefaultLimits())
	c := NewClient(path)
	st, err := c.Stats(context.Background(), "a")
	if err != nil || st.Seq != 7 || st.Processes != 12 || len(st.CPUs) != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if _, err := c.Stats(context.Background(), "b"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "no report") {
		t.Errorf("no report: %v", err)
	}
	if _, err := c.Stats(context.Background(), "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("no subOS: %v", err)
	}
}
