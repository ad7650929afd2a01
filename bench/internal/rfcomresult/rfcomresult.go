// Package rfcomresult is what the benchmarks that run `rfcom bench`
// between two guests share (bench/rfcom, bench/hardening): the guest
// command lines of the serving and the measuring side, and the parsing of
// the tool's result lines.
package rfcomresult

import (
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Result is one result line of `rfcom bench`: a round-trip line (RTT) or
// a throughput line, of one mode ("irq" or "poll").
type Result struct {
	Mode string
	// RTT is true for a round-trip line: RTTMedian, RTTP99 and OneWay are
	// set (ns); otherwise MsgsPerS is.
	RTT       bool
	RTTMedian float64
	RTTP99    float64
	OneWay    float64
	MsgsPerS  float64
}

var (
	rttLine  = regexp.MustCompile(`bench: peer \d+ mode (\w+) 64-byte round trip median (\S+) p99 (\S+), one-way ~(\S+) `)
	tputLine = regexp.MustCompile(`bench: peer \d+ mode (\w+) throughput .*: ([0-9.]+) msgs/s at the receiver`)
)

// Parse parses a result line of `rfcom bench` found anywhere in line
// (after a prefix the caller added, or console noise). ok is false when
// line holds none, or one whose figures do not parse.
func Parse(line string) (r Result, ok bool) {
	ns := func(s string) (float64, bool) {
		d, err := time.ParseDuration(s)
		return float64(d.Nanoseconds()), err == nil && d >= 0
	}
	if m := rttLine.FindStringSubmatch(line); m != nil {
		med, ok1 := ns(m[2])
		p99, ok2 := ns(m[3])
		one, ok3 := ns(m[4])
		return Result{Mode: m[1], RTT: true, RTTMedian: med, RTTP99: p99, OneWay: one}, ok1 && ok2 && ok3
	}
	if m := tputLine.FindStringSubmatch(line); m != nil {
		v, err := strconv.ParseFloat(m[2], 64)
		return Result{Mode: m[1], MsgsPerS: v}, err == nil
	}
	return Result{}, false
}

// Retry is a shell loop running cmd until it succeeds, at most about 100
// times a second apart: the measuring side starts before the serving
// side listens.
func Retry(cmd string) string {
	return "i=0; until " + cmd + "; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 1; done"
}

// ServeCommand is the serving side's guest command: `rfcom bench --serve`
// with extra flags (" --ivshmem ...", or ""), once per mode in order.
func ServeCommand(extra string, modes ...string) string {
	cmds := make([]string, len(modes))
	for i, m := range modes {
		cmds[i] = "rfcom bench --serve" + extra + " --mode " + m + " --timeout 900s"
	}
	return strings.Join(cmds, "; ")
}

// ClientCommand is the measuring side's guest command: n round trips
// (and streamed messages) against target ("--to NAME") once per mode in
// order, each retried until the serving side answers.
func ClientCommand(target string, n int, modes ...string) string {
	cmds := make([]string, len(modes))
	for i, m := range modes {
		cmds[i] = Retry("rfcom bench " + target + " --n " + strconv.Itoa(n) + " --mode " + m)
	}
	return strings.Join(cmds, "; ")
}
