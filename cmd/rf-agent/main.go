// Command rf-agent is the agent inside every subOS (the paper's subOScon).
// It listens on a vsock port (agentproto.Port, 1024) for the supervisor,
// which connects through the VMM's vsock Unix socket ("CONNECT 1024\n"),
// and speaks internal/agentproto: a hello with its versions, the kernel,
// the hostname and the online CPUs; heartbeats and stats reports from
// /proc (per-CPU use, memory, load, pressure, processes) at the intervals
// the host asks for; and commands run on the host's behalf (rfm exec),
// with pipes or a pseudo-terminal, at most --max-execs at once, killed
// with their process tree when the host goes away.
//
// It is a static binary (CGO_ENABLED=0) started by the image's /init,
// which restarts it if it exits. It logs to stderr (the console), only
// what is wrong (--debug: every connection), and stops on SIGTERM or
// SIGINT, killing the commands it runs. Where there is no vsock device (a
// guest of plain `rfm vmm` without one) it waits silently, trying again
// with a growing pause (listenPatiently): the console stays the guest's.
//
// Applications report their p99 latency (the autoscaler's source) to a
// Unix datagram socket, --latency-socket (/run/rf-agent/latency.sock):
// one message per sample, "p99 12.5ms" or {"p99_us": 12500}; bad
// messages are ignored and counted. `rf-agent latency 12.5ms` sends one
// (for shell scripts). The stats reports carry the latest sample.
//
// Usage:
//
//	rf-agent [--port N] [--max-execs N] [--latency-socket PATH] [--debug]
//	rf-agent latency [--socket PATH] P99
//	rf-agent --version
//
// Examples:
//
//	rf-agent                  # listen on vsock port 1024
//	rf-agent --max-execs 4    # run at most 4 commands at once
//	rf-agent latency 12.5ms   # report a p99 latency of 12.5ms
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"rainforest/internal/agent"
	"rainforest/internal/agentproto"
	"rainforest/internal/buildinfo"
)

// Pauses between attempts to listen (a guest without a vsock device, or
// whose driver is still loading).
const (
	listenRetryMin = time.Second
	listenRetryMax = time.Minute
)

// listenPatiently calls listen until it works or ctx ends (its error
// then), pausing from listenRetryMin to listenRetryMax between tries. It
// logs at debug level only: a guest without vsock is no fault.
func listenPatiently(ctx context.Context, listen func() (net.Listener, error), log *slog.Logger) (net.Listener, error) {
	pause := listenRetryMin
	for {
		ln, err := listen()
		if err == nil {
			return ln, nil
		}
		log.Debug("cannot listen yet; is there a vsock device, and its driver (vmw_vsock_virtio_transport)?", "err", err, "retry_in", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, listenRetryMax)
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "latency" {
		return runLatency(args[1:], stderr)
	}
	fs := flag.NewFlagSet("rf-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Uint("port", agentproto.Port, "vsock port to listen on")
	maxExecs := fs.Int("max-execs", agent.DefaultMaxExecs, "most commands run at once")
	latencySocket := fs.String("latency-socket", agent.LatencySocket, "Unix datagram socket applications report their p99 latency to (\"\": none)")
	debug := fs.Bool("debug", false, "log every connection")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: rf-agent [--port N] [--max-execs N] [--latency-socket PATH] [--debug]\n       rf-agent latency [--socket PATH] P99\n       rf-agent --version\n\nexamples:\n  rf-agent                  # listen on vsock port %d\n  rf-agent --max-execs 4    # run at most 4 commands at once\n  rf-agent latency 12.5ms   # report a p99 latency of 12.5ms\n\n", agentproto.Port)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "rf-agent: unexpected argument %q; it takes flags only (see --help)\n", fs.Arg(0))
		return 2
	}
	if *port == 0 || *port > 1<<32-2 {
		fmt.Fprintf(stderr, "rf-agent: --port %d is not a vsock port (1..4294967294)\n", *port)
		return 2
	}
	if *maxExecs < 1 {
		fmt.Fprintf(stderr, "rf-agent: --max-execs %d: give at least 1\n", *maxExecs)
		return 2
	}
	software := "rf-agent " + buildinfo.Read().String()
	if *version {
		fmt.Fprintf(stdout, "%s (protocol %d.%d)\n", software, agentproto.ProtocolMajor, agentproto.ProtocolMinor)
		return 0
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("prog", "rf-agent")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var latency *agent.Latency
	var latencyConn net.PacketConn
	if *latencySocket != "" {
		c, err := agent.ListenLatency(*latencySocket)
		if err != nil {
			log.Warn("no latency socket; latency reports are off", "err", err)
		} else {
			latency, latencyConn = &agent.Latency{}, c
		}
	}
	ln, err := listenPatiently(ctx, func() (net.Listener, error) { return listenVsock(uint32(*port)) }, log)
	if err != nil {
		return 0 // stopped while waiting
	}
	log.Debug("listening", "vsock_port", *port, "version", software)
	s := agent.NewServer(agent.Config{Software: software, Proc: os.DirFS("/proc"), MaxExecs: *maxExecs, Logger: log, Latency: latency})
	var latencyDone sync.WaitGroup
	defer latencyDone.Wait()
	lctx, lstop := context.WithCancel(ctx)
	defer lstop()
	if latencyConn != nil {
		latencyDone.Add(1)
		go func() {
			defer latencyDone.Done()
			if err := s.ServeLatency(lctx, latencyConn, latency); err != nil {
				log.Warn("latency socket stopped", "err", err)
			}
		}()
	}
	if err := s.Serve(ctx, ln); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	return 0
}

// runLatency is `rf-agent latency [--socket PATH] P99`: it sends one
// sample to the agent's latency socket.
func runLatency(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("rf-agent latency", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", agent.LatencySocket, "the agent's latency socket")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: rf-agent latency [--socket PATH] P99\n\nP99 is a duration (12.5ms, 800us) or a number of microseconds.\n\nexamples:\n  rf-agent latency 12.5ms\n  rf-agent latency --socket /tmp/l.sock 800us\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "rf-agent latency: give one p99 latency, e.g. 12.5ms (see --help)")
		return 2
	}
	p99, err := agent.ParseLatency([]byte(fs.Arg(0)))
	if err != nil {
		fmt.Fprintf(stderr, "rf-agent latency: %q: %v\n", fs.Arg(0), err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := agent.SendLatency(ctx, *socket, p99); err != nil {
		fmt.Fprintf(stderr, "rf-agent latency: %v\n", err)
		return 1
	}
	return 0
}
