// Package hotmeasure times disk hot-add and hot-remove on a running Linux
// guest, the same way for an rfm subOS (the request is `rfm attach` and
// `rfm detach` through the supervisor, as users do) and a QEMU guest (QMP
// device_add and device_del of a virtio-blk-pci whose read-only backend
// was added before the clock starts). The guest runs a command that waits
// for /dev/vdb to appear and then to go, printing a marker on its console
// each time; a run boots one guest, waits for it to be ready, and
// measures from issuing each request to the marker (and to the request's
// answer, and for removal to the VMM saying the device is gone: QEMU's
// DEVICE_DELETED event, rfm detach returning). Results travel as one text
// line per operation (FormatLine, ParseLine), so that they survive a
// serial console.
package hotmeasure

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"rainforest/bench/internal/benchkit"
)

// LinePrefix starts every result line.
const LinePrefix = "RF-HOTBENCH"

// Operations measured.
const (
	OpAdd    = "add"
	OpRemove = "remove"
)

// ErrBadLine means a result line could not be parsed.
var ErrBadLine = errors.New("hotmeasure: bad result line")

// Sample is one operation on one guest.
type Sample struct {
	// System names the VMM ("rfm", "qemu"); Run numbers the run; Op is
	// OpAdd or OpRemove.
	System string `json:"system"`
	Run    int    `json:"run"`
	Op     string `json:"op"`
	// Error is empty when the operation completed.
	Error string `json:"error,omitempty"`
	// Request is the time from issuing the request until it was
	// answered: rfm attach/detach exiting 0, or QMP's return.
	Request time.Duration `json:"request_ns"`
	// Guest is the time from issuing the request until the guest's
	// marker: /dev/vdb appeared (add) or went (remove).
	Guest time.Duration `json:"guest_ns"`
	// Removed (remove only) is the time from issuing the request until
	// the VMM said the device is gone: QEMU's DEVICE_DELETED event, or
	// rfm detach returning (it answers once the guest has released the
	// disk and the VMM removed it).
	Removed time.Duration `json:"removed_ns,omitempty"`
	// CLI (rfm only) is how long `rfm inspect NAME` took just before the
	// request: a process start and one API call that changes nothing,
	// the part of an rfm request's time that is the command line tool's.
	CLI time.Duration `json:"cli_ns,omitempty"`
}

// OK reports whether the operation completed.
func (s Sample) OK() bool { return s.Error == "" }

// Done is the operation's time: the guest's marker for an add; for a
// remove, the later of the marker and the VMM saying the device is gone.
func (s Sample) Done() time.Duration {
	if s.Op == OpRemove {
		return max(s.Guest, s.Removed)
	}
	return s.Guest
}

// FormatLine renders s as one result line.
func FormatLine(s Sample) string {
	return benchkit.FormatLine(LinePrefix, []benchkit.Field{
		{Key: "system", Value: s.System},
		{Key: "run", Value: strconv.Itoa(s.Run)},
		{Key: "op", Value: s.Op},
		{Key: "request_us", Value: strconv.FormatInt(s.Request.Microseconds(), 10)},
		{Key: "guest_us", Value: strconv.FormatInt(s.Guest.Microseconds(), 10)},
		{Key: "removed_us", Value: strconv.FormatInt(s.Removed.Microseconds(), 10)},
		{Key: "cli_us", Value: strconv.FormatInt(s.CLI.Microseconds(), 10)},
	}, s.Error)
}

// ParseLine parses a result line; ok is false for a line without one.
func ParseLine(line string) (s Sample, ok bool, err error) {
	fields, ok, err := benchkit.LineFields(line, LinePrefix, ErrBadLine)
	if !ok || err != nil {
		return Sample{}, ok, err
	}
	durations := map[string]*time.Duration{"request_us": &s.Request, "guest_us": &s.Guest, "removed_us": &s.Removed, "cli_us": &s.CLI}
	for _, f := range fields {
		switch {
		case f.Key == "system":
			s.System = f.Value
		case f.Key == "op":
			s.Op = f.Value
		case f.Key == benchkit.ErrorKey:
			s.Error = f.Value
		case f.Key == "run":
			n, err := strconv.Atoi(f.Value)
			if err != nil || n < 0 {
				return Sample{}, true, fmt.Errorf("%w: run %q", ErrBadLine, f.Value)
			}
			s.Run = n
		case durations[f.Key] != nil:
			n, err := strconv.ParseInt(f.Value, 10, 64)
			if err != nil || n < 0 {
				return Sample{}, true, fmt.Errorf("%w: %s %q", ErrBadLine, f.Key, f.Value)
			}
			*durations[f.Key] = time.Duration(n) * time.Microsecond
		}
	}
	if s.System == "" || (s.Op != OpAdd && s.Op != OpRemove) {
		return Sample{}, true, fmt.Errorf("%w: no system or op: %q", ErrBadLine, line)
	}
	return s, true, nil
}
