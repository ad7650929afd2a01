package measure

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"rainforest/bench/boot/wakeups"
	"rainforest/bench/internal/benchkit"
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
	// Idle is the context switches of the VMM's threads while its guest
	// was idle, when measured (Spec.Idle).
	Idle *wakeups.Window `json:"idle,omitempty"`
}

// OK reports whether the run succeeded.
func (s Sample) OK() bool { return s.Error == "" }

// FormatLine renders s as one line: LinePrefix followed by key=value
// fields; values that need it are Go-quoted (benchkit.FormatLine).
func FormatLine(s Sample) string {
	fields := []benchkit.Field{
		{Key: "vmm", Value: s.VMM},
		{Key: "run", Value: strconv.Itoa(s.Run)},
		{Key: "init_us", Value: strconv.FormatInt(s.Init.Microseconds(), 10)},
		{Key: "exit_us", Value: strconv.FormatInt(s.Exit.Microseconds(), 10)},
		{Key: "exit_code", Value: strconv.Itoa(s.ExitCode)},
		{Key: "vmrss_kib", Value: strconv.FormatUint(s.Status.VmRSS, 10)},
		{Key: "vmhwm_kib", Value: strconv.FormatUint(s.Status.VmHWM, 10)},
		{Key: "rss_anon_kib", Value: strconv.FormatUint(s.Status.RssAnon, 10)},
		{Key: "rss_file_kib", Value: strconv.FormatUint(s.Status.RssFile, 10)},
		{Key: "rss_shmem_kib", Value: strconv.FormatUint(s.Status.RssShmem, 10)},
		{Key: "hugetlb_kib", Value: strconv.FormatUint(s.Status.HugetlbPages, 10)},
	}
	if s.Idle != nil {
		threads, _ := json.Marshal(s.Idle.Threads) // a []wakeups.Count always encodes
		fields = append(fields, benchkit.Field{Key: "idle_window_us", Value: strconv.FormatInt(s.Idle.Duration.Microseconds(), 10)},
			benchkit.Field{Key: "idle_threads", Value: string(threads)})
	}
	return benchkit.FormatLine(LinePrefix, fields, s.Error)
}

// ParseLine parses a result line. ok is false when the line carries no
// result (no LinePrefix followed by a space); text before the prefix, such
// as console noise on the same line, is skipped.
func ParseLine(line string) (s Sample, ok bool, err error) {
	fields, ok, err := benchkit.LineFields(line, LinePrefix, ErrBadLine)
	if !ok || err != nil {
		return Sample{}, ok, err
	}
	ints := map[string]*int64{}
	var initUS, exitUS, exitCode, run, idleUS int64
	ints["init_us"], ints["exit_us"], ints["exit_code"], ints["run"], ints["idle_window_us"] = &initUS, &exitUS, &exitCode, &run, &idleUS
	var idleThreads []wakeups.Count
	haveIdle := false
	uints := map[string]*uint64{
		"vmrss_kib": &s.Status.VmRSS, "vmhwm_kib": &s.Status.VmHWM, "rss_anon_kib": &s.Status.RssAnon,
		"rss_file_kib": &s.Status.RssFile, "rss_shmem_kib": &s.Status.RssShmem, "hugetlb_kib": &s.Status.HugetlbPages,
	}
	for _, f := range fields {
		switch {
		case f.Key == "vmm":
			s.VMM = f.Value
		case f.Key == benchkit.ErrorKey:
			s.Error = f.Value
		case f.Key == "idle_threads":
			if err := json.Unmarshal([]byte(f.Value), &idleThreads); err != nil {
				return Sample{}, true, fmt.Errorf("%w: idle_threads: %v", ErrBadLine, err)
			}
			haveIdle = true
		case ints[f.Key] != nil:
			n, err := strconv.ParseInt(f.Value, 10, 64)
			if err != nil {
				return Sample{}, true, fmt.Errorf("%w: %s: %v", ErrBadLine, f.Key, err)
			}
			*ints[f.Key] = n
		case uints[f.Key] != nil:
			n, err := strconv.ParseUint(f.Value, 10, 64)
			if err != nil {
				return Sample{}, true, fmt.Errorf("%w: %s: %v", ErrBadLine, f.Key, err)
			}
			*uints[f.Key] = n
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
	if haveIdle {
		s.Idle = &wakeups.Window{Duration: time.Duration(idleUS) * time.Microsecond, Threads: idleThreads}
	}
	return s, true, nil
}

// ParseOutput parses every result line in text (for example the nested
// layer's console output). Lines that fail to parse are reported in errs
// and skipped.
func ParseOutput(text string) (samples []Sample, errs []error) {
	return benchkit.ParseLines(text, ParseLine)
}
