// Package tool runs and reads the network benchmark's two measuring
// tools: iperf3's TCP stream test (throughput, from its -J JSON report)
// and sockperf's TCP ping-pong test (request-response round trips, from
// its text report with --full-rtt). Both run the same way wherever the
// client is: on the host, or in a guest through its agent; Command gives
// their command lines and Parse* reads what they print.
//
// sockperf stands in for netperf's TCP_RR: Debian ships netperf in
// non-free only, and sockperf (main) measures the same ping-pong of one
// small message on one TCP connection, with percentiles of the round trip.
package tool

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Ports the servers listen on.
const (
	IperfPort    = 5201
	SockperfPort = 11111
)

// MaxOutput bounds what a tool's report may be (a guest's output is
// untrusted): iperf3's JSON with one interval a second for a minute is
// well under it.
const MaxOutput = 1 << 20

// ErrReport means a tool's output is not a report it could have written,
// or a report of a failed test.
var ErrReport = errors.New("tool: bad report")

// ServerCommand is the command that starts both servers in the
// background, each left running when it is already there (a second
// start fails on the port, which is fine).
func ServerCommand() []string {
	return []string{"sh", "-c", fmt.Sprintf("iperf3 -s -D -p %d >/dev/null 2>&1; "+
		"(setsid sockperf server --tcp -i 0.0.0.0 -p %d </dev/null >/dev/null 2>&1 &); sleep 1; echo started",
		IperfPort, SockperfPort)}
}

// StreamCommand is iperf3's TCP stream test from the client to addr for
// secs seconds, reporting JSON.
func StreamCommand(addr string, secs int) []string {
	return []string{"iperf3", "-c", addr, "-p", strconv.Itoa(IperfPort), "-t", strconv.Itoa(secs), "-J"}
}

// RRCommand is sockperf's TCP ping-pong test to addr for secs seconds,
// reporting the full round trip.
func RRCommand(addr string, secs int) []string {
	return []string{"sockperf", "ping-pong", "--tcp", "-i", addr, "-p", strconv.Itoa(SockperfPort),
		"-t", strconv.Itoa(secs), "--full-rtt", "-m", "64"}
}

// Stream is the result of one iperf3 TCP stream test.
type Stream struct {
	// BitsPerSecond is what the receiver got (sum_received).
	BitsPerSecond float64 `json:"bits_per_second"`
	Seconds       float64 `json:"seconds"`
	// Retransmits are the sender's TCP retransmissions (-1: not told).
	Retransmits int `json:"retransmits"`
}

// ParseIperf3 reads an iperf3 -J report.
func ParseIperf3(out []byte) (Stream, error) {
	if len(out) > MaxOutput {
		return Stream{}, fmt.Errorf("%w: iperf3 report of %d bytes", ErrReport, len(out))
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumSent *struct {
				Retransmits *int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived *struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Stream{}, fmt.Errorf("%w: iperf3: %v", ErrReport, err)
	}
	if r.Error != "" {
		return Stream{}, fmt.Errorf("%w: iperf3: %s", ErrReport, bound(r.Error))
	}
	if r.End.SumReceived == nil || r.End.SumReceived.BitsPerSecond <= 0 {
		return Stream{}, fmt.Errorf("%w: iperf3: no sum_received", ErrReport)
	}
	s := Stream{BitsPerSecond: r.End.SumReceived.BitsPerSecond, Seconds: r.End.SumReceived.Seconds, Retransmits: -1}
	if r.End.SumSent != nil && r.End.SumSent.Retransmits != nil {
		s.Retransmits = *r.End.SumSent.Retransmits
	}
	return s, nil
}

// RR is the result of one sockperf ping-pong test: round trips in
// microseconds.
type RR struct {
	Observations int     `json:"observations"`
	AvgUS        float64 `json:"avg_us"`
	P50US        float64 `json:"p50_us"`
	P99US        float64 `json:"p99_us"`
	MaxUS        float64 `json:"max_us"`
}

var (
	ansiEscape      = regexp.MustCompile("\x1b\\[[0-9;]*m")
	sockperfPct     = regexp.MustCompile(`percentile\s+([0-9.]+)\s*=\s*([0-9.]+)`)
	sockperfMax     = regexp.MustCompile(`<MAX> observation\s*=\s*([0-9.]+)`)
	sockperfAvg     = regexp.MustCompile(`avg-(?:rtt|latency)=([0-9.]+)`)
	sockperfTotal   = regexp.MustCompile(`Total (\d+) observations`)
	sockperfHalfRTT = regexp.MustCompile(`avg-latency=`)
)

// ParseSockperf reads the report of sockperf ping-pong --full-rtt.
func ParseSockperf(out []byte) (RR, error) {
	if len(out) > MaxOutput {
		return RR{}, fmt.Errorf("%w: sockperf report of %d bytes", ErrReport, len(out))
	}
	text := ansiEscape.ReplaceAllString(string(out), "")
	if sockperfHalfRTT.MatchString(text) {
		return RR{}, fmt.Errorf("%w: sockperf reported one-way latency (run it with --full-rtt)", ErrReport)
	}
	var r RR
	pcts := map[string]float64{}
	for _, m := range sockperfPct.FindAllStringSubmatch(text, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return RR{}, fmt.Errorf("%w: sockperf percentile %s: %v", ErrReport, m[1], err)
		}
		p, _ := strconv.ParseFloat(m[1], 64)
		pcts[strconv.FormatFloat(p, 'f', 3, 64)] = v
	}
	p50, ok50 := pcts["50.000"]
	p99, ok99 := pcts["99.000"]
	if !ok50 || !ok99 {
		last := strings.TrimSpace(text)
		if i := strings.LastIndexByte(last, '\n'); i >= 0 {
			last = last[i+1:]
		}
		return RR{}, fmt.Errorf("%w: sockperf: no 50th and 99th percentiles (last line %q)", ErrReport, bound(last))
	}
	r.P50US, r.P99US = p50, p99
	if m := sockperfMax.FindStringSubmatch(text); m != nil {
		r.MaxUS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := sockperfAvg.FindStringSubmatch(text); m != nil {
		r.AvgUS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := sockperfTotal.FindStringSubmatch(text); m != nil {
		r.Observations, _ = strconv.Atoi(m[1])
	}
	return r, nil
}

// bound cuts untrusted text for an error message, quoting what a
// terminal would act on.
func bound(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}
