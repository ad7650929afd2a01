package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/internal/buildinfo"
	"rainforest/rfm/supervisor"
)

// AgentBackend is a Backend that reaches the subOSes' agents (a
// *supervisor.Supervisor does); without it the stats and exec routes
// answer 409.
type AgentBackend interface {
	AgentStats(name string) (supervisor.AgentStats, error)
	Exec(ctx context.Context, name string, req agentproto.Exec) (*supervisor.ExecStream, error)
}

// ExecUpgrade is the protocol POST /v1/subos/{name}/exec switches to
// (the Upgrade header): after the 101 answer, the connection carries
// internal/agentproto frames both ways. The client sends stdin,
// stdin_close, resize and signal (anything else is dropped); the server
// sends stdout, stderr and finally exit, or an error when the agent goes
// away without one.
const ExecUpgrade = "rf-exec/1"

// errNoAgentBackend answers the agent routes of a backend without agents.
var errNoAgentBackend = fmt.Errorf("%w: this supervisor does not reach agents", supervisor.ErrNoAgent)

func agentRoutes(mux *routeTable, b Backend, stop <-chan struct{}) {
	ab, _ := b.(AgentBackend)
	mux.HandleFunc("GET /v1/subos/{name}/stats", func(w http.ResponseWriter, r *http.Request) {
		if ab == nil {
			fail(w, errNoAgentBackend)
			return
		}
		st, err := ab.AgentStats(r.PathValue("name"))
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/subos/{name}/exec", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != ExecUpgrade {
			reply(w, http.StatusBadRequest, ErrorBody{Error: "exec switches the connection to a stream: send Connection: Upgrade and Upgrade: " + ExecUpgrade + " (rfm exec does)"})
			return
		}
		var req agentproto.Exec
		if !decode(w, r, &req) {
			return
		}
		if _, err := agentproto.Encode(&req); err != nil {
			reply(w, http.StatusBadRequest, ErrorBody{Error: "the command: " + err.Error()})
			return
		}
		if ab == nil {
			fail(w, errNoAgentBackend)
			return
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			reply(w, http.StatusInternalServerError, ErrorBody{Error: "this server cannot switch protocols"})
			return
		}
		ex, err := ab.Exec(r.Context(), r.PathValue("name"), req)
		if err != nil {
			fail(w, err)
			return
		}
		defer ex.Close()
		conn, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Time{}) // the server's deadlines are for requests, not streams
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\n\r\n",
			ExecUpgrade, VersionHeader, buildinfo.Read().String())
		if brw.Flush() != nil {
			return
		}
		relayExec(agentproto.NewConn(struct {
			io.Reader
			io.Writer
		}{brw.Reader, conn}), conn, ex, stop)
	})
}

// relayExec carries an exec's messages between the client (cc over
// conn) and the agent until the command exits, either side goes away or
// stop closes. Only the messages each side may send go through.
func relayExec(cc *agentproto.Conn, conn net.Conn, ex *supervisor.ExecStream, stop <-chan struct{}) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-stop:
		case <-done:
		}
		conn.Close()
		ex.Close()
	}()
	go func() { // client -> agent
		defer wg.Done()
		for {
			m, err := cc.Recv()
			if errors.Is(err, agentproto.ErrUnknownType) {
				continue
			}
			if err != nil {
				ex.Close() // the client went away: the agent kills the command
				return
			}
			switch m.(type) {
			case *agentproto.Data, *agentproto.StdinClose, *agentproto.Resize, *agentproto.Signal:
				if d, ok := m.(*agentproto.Data); ok && d.Stream != agentproto.TypeStdin {
					continue
				}
				if ex.Send(m) != nil {
					return
				}
			}
		}
	}()
	for { // agent -> client
		m, err := ex.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		if err != nil {
			_ = cc.Send(&agentproto.Error{Code: "agent_gone", Message: "the connection to the agent ended before the command's exit status: " + err.Error()})
			return
		}
		switch m := m.(type) {
		case *agentproto.Data:
			if m.Stream == agentproto.TypeStdin {
				continue
			}
		case *agentproto.Exit, *agentproto.Error:
			_ = cc.Send(m)
			return
		default:
			continue
		}
		if cc.Send(m) != nil {
			return
		}
	}
}

// Stats returns a subOS's latest agent report.
func (c *Client) Stats(ctx context.Context, name string) (supervisor.AgentStats, error) {
	var st supervisor.AgentStats
	err := c.do(ctx, http.MethodGet, "/v1/subos/"+url.PathEscape(name)+"/stats", nil, &st)
	return st, err
}

// ExecConn is a command running in a subOS (Client.Exec): Recv gives
// Stdout and Stderr data, then Exit (or Error); Send takes Stdin,
// StdinClose, Resize and Signal. Close ends it, killing the command if
// it still runs.
type ExecConn struct {
	*agentproto.Conn
	c net.Conn
}

// Close closes the stream.
func (e *ExecConn) Close() error { return e.c.Close() }

// Exec starts a command in a subOS (POST /v1/subos/{name}/exec).
func (c *Client) Exec(ctx context.Context, name string, req agentproto.Exec) (*ExecConn, error) {
	path := "/v1/subos/" + url.PathEscape(name) + "/exec"
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, c.socketError(err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	hr, _ := http.NewRequest(http.MethodPost, "http://rfm"+path, bytes.NewReader(body))
	hr.Header.Set("Connection", "Upgrade")
	hr.Header.Set("Upgrade", ExecUpgrade)
	hr.Header.Set("Content-Type", "application/json")
	br := bufio.NewReader(conn)
	var resp *http.Response
	if err = hr.Write(conn); err == nil {
		resp, err = http.ReadResponse(br, hr)
	}
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("POST %s: interrupted", path)
	}
	if err != nil {
		conn.Close()
		return nil, c.socketError(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		defer resp.Body.Close()
		err := c.answer(resp, http.MethodPost, path, nil)
		if err == nil {
			err = fmt.Errorf("POST %s: the supervisor answered %s instead of switching to the exec stream", path, resp.Status)
		}
		if sv := resp.Header.Get(VersionHeader); buildinfo.Differ(sv, c.version) {
			return nil, &VersionError{Server: sv, Client: c.version, Err: err}
		}
		return nil, err
	}
	return &ExecConn{Conn: agentproto.NewConn(struct {
		io.Reader
		io.Writer
	}{br, conn}), c: conn}, nil
}
