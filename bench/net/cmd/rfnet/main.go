// Command rfnet is the network benchmark's measurer (bench/net): it runs
// in the nested L1 guest (or on the host) and measures one path between a
// client and a server: it starts the servers (iperf3, sockperf) where the
// server is, then -n times runs iperf3's TCP stream test and sockperf's
// TCP ping-pong from where the client is, and prints one result line
// (bench/net/sample) per test.
//
// Where each end is (-server, -client):
//
//	local      this machine
//	rfm:NAME   subOS NAME, through `rfm exec NAME --` (its agent)
//	vsock:CID  a QEMU guest with a vhost-vsock device of that CID, through
//	           the same agent (rf-agent) dialled over AF_VSOCK
//
// With -exec WHERE it runs one command there instead and prints its
// output (the session configures guests with it); -wait retries until the
// agent answers (a guest still booting).
//
// Usage:
//
//	rfnet -row NAME -addr SERVER-ADDRESS [-server WHERE] [-client WHERE] [-n N] [-secs S]
//	rfnet -exec WHERE [-wait DURATION] -- COMMAND...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"rainforest/bench/net/sample"
	"rainforest/bench/net/tool"
)

func main() {
	var (
		row, addr, server, client, rfm, execWhere string
		runs, secs                                int
		timeout, wait                             time.Duration
	)
	flag.StringVar(&execWhere, "exec", "", "run the command after -- there (local, rfm:NAME or vsock:CID) and print its output")
	flag.DurationVar(&wait, "wait", 0, "with -exec: retry for this long while the command cannot be run")
	flag.StringVar(&row, "row", "", "the path's name in the report")
	flag.StringVar(&addr, "addr", "", "the server's address as the client reaches it")
	flag.StringVar(&server, "server", "local", "where the servers run: local, rfm:NAME or vsock:CID")
	flag.StringVar(&client, "client", "local", "where the clients run: local, rfm:NAME or vsock:CID")
	flag.StringVar(&rfm, "rfm", "rfm", "the rfm command (for rfm:NAME)")
	flag.IntVar(&runs, "n", 3, "repetitions of each test")
	flag.IntVar(&secs, "secs", 10, "seconds each test runs")
	flag.DurationVar(&timeout, "timeout", 3*time.Minute, "bound on each command beyond its seconds")
	flag.Parse()
	if execWhere != "" {
		os.Exit(execOne(execWhere, rfm, wait, timeout, flag.Args()))
	}
	if row == "" || addr == "" || runs < 1 || secs < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: rfnet -row NAME -addr ADDRESS [-server WHERE] [-client WHERE] [-n N] [-secs S]")
		os.Exit(2)
	}
	srv, err := parseWhere(server, rfm)
	if err == nil {
		var cl runner
		cl, err = parseWhere(client, rfm)
		if err == nil {
			err = measure(context.Background(), row, addr, srv, cl, runs, secs, timeout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rfnet:", err)
		os.Exit(1)
	}
}

// execOne runs argv where and prints its output; it returns the exit
// status.
func execOne(where, rfm string, wait, timeout time.Duration, argv []string) int {
	r, err := parseWhere(where, rfm)
	if err != nil || len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "usage: rfnet -exec WHERE [-wait DURATION] -- COMMAND...")
		return 2
	}
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		out, err := r.run(ctx, argv)
		cancel()
		os.Stdout.Write(out)
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "rfnet:", err)
			return 1
		}
		time.Sleep(2 * time.Second)
	}
}

// errWhere means a -server or -client value is not one rfnet knows.
var errWhere = errors.New("where: want local, rfm:NAME or vsock:CID")

// measure starts the servers, then runs the tests, printing each result.
// It fails when the servers cannot be started; failed tests are results.
func measure(ctx context.Context, row, addr string, srv, cl runner, runs, secs int, timeout time.Duration) error {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	out, err := srv.run(sctx, tool.ServerCommand())
	cancel()
	if err != nil {
		return fmt.Errorf("start servers: %w (%s)", err, clip(out))
	}
	for i := 1; i <= runs; i++ {
		for _, test := range []string{sample.Stream, sample.RR} {
			fmt.Println(sample.FormatLine(runTest(ctx, row, test, i, addr, cl, secs, timeout)))
		}
	}
	return nil
}

// runTest runs one test and returns its sample. A first failure to
// connect (a server not listening yet) is retried once.
func runTest(ctx context.Context, row, test string, run int, addr string, cl runner, secs int, timeout time.Duration) sample.Sample {
	s := sample.Sample{Row: row, Test: test, Run: run}
	var err error
	for try := 0; try < 2; try++ {
		if try > 0 {
			time.Sleep(2 * time.Second)
		}
		tctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+timeout)
		err = oneTest(tctx, &s, addr, cl, secs)
		cancel()
		if err == nil {
			return s
		}
	}
	s.Error = err.Error()
	return s
}

func oneTest(ctx context.Context, s *sample.Sample, addr string, cl runner, secs int) error {
	if s.Test == sample.Stream {
		out, err := cl.run(ctx, tool.StreamCommand(addr, secs))
		st, perr := tool.ParseIperf3(out)
		if perr != nil {
			return testError(err, perr)
		}
		s.Gbps, s.Retransmits = st.BitsPerSecond/1e9, max(st.Retransmits, 0)
		return nil
	}
	out, err := cl.run(ctx, tool.RRCommand(addr, secs))
	rr, perr := tool.ParseSockperf(out)
	if perr != nil {
		return testError(err, perr)
	}
	s.P50US, s.P99US, s.AvgUS = rr.P50US, rr.P99US, rr.AvgUS
	return nil
}

// testError is a failed test's error on one line: the command's failure
// (the cause) first, then what its report lacked.
func testError(runErr, parseErr error) error {
	if runErr == nil {
		return parseErr
	}
	return fmt.Errorf("%w; %v", runErr, parseErr)
}

// clip cuts a command's output for an error message.
func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = "..." + s[len(s)-300:]
	}
	return fmt.Sprintf("%q", s)
}
