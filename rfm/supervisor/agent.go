package supervisor

// The supervisor's side of every subOS's agent (rf-agent, the paper's
// subOScon): each subOS gets a virtio-vsock device whose host side is the
// Unix socket <run dir>/<name>.vsock; a session per subOS connects
// through it to the agent's port (retrying with backoff while the guest
// boots or where no agent runs), asks for heartbeats and stats, and keeps
// the latest of both. The agent's health is computed from the last
// heartbeat: healthy, unhealthy (silent for AgentSilentBeats intervals:
// marked, never destroyed) or unknown (never connected). Commands (rfm
// exec) get a connection of their own (Exec).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/internal/buildinfo"
	"rainforest/internal/untrusted"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	"rainforest/vmm/virtio/vsock"
)

// ErrNoAgent means a subOS's agent does not answer (it has none, or it
// has not started yet).
var ErrNoAgent = errors.New("no agent answers in the subOS")

// Agent timing.
const (
	// AgentHeartbeat and AgentStatsInterval are the intervals the
	// supervisor asks the agents for.
	AgentHeartbeat     = 2 * time.Second
	AgentStatsInterval = 2 * time.Second
	// AgentSilentBeats heartbeats missed make an agent unhealthy.
	AgentSilentBeats = 3
	// agentHandshakeTimeout bounds connecting and the hello exchange.
	agentHandshakeTimeout = 10 * time.Second
	// agentBackoffMin and agentBackoffMax bound the wait between
	// connection attempts.
	agentBackoffMin = 250 * time.Millisecond
	agentBackoffMax = 5 * time.Second
)

// AgentState is what the supervisor knows of a subOS's agent.
type AgentState string

// Agent states.
const (
	AgentUnknown   AgentState = "unknown"   // never connected
	AgentHealthy   AgentState = "healthy"   // heartbeats arrive
	AgentUnhealthy AgentState = "unhealthy" // silent for AgentSilentBeats intervals
)

// AgentInfo is Info's agent section.
type AgentInfo struct {
	State AgentState `json:"state"`
	// Version is the agent's software and protocol ("rf-agent 1.2.3,
	// protocol 1.0"): guest text, bounded by the protocol's decoder.
	Version       string     `json:"version,omitempty"`
	LastHeartbeat *time.Time `json:"last_heartbeat,omitempty"`
}

// AgentStats is a subOS's latest stats report (GET /v1/subos/{name}/stats).
type AgentStats struct {
	Name string    `json:"name"`
	Time time.Time `json:"time"` // when the supervisor received it
	agentproto.Stats
	// Host is what the host charges the subOS, read when asked: the CPU
	// time of its cgroup's processes, and its shares' virtiofsd; nil when
	// it cannot be read.
	Host *HostUsage `json:"host,omitempty"`
}

// firstCID is the CID of the first subOS (0-2 are reserved).
const firstCID = config.MinVsockCID

func (s *Supervisor) vsockPath(name string) string {
	return filepath.Join(s.cfg.RunDir, name+".vsock")
}

// allocCID returns the lowest CID no listed subOS uses. Under opMu.
func (s *Supervisor) allocCID() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	used := map[uint32]bool{}
	for _, so := range s.subos {
		used[so.cid] = true
	}
	cid := uint32(firstCID)
	for used[cid] {
		cid++
	}
	return cid
}

// agentSession follows one subOS's agent.
type agentSession struct {
	name     string
	software string
	dial     func(ctx context.Context) (net.Conn, error)
	now      func() time.Time
	beat     time.Duration // heartbeat interval asked for
	stats    time.Duration
	log      *slog.Logger

	// onChange, when set, is told of every change of state (seen by
	// checkHealth), from the session's goroutines.
	onChange func(from AgentState, now AgentInfo)
	// onLatency, when set, gets each new latency sample a report
	// carries (the autoscaler's guest source), from the session's goroutine.
	onLatency func(ls agentproto.LatencySample, received time.Time)

	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	version   string
	connected bool // ever
	lastBeat  time.Time
	report    *AgentStats
	reported  AgentState // the state onChange was last told of
	// latencySeq is the Seq of the last latency sample passed on.
	latencySeq uint64
}

func (s *Supervisor) newAgentSession(name string) *agentSession {
	path := s.vsockPath(name)
	return &agentSession{
		name: name, software: "rfm " + buildinfo.Read().String(),
		dial: func(ctx context.Context) (net.Conn, error) { return vsock.Dial(ctx, path, agentproto.Port) },
		now:  time.Now, beat: AgentHeartbeat, stats: AgentStatsInterval,
		log: s.log.With("subos", name),
		onChange: func(from AgentState, now AgentInfo) {
			detail := fmt.Sprintf("agent %s, was %s", now.State, from)
			if now.Version != "" {
				detail += "; version " + strconv.Quote(now.Version)
			}
			if now.State == AgentUnhealthy && now.LastHeartbeat != nil {
				detail += "; last heartbeat " + now.LastHeartbeat.Format(time.RFC3339)
				s.log.Warn("agent silent: subOS marked unhealthy (it keeps running)", "subos", name, "last_heartbeat", now.LastHeartbeat)
			}
			s.event(s.cfg.Who, "agent-"+string(now.State), name, 0, detail)
		},
		onLatency: func(ls agentproto.LatencySample, _ time.Time) {
			x, err := agentLatency(name, ls.P99US, ls.AgeMS, s.now()) // the autoscaler's clock
			if err != nil {
				s.log.Debug("agent latency sample ignored", "subos", name, "err", err)
				return
			}
			s.observeLatency(name, x.P99, x.Time)
		},
	}
}

// startAgent starts so's agent session (when it has a vsock device).
func (s *Supervisor) startAgent(so *subOS) {
	if so.cid == 0 {
		return
	}
	a := s.newAgentSession(so.info.Name)
	a.start()
	s.mu.Lock()
	so.agent = a
	s.mu.Unlock()
}

// stopAgent stops so's agent session, if any.
func (s *Supervisor) stopAgent(so *subOS) {
	s.mu.Lock()
	a := so.agent
	so.agent = nil
	s.mu.Unlock()
	if a != nil {
		a.stop()
	}
}

func (a *agentSession) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.run(ctx)
	}()
	go func() { // notices silence: no message arrives to say so
		defer wg.Done()
		t := time.NewTicker(a.beat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.checkHealth()
			}
		}
	}()
	go func() {
		wg.Wait()
		close(a.done)
	}()
}

// checkHealth tells onChange when the state changed since it last did.
func (a *agentSession) checkHealth() {
	now := a.info()
	a.mu.Lock()
	from := a.reported
	if from == "" {
		from = AgentUnknown
	}
	changed := now.State != from
	a.reported = now.State
	a.mu.Unlock()
	if changed && a.onChange != nil {
		a.onChange(from, now)
	}
}

func (a *agentSession) stop() {
	a.cancel()
	<-a.done
}

// run connects again and again until ctx ends, waiting longer after
// each failure (from agentBackoffMin to agentBackoffMax), and from the
// start after a connection that worked.
func (a *agentSession) run(ctx context.Context) {
	wait := agentBackoffMin
	for ctx.Err() == nil {
		worked, err := a.follow(ctx)
		if worked {
			wait = agentBackoffMin
			if ctx.Err() == nil {
				a.log.Info("agent connection ended; reconnecting", "err", err)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, agentBackoffMax)
	}
}

// follow connects once and records heartbeats and stats until the
// connection ends; worked says the hello exchange succeeded.
func (a *agentSession) follow(ctx context.Context) (worked bool, err error) {
	hctx, cancel := context.WithTimeout(ctx, agentHandshakeTimeout)
	defer cancel()
	c, err := a.dial(hctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	_ = c.SetDeadline(time.Now().Add(agentHandshakeTimeout))
	pc := agentproto.NewConn(c)
	hello, err := agentproto.HostHandshake(pc, a.software)
	if err != nil {
		return false, err
	}
	if err := pc.Send(&agentproto.Watch{HeartbeatMS: uint32(a.beat.Milliseconds()), StatsMS: uint32(a.stats.Milliseconds())}); err != nil {
		return false, err
	}
	version := fmt.Sprintf("%s, protocol %d.%d", hello.Software, hello.ProtocolMajor, hello.ProtocolMinor)
	a.mu.Lock()
	a.connected, a.version, a.lastBeat = true, version, a.now()
	a.mu.Unlock()
	a.log.Info("agent connected", "version", strconv.Quote(version))
	a.checkHealth()
	for {
		// A guest that stops talking without closing is dropped after
		// twice the silence that marks it unhealthy, and redialled.
		_ = c.SetReadDeadline(time.Now().Add(2 * AgentSilentBeats * a.beat))
		m, err := pc.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		if err != nil {
			return true, err
		}
		switch m := m.(type) {
		case *agentproto.Heartbeat:
			a.mu.Lock()
			a.lastBeat = a.now()
			a.mu.Unlock()
		case *agentproto.Stats:
			now := a.now()
			a.mu.Lock()
			a.lastBeat = now // a report is a sign of life too
			a.report = &AgentStats{Name: a.name, Time: now.UTC(), Stats: *m}
			ls := m.Latency
			fresh := ls != nil && ls.Seq != a.latencySeq
			if fresh {
				a.latencySeq = ls.Seq
			}
			a.mu.Unlock()
			if fresh && a.onLatency != nil {
				a.onLatency(*ls, now)
			}
		case *agentproto.Error:
			return true, m
		}
	}
}

// info is the session's AgentInfo now.
func (a *agentSession) info() AgentInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.connected {
		return AgentInfo{State: AgentUnknown}
	}
	last := a.lastBeat.UTC()
	st := AgentHealthy
	if a.now().Sub(a.lastBeat) > AgentSilentBeats*a.beat {
		st = AgentUnhealthy
	}
	return AgentInfo{State: st, Version: a.version, LastHeartbeat: &last}
}

// latest is the latest stats report, or nil.
func (a *agentSession) latest() *AgentStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.report == nil {
		return nil
	}
	r := *a.report
	return &r
}

// withAgent fills info's agent section from so's session.
func withAgent(so *subOS) Info {
	info := so.info
	if so.agent != nil {
		ai := so.agent.info()
		info.Agent = &ai
	} else if so.cid != 0 {
		info.Agent = &AgentInfo{State: AgentUnknown}
	}
	return info
}

// AgentStats returns name's latest stats report.
func (s *Supervisor) AgentStats(name string) (AgentStats, error) {
	s.mu.Lock()
	so, ok := s.subos[name]
	var a *agentSession
	var backends []BackendUsage
	if ok {
		a = so.agent
		backends = shareBackends(so, "/proc")
	}
	s.mu.Unlock()
	if !ok {
		return AgentStats{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if a == nil {
		return AgentStats{}, fmt.Errorf("%w: subOS %q has no agent channel (created before agents existed); recreate it", ErrNoAgent, name)
	}
	r := a.latest()
	if r == nil {
		return AgentStats{}, fmt.Errorf("%w: subOS %q has sent no report yet (agent %s); is rf-agent in its image, and rf.agent not 0 on its command line?", ErrNoAgent, name, a.info().State)
	}
	out := *r
	s.mu.Lock()
	cg, pid := so.info.Cgroup, so.info.PID
	s.mu.Unlock()
	if cg != "" {
		if u, err := hostUsage(os.DirFS("/proc"), cg, pid); err == nil {
			u.Backends = backends
			u.NICs = s.nicCounters(so)
			out.Host = u
		}
	}
	return out, nil
}

// ExecStream is a command running in a subOS: the agent's connection,
// past the Exec request. Recv gives Stdout, Stderr and finally Exit;
// Send takes Stdin, StdinClose, Resize and Signal. Close ends it (and
// kills the command if it still runs).
type ExecStream struct {
	*agentproto.Conn
	c net.Conn
}

// Close closes the connection to the agent.
func (e *ExecStream) Close() error { return e.c.Close() }

// Exec starts a command in name through its agent.
func (s *Supervisor) Exec(ctx context.Context, name string, req agentproto.Exec) (*ExecStream, error) {
	s.mu.Lock()
	so, ok := s.subos[name]
	var a *agentSession
	var state State
	if ok {
		a, state = so.agent, so.info.State
	}
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if state != StateRunning {
		return nil, fmt.Errorf("%w: subOS %q is %s, not running", ErrNoAgent, name, state)
	}
	if a == nil {
		return nil, fmt.Errorf("%w: subOS %q has no agent channel (created before agents existed); recreate it", ErrNoAgent, name)
	}
	hctx, cancel := context.WithTimeout(ctx, agentHandshakeTimeout)
	defer cancel()
	c, err := a.dial(hctx)
	if err != nil {
		return nil, fmt.Errorf("%w: subOS %q: %v (agent %s; is rf-agent in its image, and rf.agent not 0?)", ErrNoAgent, name, err, a.info().State)
	}
	stop := context.AfterFunc(hctx, func() { c.Close() })
	pc := agentproto.NewConn(c)
	_, err = agentproto.HostHandshake(pc, a.software)
	if err == nil {
		err = pc.Send(&req)
	}
	if !stop() || err != nil {
		c.Close()
		if err == nil {
			err = hctx.Err()
		}
		return nil, fmt.Errorf("subOS %q: starting the command: %w", name, err)
	}
	return &ExecStream{Conn: pc, c: c}, nil
}

// NewExecStream is an ExecStream over c, a connection to an agent past
// its Exec request (tests build them over pipes).
func NewExecStream(c net.Conn) *ExecStream { return &ExecStream{Conn: agentproto.NewConn(c), c: c} }

// nicCounters asks so's VMM for its NICs' counters (none when it does
// not answer within a second) and adds those of its TAPs' source guards
// on the host (host_tx_spoofed_mac, host_tx_spoofed_ip; the zero ones
// left out).
func (s *Supervisor) nicCounters(so *subOS) []NICCounters {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	devs, _ := vmmctl.Devices(ctx, s.vmm(so))
	var out []NICCounters
	for _, d := range devs {
		if d.Kind == "net" {
			out = append(out, NICCounters{ID: d.ID, Counters: nonNilCounters(d.Counters)})
		}
	}
	if s.cfg.Network == nil {
		return out
	}
	s.mu.Lock()
	spec := so.info.Spec
	s.mu.Unlock()
	for _, n := range withNICDefaults(spec) {
		if n.User || n.Loop != "" {
			continue
		}
		host, err := s.cfg.Network.GuardCounters(n.TAP)
		if err != nil {
			continue
		}
		i := slices.IndexFunc(out, func(c NICCounters) bool { return c.ID == n.ID })
		if i < 0 {
			out = append(out, NICCounters{ID: n.ID, Counters: map[string]uint64{}})
			i = len(out) - 1
		}
		for k, v := range host {
			if v > 0 {
				out[i].Counters[k] = v
			}
		}
	}
	return out
}

// nonNilCounters is c, or an empty map for nil (JSON {} rather than null).
func nonNilCounters(c map[string]uint64) map[string]uint64 {
	if c == nil {
		return map[string]uint64{}
	}
	return c
}

// runInGuest runs argv in subOS name through its agent and waits for it
// to exit: nil for status 0, else an error with the start of its output
// (quoted: the guest wrote it).
func (s *Supervisor) runInGuest(ctx context.Context, name string, argv []string) error {
	ex, err := s.Exec(ctx, name, agentproto.Exec{Argv: argv})
	if err != nil {
		return err
	}
	defer ex.Close()
	stop := context.AfterFunc(ctx, func() { ex.Close() })
	defer stop()
	var out []byte
	for {
		m, err := ex.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		if err != nil {
			return fmt.Errorf("subOS %s: %s: the agent went away before its exit status: %w", name, argv[0], err)
		}
		switch m := m.(type) {
		case *agentproto.Data:
			if room := guestOutputKept - len(out); room > 0 {
				out = append(out, m.Bytes[:min(len(m.Bytes), room)]...)
			}
		case *agentproto.Exit:
			if m.Code == 0 && m.Signal == 0 {
				return nil
			}
			return fmt.Errorf("subOS %s: %s exited %d (signal %d): %s", name, argv[0], m.Code, m.Signal, untrusted.Quote(out, guestOutputKept))
		case *agentproto.Error:
			return fmt.Errorf("subOS %s: the agent refused %s: %s", name, argv[0], untrusted.Quote([]byte(m.Message), guestOutputKept))
		}
	}
}

// guestOutputKept bounds what runInGuest keeps of a command's output.
const guestOutputKept = 512
