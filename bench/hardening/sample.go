package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/internal/rfcomresult"
	"rainforest/bench/lifecycle/sample"
)

// linePrefix starts the script's result lines:
//
//	RF-HARDENING config=plain rep=2 metric=disk | RF-DISK direct=1 ...
//
// the tag, then the measurer's or the guest's own line (or failedPayload
// and why).
const linePrefix = "RF-HARDENING"

// failedPayload starts the payload of a result the script did not get.
const failedPayload = "RF-FAILED"

// maxError bounds a sample's error text: it may quote a guest.
const maxError = 2000

// errBadLine means a result line could not be parsed.
var errBadLine = errors.New("hardening: bad result line")

// Sample is one result of one configuration's run: its values by name
// (a boot cycle, a diskbench line, one `rfcom bench` line), or why it
// failed.
type Sample struct {
	Config string             `json:"config"`
	Rep    int                `json:"rep"`
	Metric string             `json:"metric"`
	Values map[string]float64 `json:"values,omitempty"`
	Error  string             `json:"error,omitempty"`
}

// OK reports whether the sample holds a result.
func (s Sample) OK() bool { return s.Error == "" }

// diskKeys are the RF-DISK fields kept.
var diskKeys = [...]string{"seq_read_mbps", "rand_read_iops", "rand_read_p50_us", "rand_read_p99_us",
	"seq_write_mbps", "rand_write_iops", "rand_write_p50_us", "rand_write_p99_us", "direct"}

// parseLine parses one line of the session's output (a Collector's
// Parse): ok is false for a line that carries no result.
func parseLine(line string) (s Sample, ok bool, err error) {
	i := strings.Index(line, linePrefix+" ")
	if i < 0 {
		return Sample{}, false, nil
	}
	bad := func(why string) (Sample, bool, error) {
		return Sample{}, true, fmt.Errorf("%w: %s: %q", errBadLine, why, benchkit.ShortenError(line))
	}
	tag, payload, found := strings.Cut(line[i+len(linePrefix)+1:], " | ")
	if !found {
		return bad("no payload")
	}
	fields, err := benchkit.SplitFields(tag)
	if err != nil {
		return bad(err.Error())
	}
	for _, f := range fields {
		switch f.Key {
		case "config":
			s.Config = f.Value
		case "metric":
			s.Metric = f.Value
		case "rep":
			if s.Rep, err = strconv.Atoi(f.Value); err != nil || s.Rep < 1 || s.Rep > 1<<20 {
				return bad("rep " + strconv.Quote(f.Value))
			}
		}
	}
	if s.Config != cfgHardened && s.Config != cfgPlain {
		return bad("config " + strconv.Quote(s.Config))
	}
	if s.Rep == 0 {
		return bad("no rep")
	}
	payload = strings.TrimRight(payload, "\r\n")
	if why, failed := strings.CutPrefix(payload, failedPayload+" "); failed {
		s.Error = bounded(why)
		return s, true, nil
	}
	switch s.Metric {
	case metricBoot:
		err = s.parseBoot(payload)
	case metricDisk:
		err = s.parseDisk(payload)
	case metricFICM:
		err = s.parseFICM(payload)
	default:
		return bad("metric " + strconv.Quote(s.Metric))
	}
	if err != nil {
		return bad(err.Error())
	}
	return s, true, nil
}

// parseBoot takes a lifecycle measurer's line.
func (s *Sample) parseBoot(payload string) error {
	b, ok, err := sample.ParseLine(payload)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("no " + sample.LinePrefix + " line")
	}
	if !b.OK() {
		s.Error = bounded(b.Error)
		return nil
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	s.Values = map[string]float64{"create_init_ms": ms(b.CreateInit), "create_return_ms": ms(b.CreateReturn)}
	return nil
}

// parseDisk takes the guest's RF-DISK line.
func (s *Sample) parseDisk(payload string) error {
	fields, ok, err := benchkit.LineFields(payload, "RF-DISK", errBadLine)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("no RF-DISK line")
	}
	s.Values = map[string]float64{}
	for _, f := range fields {
		for _, k := range diskKeys {
			if f.Key != k {
				continue
			}
			v, err := strconv.ParseFloat(f.Value, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("%s %q", k, f.Value)
			}
			s.Values[k] = v
		}
	}
	if _, ok := s.Values["seq_read_mbps"]; !ok {
		return errors.New("RF-DISK line without seq_read_mbps")
	}
	return nil
}

// parseFICM takes one `rfcom bench` line: a round trip (µs) or a
// throughput, of one mode.
func (s *Sample) parseFICM(payload string) error {
	r, ok := rfcomresult.Parse(payload)
	if !ok || (r.Mode != ficmModes[0] && r.Mode != ficmModes[1]) {
		return errors.New("no rfcom bench result")
	}
	if r.RTT {
		s.Values = map[string]float64{r.Mode + "_rtt_median_us": r.RTTMedian / 1e3, r.Mode + "_rtt_p99_us": r.RTTP99 / 1e3}
	} else {
		s.Values = map[string]float64{r.Mode + "_msgs_per_s": r.MsgsPerS}
	}
	return nil
}

// bounded cuts s to maxError bytes and escapes what is not printable,
// for a log, a terminal and the report.
func bounded(s string) string {
	if len(s) > maxError {
		s = s[:maxError] + "..."
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}
