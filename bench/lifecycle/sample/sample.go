// Package sample is one create/destroy measurement of a subOS or container
// and its one-line text form. The in-guest measurer prints lines with
// FormatLine on the nested layer's serial console; the host parses them
// back with ParseLine or ParseOutput. Values are key=value fields, Go-quoted
// where needed, so that a line survives a serial console.
package sample

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"rainforest/bench/internal/benchkit"
)

// LinePrefix starts every result line.
const LinePrefix = "RF-LIFECYCLE"

// ErrBadLine means a result line could not be parsed.
var ErrBadLine = errors.New("sample: bad result line")

// Sample is one create/destroy cycle.
type Sample struct {
	// System names what was measured ("rfm", "qemu", "lxc"); Run numbers the cycle.
	System string `json:"system"`
	Run    int    `json:"run"`
	// Error is empty when the whole cycle succeeded; the durations may be
	// partly filled otherwise.
	Error string `json:"error,omitempty"`
	// CreateReturn is the time from the create request until it returned
	// (rfm: the API call, the VMM started; lxc: lxc-create + lxc-start -d).
	CreateReturn time.Duration `json:"create_return_ns"`
	// CreateInit is the time from the create request until the guest's
	// init runs (rfm: RF-INIT-REACHED in the subOS log; lxc: lxc-attach
	// -- true succeeds).
	CreateInit time.Duration `json:"create_init_ns"`
	// DestroyReturn is the time from the destroy request until it returned
	// (rfm: the DELETE call; lxc: lxc-stop -k).
	DestroyReturn time.Duration `json:"destroy_return_ns"`
	// Destroy is the time from the destroy request until everything is
	// free (rfm: the ledger lists no subOS; lxc: lxc-destroy returned).
	Destroy time.Duration `json:"destroy_ns"`
	// CPUOnline and CPUOffline are a running instance's CPU resize from
	// one core to two and back (Table 4's CPU online and offline): rfm,
	// POST /v1/subos/{name}/resize until it returned, the guest's CPU
	// online or offline; lxc, lxc-cgroup cpuset.cpus. Zero when not
	// measured.
	CPUOnline  time.Duration `json:"cpu_online_ns,omitempty"`
	CPUOffline time.Duration `json:"cpu_offline_ns,omitempty"`
	// MemOnline and MemOffline are a running instance's memory resize by
	// 512 MiB and back (Table 4's memory online and offline): rfm, rfm
	// resize --memory until the guest plugged or unplugged it (virtio-mem);
	// qemu, qom-set of its virtio-mem device's requested-size until its
	// size got there; lxc, lxc-cgroup of the memory limit. Zero when not
	// measured.
	MemOnline  time.Duration `json:"mem_online_ns,omitempty"`
	MemOffline time.Duration `json:"mem_offline_ns,omitempty"`
}

// OK reports whether the cycle succeeded.
func (s Sample) OK() bool { return s.Error == "" }

// durationFields are the duration fields of a line, in order.
func durationFields(s *Sample) []struct {
	key string
	d   *time.Duration
} {
	return []struct {
		key string
		d   *time.Duration
	}{
		{"create_return_us", &s.CreateReturn},
		{"create_init_us", &s.CreateInit},
		{"destroy_return_us", &s.DestroyReturn},
		{"destroy_us", &s.Destroy},
		{"cpu_online_us", &s.CPUOnline},
		{"cpu_offline_us", &s.CPUOffline},
		{"mem_online_us", &s.MemOnline},
		{"mem_offline_us", &s.MemOffline},
	}
}

// FormatLine renders s as one line: LinePrefix followed by key=value
// fields; durations are whole microseconds.
func FormatLine(s Sample) string {
	fields := []benchkit.Field{{Key: "system", Value: s.System}, {Key: "run", Value: strconv.Itoa(s.Run)}}
	for _, f := range durationFields(&s) {
		fields = append(fields, benchkit.Field{Key: f.key, Value: strconv.FormatInt(f.d.Microseconds(), 10)})
	}
	return benchkit.FormatLine(LinePrefix, fields, s.Error)
}

// maxMicros bounds a duration field (about 292 years in ns would overflow
// time.Duration; a day is plenty).
const maxMicros = int64(24 * time.Hour / time.Microsecond)

// ParseLine parses a result line. ok is false when the line carries no
// result (no LinePrefix followed by a space); text before the prefix, such
// as console noise on the same line, is skipped. Unknown keys are ignored.
func ParseLine(line string) (s Sample, ok bool, err error) {
	fields, ok, err := benchkit.LineFields(line, LinePrefix, ErrBadLine)
	if !ok || err != nil {
		return Sample{}, ok, err
	}
	durs := map[string]*time.Duration{}
	for _, f := range durationFields(&s) {
		durs[f.key] = f.d
	}
	haveRun := false
	for _, f := range fields {
		switch {
		case f.Key == "system":
			s.System = f.Value
		case f.Key == benchkit.ErrorKey:
			s.Error = f.Value
		case f.Key == "run":
			n, err := strconv.Atoi(f.Value)
			if err != nil || n < 0 || n > 1<<30 {
				return Sample{}, true, fmt.Errorf("%w: run %q: %q", ErrBadLine, f.Value, line)
			}
			s.Run, haveRun = n, true
		case durs[f.Key] != nil:
			n, err := strconv.ParseInt(f.Value, 10, 64)
			if err != nil || n < 0 || n > maxMicros {
				return Sample{}, true, fmt.Errorf("%w: %s %q: %q", ErrBadLine, f.Key, f.Value, line)
			}
			*durs[f.Key] = time.Duration(n) * time.Microsecond
		}
	}
	if s.System == "" || !haveRun {
		return Sample{}, true, fmt.Errorf("%w: no system or run field: %q", ErrBadLine, line)
	}
	return s, true, nil
}

// ParseOutput parses every result line in text. Lines that fail to parse
// are reported in errs and skipped.
func ParseOutput(text string) (samples []Sample, errs []error) {
	return benchkit.ParseLines(text, ParseLine)
}
