// Package sample is one measurement of the network benchmark (one
// repetition of one test on one path) and its one-line text form: the
// measurer in the nested layer prints lines with FormatLine on the serial
// console, the host parses them back with ParseLine. Besides results, the
// session prints info lines (InfoPrefix: what a path ran with, or why it
// was skipped), parsed with ParseInfo.
package sample

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"rainforest/bench/internal/benchkit"
)

// Line prefixes.
const (
	LinePrefix = "RF-NET"
	InfoPrefix = "RF-NET-INFO"
)

// Tests.
const (
	Stream = "stream" // iperf3 TCP stream: throughput
	RR     = "rr"     // sockperf TCP ping-pong: round trips
)

// ErrBadLine means a line could not be parsed.
var ErrBadLine = errors.New("sample: bad result line")

// Sample is one repetition of one test on one path (Row).
type Sample struct {
	Row  string `json:"row"`
	Test string `json:"test"`
	Run  int    `json:"run"`
	// Error is empty when the test succeeded.
	Error string `json:"error,omitempty"`
	// Gbps and Retransmits: Stream tests.
	Gbps        float64 `json:"gbps,omitempty"`
	Retransmits int     `json:"retransmits,omitempty"`
	// Round trips in microseconds: RR tests.
	P50US float64 `json:"p50_us,omitempty"`
	P99US float64 `json:"p99_us,omitempty"`
	AvgUS float64 `json:"avg_us,omitempty"`
}

// OK reports whether the test succeeded.
func (s Sample) OK() bool { return s.Error == "" }

func (s *Sample) numbers() []struct {
	key string
	v   *float64
} {
	return []struct {
		key string
		v   *float64
	}{{"gbps", &s.Gbps}, {"p50_us", &s.P50US}, {"p99_us", &s.P99US}, {"avg_us", &s.AvgUS}}
}

// FormatLine renders s as one line.
func FormatLine(s Sample) string {
	fields := []benchkit.Field{{Key: "row", Value: s.Row}, {Key: "test", Value: s.Test}, {Key: "run", Value: strconv.Itoa(s.Run)}}
	for _, n := range s.numbers() {
		if *n.v != 0 {
			fields = append(fields, benchkit.Field{Key: n.key, Value: strconv.FormatFloat(*n.v, 'g', 6, 64)})
		}
	}
	if s.Test == Stream && s.Error == "" {
		fields = append(fields, benchkit.Field{Key: "retransmits", Value: strconv.Itoa(s.Retransmits)})
	}
	return benchkit.FormatLine(LinePrefix, fields, s.Error)
}

// ParseLine parses a result line; ok is false for a line without one (an
// info line included).
func ParseLine(line string) (s Sample, ok bool, err error) {
	fields, ok, err := benchkit.LineFields(line, LinePrefix, ErrBadLine)
	if !ok || err != nil {
		return Sample{}, ok, err
	}
	nums := map[string]*float64{}
	for _, n := range s.numbers() {
		nums[n.key] = n.v
	}
	haveRun := false
	for _, f := range fields {
		switch {
		case f.Key == "row":
			s.Row = f.Value
		case f.Key == "test":
			s.Test = f.Value
		case f.Key == benchkit.ErrorKey:
			s.Error = f.Value
		case f.Key == "run" || f.Key == "retransmits":
			n, err := strconv.Atoi(f.Value)
			if err != nil || n < 0 || n > 1<<30 {
				return Sample{}, true, fmt.Errorf("%w: %s %q: %q", ErrBadLine, f.Key, f.Value, line)
			}
			if f.Key == "run" {
				s.Run, haveRun = n, true
			} else {
				s.Retransmits = n
			}
		case nums[f.Key] != nil:
			v, err := strconv.ParseFloat(f.Value, 64)
			if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
				return Sample{}, true, fmt.Errorf("%w: %s %q: %q", ErrBadLine, f.Key, f.Value, line)
			}
			*nums[f.Key] = v
		}
	}
	if s.Row == "" || (s.Test != Stream && s.Test != RR) || !haveRun {
		return Sample{}, true, fmt.Errorf("%w: no row, test or run field: %q", ErrBadLine, line)
	}
	return s, true, nil
}

// Info is an info line: key=value facts about a row (Row empty: about
// the session).
type Info struct {
	Row    string
	Fields []benchkit.Field
}

// FormatInfo renders an info line.
func FormatInfo(row string, fields ...benchkit.Field) string {
	return benchkit.FormatLine(InfoPrefix, append([]benchkit.Field{{Key: "row", Value: row}}, fields...), "")
}

// ParseInfo parses an info line.
func ParseInfo(line string) (Info, bool, error) {
	fields, ok, err := benchkit.LineFields(line, InfoPrefix, ErrBadLine)
	if !ok || err != nil {
		return Info{}, ok, err
	}
	var in Info
	for _, f := range fields {
		if f.Key == "row" {
			in.Row = f.Value
			continue
		}
		in.Fields = append(in.Fields, f)
	}
	return in, true, nil
}
