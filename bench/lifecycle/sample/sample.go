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
	"strings"
	"time"
)

// LinePrefix starts every result line.
const LinePrefix = "RF-LIFECYCLE"

// ErrBadLine means a result line could not be parsed.
var ErrBadLine = errors.New("sample: bad result line")

// Sample is one create/destroy cycle.
type Sample struct {
	// System names what was measured ("rfm", "lxc"); Run numbers the cycle.
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
	}
}

// FormatLine renders s as one line: LinePrefix followed by key=value
// fields; durations are whole microseconds.
func FormatLine(s Sample) string {
	var b strings.Builder
	b.WriteString(LinePrefix)
	b.WriteString(" system=" + quoteValue(s.System))
	b.WriteString(" run=" + strconv.Itoa(s.Run))
	for _, f := range durationFields(&s) {
		b.WriteString(" " + f.key + "=" + strconv.FormatInt(f.d.Microseconds(), 10))
	}
	if s.Error != "" {
		b.WriteString(" error=" + strconv.Quote(s.Error))
	}
	return b.String()
}

func quoteValue(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\"=\\\r\n") || !strconv.CanBackquote(v) {
		return strconv.Quote(v)
	}
	return v
}

// maxMicros bounds a duration field (about 292 years in ns would overflow
// time.Duration; a day is plenty).
const maxMicros = int64(24 * time.Hour / time.Microsecond)

// ParseLine parses a result line. ok is false when the line carries no
// result (no LinePrefix followed by a space); text before the prefix, such
// as console noise on the same line, is skipped. Unknown keys are ignored.
func ParseLine(line string) (s Sample, ok bool, err error) {
	i := strings.Index(line, LinePrefix+" ")
	if i < 0 {
		return Sample{}, false, nil
	}
	fields, err := splitFields(strings.TrimRight(line[i+len(LinePrefix)+1:], "\r\n"))
	if err != nil {
		return Sample{}, true, fmt.Errorf("%w: %v: %q", ErrBadLine, err, line)
	}
	durs := map[string]*time.Duration{}
	for _, f := range durationFields(&s) {
		durs[f.key] = f.d
	}
	haveRun := false
	for _, f := range fields {
		switch {
		case f.key == "system":
			s.System = f.value
		case f.key == "error":
			s.Error = f.value
		case f.key == "run":
			n, err := strconv.Atoi(f.value)
			if err != nil || n < 0 || n > 1<<30 {
				return Sample{}, true, fmt.Errorf("%w: run %q: %q", ErrBadLine, f.value, line)
			}
			s.Run, haveRun = n, true
		case durs[f.key] != nil:
			n, err := strconv.ParseInt(f.value, 10, 64)
			if err != nil || n < 0 || n > maxMicros {
				return Sample{}, true, fmt.Errorf("%w: %s %q: %q", ErrBadLine, f.key, f.value, line)
			}
			*durs[f.key] = time.Duration(n) * time.Microsecond
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
	for _, line := range strings.Split(text, "\n") {
		s, ok, err := ParseLine(line)
		switch {
		case err != nil:
			errs = append(errs, err)
		case ok:
			samples = append(samples, s)
		}
	}
	return samples, errs
}

type field struct{ key, value string }

// splitFields splits `k=v k2="quoted v"` into fields.
func splitFields(s string) ([]field, error) {
	var out []field
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, nil
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \t\"") {
			return nil, fmt.Errorf("field without key=value at %q", s)
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("bad quoted value for %s: %w", key, err)
			}
			if val, err = strconv.Unquote(q); err != nil {
				return nil, fmt.Errorf("bad quoted value for %s: %w", key, err)
			}
			s = s[len(q):]
		} else {
			end := strings.IndexAny(s, " \t")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		out = append(out, field{key, val})
	}
}
