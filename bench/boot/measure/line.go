package measure

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LinePrefix starts every result line the measurer prints.
const LinePrefix = "RF-BENCH"

// ErrBadLine means a result line could not be parsed.
var ErrBadLine = errors.New("measure: bad result line")

// Sample is the measurement of one VMM run.
type Sample struct {
	// VMM names the VMM measured ("rfm", "qemu"); Run numbers the run.
	VMM string `json:"vmm"`
	Run int    `json:"run"`
	// Error is empty when the marker was seen and the VMM exited; the
	// other fields may be partly filled otherwise.
	Error string `json:"error,omitempty"`
	// Init is the time from just before the VMM process was started
	// until the marker appeared on its stdout.
	Init time.Duration `json:"init_ns"`
	// Exit is the time from the start until the VMM process exited.
	Exit time.Duration `json:"exit_ns"`
	// ExitCode is the VMM's exit status (-1 when killed by a signal).
	ExitCode int `json:"exit_code"`
	// Status is the VMM's /proc/PID/status when the marker appeared.
	Status ProcStatus `json:"status_kib"`
}

// OK reports whether the run succeeded.
func (s Sample) OK() bool { return s.Error == "" }

// FormatLine renders s as one line: LinePrefix followed by key=value
// fields; values that need it are Go-quoted.
func FormatLine(s Sample) string {
	kv := []struct {
		k, v string
	}{
		{"vmm", s.VMM},
		{"run", strconv.Itoa(s.Run)},
		{"init_us", strconv.FormatInt(s.Init.Microseconds(), 10)},
		{"exit_us", strconv.FormatInt(s.Exit.Microseconds(), 10)},
		{"exit_code", strconv.Itoa(s.ExitCode)},
		{"vmrss_kib", strconv.FormatUint(s.Status.VmRSS, 10)},
		{"vmhwm_kib", strconv.FormatUint(s.Status.VmHWM, 10)},
		{"rss_anon_kib", strconv.FormatUint(s.Status.RssAnon, 10)},
		{"rss_file_kib", strconv.FormatUint(s.Status.RssFile, 10)},
		{"rss_shmem_kib", strconv.FormatUint(s.Status.RssShmem, 10)},
		{"hugetlb_kib", strconv.FormatUint(s.Status.HugetlbPages, 10)},
	}
	var b strings.Builder
	b.WriteString(LinePrefix)
	for _, f := range kv {
		b.WriteString(" " + f.k + "=" + quoteValue(f.v))
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

// ParseLine parses a result line. ok is false when the line carries no
// result (no LinePrefix followed by a space); text before the prefix, such
// as console noise on the same line, is skipped.
func ParseLine(line string) (s Sample, ok bool, err error) {
	i := strings.Index(line, LinePrefix+" ")
	if i < 0 {
		return Sample{}, false, nil
	}
	fields, err := splitFields(strings.TrimRight(line[i+len(LinePrefix)+1:], "\r\n"))
	if err != nil {
		return Sample{}, true, fmt.Errorf("%w: %v: %q", ErrBadLine, err, line)
	}
	ints := map[string]*int64{}
	var initUS, exitUS, exitCode, run int64
	ints["init_us"], ints["exit_us"], ints["exit_code"], ints["run"] = &initUS, &exitUS, &exitCode, &run
	uints := map[string]*uint64{
		"vmrss_kib": &s.Status.VmRSS, "vmhwm_kib": &s.Status.VmHWM, "rss_anon_kib": &s.Status.RssAnon,
		"rss_file_kib": &s.Status.RssFile, "rss_shmem_kib": &s.Status.RssShmem, "hugetlb_kib": &s.Status.HugetlbPages,
	}
	for _, f := range fields {
		switch {
		case f.key == "vmm":
			s.VMM = f.value
		case f.key == "error":
			s.Error = f.value
		case ints[f.key] != nil:
			n, err := strconv.ParseInt(f.value, 10, 64)
			if err != nil {
				return Sample{}, true, fmt.Errorf("%w: %s: %v", ErrBadLine, f.key, err)
			}
			*ints[f.key] = n
		case uints[f.key] != nil:
			n, err := strconv.ParseUint(f.value, 10, 64)
			if err != nil {
				return Sample{}, true, fmt.Errorf("%w: %s: %v", ErrBadLine, f.key, err)
			}
			*uints[f.key] = n
		}
	}
	if s.VMM == "" {
		return Sample{}, true, fmt.Errorf("%w: no vmm field: %q", ErrBadLine, line)
	}
	if run < 0 || run > 1<<30 || exitCode < -1<<31 || exitCode > 1<<31-1 {
		return Sample{}, true, fmt.Errorf("%w: run or exit_code out of range: %q", ErrBadLine, line)
	}
	s.Run, s.ExitCode = int(run), int(exitCode)
	s.Init, s.Exit = time.Duration(initUS)*time.Microsecond, time.Duration(exitUS)*time.Microsecond
	return s, true, nil
}

// ParseOutput parses every result line in text (for example the nested
// layer's console output). Lines that fail to parse are reported in errs
// and skipped.
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
