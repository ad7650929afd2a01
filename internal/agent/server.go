// Package agent is rf-agent's server: the in-guest end of
// internal/agentproto. It serves any net.Listener or net.Conn (a vsock
// listener in the guest, net.Pipe or Unix sockets in tests).
//
// On each connection it sends its Hello, checks the host's, and then
// serves what the host asks for: heartbeats and stats reports (Watch),
// or one command (Exec) with pipes or a pseudo-terminal, its output
// streamed back, stdin forwarded, and its exit status reported, or a
// change of the online CPUs (CPUs: written to sysfs, cpuN/online, and
// read back). SetCPUs is the host's side of the last. Applications in the
// guest push their p99 latency to a Unix socket (ServeLatency, SendLatency:
// the autoscaler's source); stats reports carry the latest sample. At most
// Config.MaxExecs commands run at once. A command whose host goes away
// (the connection ends, or a write to it fails) is killed with its
// process tree.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"rainforest/internal/agentproto"
	"rainforest/internal/procstat"
)

// DefaultMaxExecs bounds the commands running at once.
const DefaultMaxExecs = 16

// Default intervals, until the host's Watch says otherwise.
const (
	DefaultHeartbeat = 5 * time.Second
	DefaultStats     = 10 * time.Second
)

// Config configures a Server.
type Config struct {
	// Software names the agent in its Hello ("rf-agent 1.2.3").
	Software string
	// Proc is the guest's /proc (os.DirFS("/proc")).
	Proc fs.FS
	// MaxExecs bounds the commands running at once (0: DefaultMaxExecs).
	MaxExecs int
	// Logger gets connection events; nil discards them.
	Logger *slog.Logger
	// SysRoot is the guest's sysfs ("/sys" when empty), where CPUs go
	// online and offline.
	SysRoot string
	// Latency, when set, holds the latest latency sample applications
	// pushed (ServeLatency); stats reports carry it.
	Latency *Latency
}

// Server serves the agent protocol.
type Server struct {
	cfg   Config
	log   *slog.Logger
	execs chan struct{} // a slot per running command
	start time.Time
	cpus  sync.Mutex // one CPU change at a time
}

// NewServer returns a Server.
func NewServer(cfg Config) *Server {
	if cfg.MaxExecs <= 0 {
		cfg.MaxExecs = DefaultMaxExecs
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log, execs: make(chan struct{}, cfg.MaxExecs), start: time.Now()}
}

// Serve accepts connections from ln and serves each in its own goroutine
// until ctx is done or ln fails; it closes ln, and returns once every
// connection has ended (its end closes them, which kills their commands).
// An accept that fails for a passing reason (a connection the host reset
// before it was accepted, a signal, a moment without memory or
// descriptors) is retried after a short pause; any other failure ends
// every connection too and is returned, so that the agent exits and is
// restarted rather than going on without a listener. It returns nil when
// ctx ended it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	pause := acceptPauseMin
	for {
		c, err := ln.Accept()
		if err != nil && ctx.Err() == nil && transientAccept(err) {
			s.log.Warn("accept failed; retrying", "err", err, "retry_in", pause)
			select {
			case <-time.After(pause):
			case <-ctx.Done():
			}
			pause = min(2*pause, acceptPauseMax)
			continue
		}
		if err != nil {
			ln.Close()
			if ctx.Err() != nil {
				return nil
			}
			cancel() // end the connections too: wg.Wait must not outlive the listener
			return fmt.Errorf("agent: accepting a connection: %w", err)
		}
		pause = acceptPauseMin
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.log.Debug("connection ended", "err", err)
			}
		}()
	}
}

// Pauses after an accept that failed for a passing reason.
const (
	acceptPauseMin = 5 * time.Millisecond
	acceptPauseMax = time.Second
)

// transientAccept reports whether an accept failed for a passing reason.
func transientAccept(err error) bool {
	for _, e := range []error{syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EPROTO, syscall.EPERM,
		syscall.ENOMEM, syscall.ENOBUFS, syscall.EMFILE, syscall.ENFILE, syscall.ETIMEDOUT} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ServeConn serves one connection until the host closes it, the request
// is done, or ctx ends; it closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	pc := agentproto.NewConn(c)
	if err := pc.Send(s.hello()); err != nil {
		return fmt.Errorf("agent: sending hello: %w", err)
	}
	m, err := recvKnown(pc)
	if err != nil {
		return fmt.Errorf("agent: waiting for the host's hello: %w", err)
	}
	h, ok := m.(*agentproto.Hello)
	if !ok {
		return refuse(pc, agentproto.ErrCodeBadRequest, fmt.Sprintf("expected hello, got %s", m.Type()))
	}
	if err := agentproto.CheckVersion(h); err != nil {
		return refuse(pc, agentproto.ErrCodeVersion, err.Error())
	}
	m, err = recvKnown(pc)
	if err != nil {
		return fmt.Errorf("agent: waiting for a request: %w", err)
	}
	switch m := m.(type) {
	case *agentproto.Watch:
		return s.watch(ctx, c, pc, m)
	case *agentproto.Exec:
		select {
		case s.execs <- struct{}{}:
		default:
			return refuse(pc, agentproto.ErrCodeBusy, fmt.Sprintf("%d commands are running, the most this agent runs at once; retry when one ends", cap(s.execs)))
		}
		// The slot is free once the command has ended, before its
		// Exit is sent: a host that got Exit may start another.
		release := sync.OnceFunc(func() { <-s.execs })
		defer release()
		return s.exec(ctx, c, pc, m, release)
	case *agentproto.CPUs:
		if err := pc.Send(s.setCPUs(m.Online)); err != nil {
			return fmt.Errorf("agent: cpus: %w", err)
		}
		return nil
	default:
		return refuse(pc, agentproto.ErrCodeBadRequest, fmt.Sprintf("expected watch, exec or cpus, got %s", m.Type()))
	}
}

// refuse sends an Error and returns it.
func refuse(pc *agentproto.Conn, code, msg string) error {
	e := &agentproto.Error{Code: code, Message: msg}
	pc.Send(e) // the connection closes either way
	return e
}

// recvKnown receives the next message, skipping types of a newer minor
// version.
func recvKnown(pc *agentproto.Conn) (agentproto.Message, error) {
	for {
		m, err := pc.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		return m, err
	}
}

// hello describes this guest, from Proc.
func (s *Server) hello() *agentproto.Hello {
	h := agentproto.NewHello(s.cfg.Software)
	h.Kernel = readShort(s.cfg.Proc, "sys/kernel/osrelease")
	h.Hostname = readShort(s.cfg.Proc, "sys/kernel/hostname")
	if f, err := s.cfg.Proc.Open("stat"); err == nil {
		if t, err := procstat.ParseStat(f); err == nil {
			h.NProc = uint32(min(len(t)-1, agentproto.MaxCPUs))
		}
		f.Close()
	}
	return h
}

// readShort reads the first line of a small file, or "".
func readShort(fsys fs.FS, name string) string {
	f, err := fsys.Open(name)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, agentproto.MaxShortString))
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.ToValidUTF8(strings.ReplaceAll(line, "\x00", ""), "?")
}

// watch sends heartbeats and stats until the connection ends; a new
// Watch resets the intervals. It closes c before it returns.
func (s *Server) watch(ctx context.Context, c net.Conn, pc *agentproto.Conn, w *agentproto.Watch) error {
	updates := make(chan *agentproto.Watch)
	readErr := make(chan error, 1)
	var reader sync.WaitGroup
	defer reader.Wait()
	defer c.Close() // ends the reader
	reader.Add(1)
	go func() {
		defer reader.Done()
		for {
			m, err := pc.Recv()
			if errors.Is(err, agentproto.ErrUnknownType) {
				continue
			}
			if err != nil {
				readErr <- err
				return
			}
			if nw, ok := m.(*agentproto.Watch); ok {
				select {
				case updates <- nw:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	sampler := procstat.NewSampler(s.cfg.Proc)
	var seq uint64
	heartbeat := func() error {
		seq++
		return pc.Send(&agentproto.Heartbeat{Seq: seq, UptimeMS: uint64(time.Since(s.start).Milliseconds())})
	}
	stats := func() error {
		st, err := sampler.Sample(time.Now())
		if err != nil {
			s.log.Warn("reading /proc for a stats report", "err", err)
			return nil
		}
		if s.cfg.Latency != nil {
			st.Latency = s.cfg.Latency.Sample(time.Now())
		}
		return pc.Send(st)
	}
	hb := time.NewTicker(time.Hour)
	defer hb.Stop()
	st := time.NewTicker(time.Hour)
	defer st.Stop()
	// apply takes new intervals and reports at once.
	apply := func(w *agentproto.Watch) error {
		hb.Reset(time.Duration(w.HeartbeatMS) * time.Millisecond)
		if err := heartbeat(); err != nil {
			return err
		}
		if w.StatsMS == 0 {
			st.Stop()
			return nil
		}
		st.Reset(time.Duration(w.StatsMS) * time.Millisecond)
		return stats()
	}
	err := apply(w)
	for err == nil {
		select {
		case <-hb.C:
			err = heartbeat()
		case <-st.C:
			err = stats()
		case nw := <-updates:
			err = apply(nw)
		case err = <-readErr:
			if err == io.EOF {
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
	return fmt.Errorf("agent: watch: %w", err)
}
