package agentproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Protocol version. Peers with a different major refuse each other; a
// minor version only adds optional fields and message types, which an
// older peer ignores.
const (
	ProtocolMajor = 1
	ProtocolMinor = 3 // 1.1: cpus, cpus_result; 1.2: stats latency; 1.3: stats shares
)

// Type is a message type, the first byte of a frame.
type Type uint8

// Message types. Agent: sent by the agent; host: sent by the supervisor.
const (
	TypeHello      Type = 1  // both, first on a connection
	TypeHeartbeat  Type = 2  // agent
	TypeStats      Type = 3  // agent
	TypeWatch      Type = 4  // host: send heartbeats and stats
	TypeExec       Type = 5  // host: run a command
	TypeStdout     Type = 6  // agent: raw bytes
	TypeStderr     Type = 7  // agent: raw bytes
	TypeStdin      Type = 8  // host: raw bytes
	TypeStdinClose Type = 9  // host: no more stdin
	TypeResize     Type = 10 // host: TTY window size
	TypeSignal     Type = 11 // host: signal the command
	TypeExit       Type = 12 // agent: the command ended
	TypeError      Type = 13 // both: a refusal; the sender closes
	TypeCPUs       Type = 14 // host: set the online CPUs (1.1)
	TypeCPUsResult Type = 15 // agent: the online CPUs after a CPUs (1.1)
)

var typeNames = map[Type]string{
	TypeHello: "hello", TypeHeartbeat: "heartbeat", TypeStats: "stats",
	TypeWatch: "watch", TypeExec: "exec", TypeStdout: "stdout",
	TypeStderr: "stderr", TypeStdin: "stdin", TypeStdinClose: "stdin_close",
	TypeResize: "resize", TypeSignal: "signal", TypeExit: "exit", TypeError: "error",
	TypeCPUs: "cpus", TypeCPUsResult: "cpus_result",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// Bounds Decode enforces.
const (
	MaxShortString = 256      // names, versions, codes
	MaxText        = 4096     // error messages, paths
	MaxArg         = 32 << 10 // one argv or env entry
	MaxArgs        = 1024     // argv entries; env entries likewise
	MaxChunk       = 64 << 10 // one stdout, stderr or stdin chunk
	MaxCPUs        = 4096     // CPU entries in a stats report or a CPU list; online CPUs asked for
	MaxCPUID       = 1 << 16
	MaxLoad        = 1e6
	MinIntervalMS  = 100
	MaxIntervalMS  = 3600 * 1000
	MaxSignal      = 64
	// MaxLatencyUS bounds a latency sample's p99 (an hour), MaxLatencyAgeMS
	// its age (a day).
	MaxLatencyUS    = 3600 * 1000 * 1000
	MaxLatencyAgeMS = 24 * 3600 * 1000
	// MaxShareMounts bounds a stats report's shares, MaxShareTag and
	// MaxMountDir their tags and mount points (printable ASCII).
	MaxShareMounts = 16
	MaxShareTag    = 36
	MaxMountDir    = 256
)

// Sentinel errors.
var (
	// ErrMalformed means a frame's body is not a valid message.
	ErrMalformed = errors.New("agentproto: malformed message")
	// ErrUnknownType means a frame of a type this version does not know
	// (a newer minor version's): the frame was consumed, so the stream is
	// still in step and a caller may skip it.
	ErrUnknownType = errors.New("agentproto: unknown message type")
	// ErrVersion means the peer speaks another major version.
	ErrVersion = errors.New("agentproto: protocol version mismatch")
)

// Message is one decoded message.
type Message interface {
	Type() Type
	validate() error
}

// Hello opens a connection, from each side.
type Hello struct {
	ProtocolMajor uint32 `json:"protocol_major"`
	ProtocolMinor uint32 `json:"protocol_minor"`
	Software      string `json:"software"` // "rf-agent 1.2.3", "rfm 1.2.3"
	Kernel        string `json:"kernel,omitempty"`
	Hostname      string `json:"hostname,omitempty"`
	NProc         uint32 `json:"nproc,omitempty"` // online CPUs
}

// Heartbeat says the agent is alive.
type Heartbeat struct {
	Seq      uint64 `json:"seq"`
	UptimeMS uint64 `json:"uptime_ms"` // the agent's
}

// Stats is a report from the guest's /proc.
type Stats struct {
	Seq uint64 `json:"seq"`
	// IntervalMS is the time the CPU use was measured over; 0 means
	// since the guest booted (the first report).
	IntervalMS uint64   `json:"interval_ms"`
	All        CPUUse   `json:"all"`
	CPUs       []CPUUse `json:"cpus"`
	Memory     Memory   `json:"memory"`
	Load       Load     `json:"load"`
	PSI        *PSI     `json:"psi,omitempty"` // nil without /proc/pressure
	Processes  uint32   `json:"processes"`
	// Latency is the latest latency sample an application in the guest
	// pushed to the agent (protocol 1.2); nil when none has.
	Latency *LatencySample `json:"latency,omitempty"`
	// Shares are the virtio-fs shares mounted in the guest (protocol
	// 1.3), from /proc/mounts.
	Shares []ShareMount `json:"shares,omitempty"`
}

// ShareMount is a virtio-fs share mounted in the guest: its tag and its
// mount point.
type ShareMount struct {
	Tag string `json:"tag"`
	Dir string `json:"dir"`
}

// CheckShareMount says what is wrong with m ("" when nothing): a tag of
// 1 to MaxShareTag and a mount point of 1 to MaxMountDir bytes of
// printable ASCII without spaces, the mount point absolute.
func CheckShareMount(m ShareMount) string {
	printable := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] > '~' {
				return false
			}
		}
		return true
	}
	switch {
	case m.Tag == "" || len(m.Tag) > MaxShareTag || !printable(m.Tag):
		return fmt.Sprintf("tag of %d bytes: want 1 to %d of printable ASCII", len(m.Tag), MaxShareTag)
	case !strings.HasPrefix(m.Dir, "/") || len(m.Dir) > MaxMountDir || !printable(m.Dir):
		return fmt.Sprintf("mount point of %d bytes: want an absolute path of at most %d bytes of printable ASCII", len(m.Dir), MaxMountDir)
	}
	return ""
}

// LatencySample is an application's p99 latency, as it pushed it to the
// agent: Seq counts the samples the agent took (a report repeating the
// last one repeats its Seq), AgeMS is how long before the report it came.
type LatencySample struct {
	Seq   uint64 `json:"seq"`
	P99US uint64 `json:"p99_us"`
	AgeMS uint64 `json:"age_ms"`
}

// CPUUse is the share of one CPU's time (percent, 0..100) over the
// interval, from /proc/stat. User includes nice; System includes irq and
// softirq.
type CPUUse struct {
	CPU    uint32  `json:"cpu"`
	User   float64 `json:"user"`
	System float64 `json:"system"`
	IOWait float64 `json:"iowait"`
	Steal  float64 `json:"steal"`
	Idle   float64 `json:"idle"`
}

// Memory is from /proc/meminfo, in bytes.
type Memory struct {
	Total     uint64 `json:"total_bytes"`
	Free      uint64 `json:"free_bytes"`
	Available uint64 `json:"available_bytes"`
	Buffers   uint64 `json:"buffers_bytes"`
	Cached    uint64 `json:"cached_bytes"`
	SwapTotal uint64 `json:"swap_total_bytes"`
	SwapFree  uint64 `json:"swap_free_bytes"`
}

// Load is /proc/loadavg.
type Load struct {
	Load1    float64 `json:"load1"`
	Load5    float64 `json:"load5"`
	Load15   float64 `json:"load15"`
	Runnable uint32  `json:"runnable"`
	Tasks    uint32  `json:"tasks"`
}

// PSI is /proc/pressure; a resource the kernel does not report is nil.
type PSI struct {
	CPU    *Pressure `json:"cpu,omitempty"`
	Memory *Pressure `json:"memory,omitempty"`
	IO     *Pressure `json:"io,omitempty"`
}

// Pressure is one /proc/pressure file. Full is nil where absent.
type Pressure struct {
	Some PressureLine  `json:"some"`
	Full *PressureLine `json:"full,omitempty"`
}

// PressureLine is one line of a pressure file: averages in percent and
// the total stall time in microseconds.
type PressureLine struct {
	Avg10   float64 `json:"avg10"`
	Avg60   float64 `json:"avg60"`
	Avg300  float64 `json:"avg300"`
	TotalUS uint64  `json:"total_us"`
}

// Watch asks for heartbeats and stats at these intervals (stats_ms 0:
// no stats).
type Watch struct {
	HeartbeatMS uint32 `json:"heartbeat_ms"`
	StatsMS     uint32 `json:"stats_ms"`
}

// Exec asks the agent to run a command.
type Exec struct {
	Argv []string `json:"argv"`
	// Env entries are NAME=VALUE; they are added to the agent's PATH
	// and TERM (with a TTY).
	Env []string `json:"env"`
	Dir string   `json:"dir,omitempty"`
	// Stdin says the host sends stdin; without it the command reads
	// /dev/null.
	Stdin bool `json:"stdin"`
	// TTY runs the command on a pseudo-terminal of Rows x Cols; its
	// output all comes as stdout.
	TTY  bool   `json:"tty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// Data is a chunk of an exec stream: TypeStdout, TypeStderr or TypeStdin.
type Data struct {
	Stream Type
	Bytes  []byte
}

// StdinClose says no more stdin follows.
type StdinClose struct{}

// Resize changes a TTY's window size.
type Resize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Signal sends a signal (a Linux number) to the command's process group.
type Signal struct {
	Signal uint32 `json:"signal"`
}

// Exit ends an exec: the command's exit code, or the signal that killed
// it, or the error that kept it from starting (Code -1).
type Exit struct {
	Code   int32  `json:"code"`
	Signal uint32 `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// CPUs asks the agent to make exactly the guest's CPUs 0..Online-1 online
// and every higher one offline (CPU 0 is never offlined).
type CPUs struct {
	Online int `json:"online"`
}

// CPUsResult answers CPUs: the guest's online CPUs after the attempt,
// and, when a CPU refused to change (or the request could not be met),
// why.
type CPUsResult struct {
	Online []int  `json:"online"`
	Error  string `json:"error,omitempty"`
}

// Error is a refusal; its sender closes the connection.
type Error struct {
	Code    string `json:"code"` // ErrCode*
	Message string `json:"message"`
}

// Error codes.
const (
	ErrCodeVersion    = "version"     // another major version
	ErrCodeBusy       = "busy"        // too many commands running
	ErrCodeBadRequest = "bad_request" // an unexpected or invalid message
)

func (e *Error) Error() string {
	return fmt.Sprintf("agent refused: %s: %s", e.Code, e.Message)
}

func (*Hello) Type() Type      { return TypeHello }
func (*Heartbeat) Type() Type  { return TypeHeartbeat }
func (*Stats) Type() Type      { return TypeStats }
func (*Watch) Type() Type      { return TypeWatch }
func (*Exec) Type() Type       { return TypeExec }
func (d *Data) Type() Type     { return d.Stream }
func (*StdinClose) Type() Type { return TypeStdinClose }
func (*Resize) Type() Type     { return TypeResize }
func (*Signal) Type() Type     { return TypeSignal }
func (*Exit) Type() Type       { return TypeExit }
func (*Error) Type() Type      { return TypeError }
func (*CPUs) Type() Type       { return TypeCPUs }
func (*CPUsResult) Type() Type { return TypeCPUsResult }

// NewHello returns this side's Hello with the protocol version set.
func NewHello(software string) *Hello {
	return &Hello{ProtocolMajor: ProtocolMajor, ProtocolMinor: ProtocolMinor, Software: software}
}

// CheckVersion returns an error wrapping ErrVersion when the peer's hello
// has another major version.
func CheckVersion(peer *Hello) error {
	if peer.ProtocolMajor != ProtocolMajor {
		return fmt.Errorf("%w: the peer (%q) speaks protocol %d.%d, this side %d.%d; use an rf-agent and rfm from the same release",
			ErrVersion, peer.Software, peer.ProtocolMajor, peer.ProtocolMinor, ProtocolMajor, ProtocolMinor)
	}
	return nil
}

// Encode validates m and returns its frame.
func Encode(m Message) (Frame, error) {
	if err := m.validate(); err != nil {
		return Frame{}, err
	}
	switch m := m.(type) {
	case *Data:
		return Frame{Type: m.Stream, Body: m.Bytes}, nil
	case *StdinClose:
		return Frame{Type: TypeStdinClose}, nil
	}
	body, err := json.Marshal(m)
	if err != nil {
		return Frame{}, fmt.Errorf("agentproto: encoding %s: %w", m.Type(), err)
	}
	if len(body)+1 > MaxFrame {
		return Frame{}, fmt.Errorf("%w: %s of %d bytes", ErrFrameTooLarge, m.Type(), len(body))
	}
	return Frame{Type: m.Type(), Body: body}, nil
}

// Decode decodes and validates a frame's message. An error wraps
// ErrMalformed or ErrUnknownType.
func Decode(f Frame) (Message, error) {
	var m Message
	switch f.Type {
	case TypeStdout, TypeStderr, TypeStdin:
		m = &Data{Stream: f.Type, Bytes: f.Body}
	case TypeStdinClose:
		if len(f.Body) != 0 {
			return nil, fmt.Errorf("%w: stdin_close with a body", ErrMalformed)
		}
		return &StdinClose{}, nil
	case TypeHello:
		m = &Hello{}
	case TypeHeartbeat:
		m = &Heartbeat{}
	case TypeStats:
		m = &Stats{}
	case TypeWatch:
		m = &Watch{}
	case TypeExec:
		m = &Exec{}
	case TypeResize:
		m = &Resize{}
	case TypeSignal:
		m = &Signal{}
	case TypeExit:
		m = &Exit{}
	case TypeError:
		m = &Error{}
	case TypeCPUs:
		m = &CPUs{}
	case TypeCPUsResult:
		m = &CPUsResult{}
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnknownType, uint8(f.Type))
	}
	if _, raw := m.(*Data); !raw {
		if len(f.Body) == 0 || f.Body[0] != '{' {
			return nil, fmt.Errorf("%w: %s: the body is not a JSON object", ErrMalformed, f.Type)
		}
		if err := json.Unmarshal(f.Body, m); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, f.Type, err)
		}
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func malformed(t Type, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, t, fmt.Sprintf(format, args...))
}

// checkString bounds a string: at most max bytes of valid UTF-8 without
// NUL.
func checkString(t Type, field, s string, max int) error {
	if len(s) > max {
		return malformed(t, "%s is %d bytes (at most %d)", field, len(s), max)
	}
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return malformed(t, "%s is not valid text", field)
	}
	return nil
}

func checkRange(t Type, field string, v, lo, hi float64) error {
	if math.IsNaN(v) || v < lo || v > hi {
		return malformed(t, "%s %v out of range %v..%v", field, v, lo, hi)
	}
	return nil
}

func (h *Hello) validate() error {
	for _, f := range []struct{ name, v string }{{"software", h.Software}, {"kernel", h.Kernel}, {"hostname", h.Hostname}} {
		if err := checkString(TypeHello, f.name, f.v, MaxShortString); err != nil {
			return err
		}
	}
	if h.NProc > MaxCPUs {
		return malformed(TypeHello, "nproc %d (at most %d)", h.NProc, MaxCPUs)
	}
	return nil
}

func (*Heartbeat) validate() error { return nil }

func (s *Stats) validate() error {
	if len(s.CPUs) > MaxCPUs {
		return malformed(TypeStats, "%d CPUs (at most %d)", len(s.CPUs), MaxCPUs)
	}
	if err := s.All.check("all"); err != nil {
		return err
	}
	for i := range s.CPUs {
		c := &s.CPUs[i]
		if c.CPU >= MaxCPUID || (i > 0 && c.CPU <= s.CPUs[i-1].CPU) {
			return malformed(TypeStats, "cpu ids must increase and be under %d (cpus[%d] is %d)", MaxCPUID, i, c.CPU)
		}
		if err := c.check(fmt.Sprintf("cpus[%d]", i)); err != nil {
			return err
		}
	}
	l := s.Load
	for _, f := range []struct {
		name string
		v    float64
	}{{"load1", l.Load1}, {"load5", l.Load5}, {"load15", l.Load15}} {
		if err := checkRange(TypeStats, f.name, f.v, 0, MaxLoad); err != nil {
			return err
		}
	}
	if len(s.Shares) > MaxShareMounts {
		return malformed(TypeStats, "%d shares (at most %d)", len(s.Shares), MaxShareMounts)
	}
	for i, m := range s.Shares {
		if msg := CheckShareMount(m); msg != "" {
			return malformed(TypeStats, "shares[%d]: %s", i, msg)
		}
	}
	if l := s.Latency; l != nil {
		if l.P99US > MaxLatencyUS {
			return malformed(TypeStats, "latency.p99_us %d (at most %d)", l.P99US, MaxLatencyUS)
		}
		if l.AgeMS > MaxLatencyAgeMS {
			return malformed(TypeStats, "latency.age_ms %d (at most %d)", l.AgeMS, MaxLatencyAgeMS)
		}
	}
	if s.PSI != nil {
		for _, p := range []struct {
			name string
			p    *Pressure
		}{{"cpu", s.PSI.CPU}, {"memory", s.PSI.Memory}, {"io", s.PSI.IO}} {
			if p.p == nil {
				continue
			}
			if err := p.p.Some.check("psi." + p.name + ".some"); err != nil {
				return err
			}
			if p.p.Full != nil {
				if err := p.p.Full.check("psi." + p.name + ".full"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (c *CPUUse) check(name string) error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"user", c.User}, {"system", c.System}, {"iowait", c.IOWait}, {"steal", c.Steal}, {"idle", c.Idle}} {
		if err := checkRange(TypeStats, name+"."+f.name, f.v, 0, 100); err != nil {
			return err
		}
	}
	return nil
}

func (p *PressureLine) check(name string) error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"avg10", p.Avg10}, {"avg60", p.Avg60}, {"avg300", p.Avg300}} {
		if err := checkRange(TypeStats, name+"."+f.name, f.v, 0, 100); err != nil {
			return err
		}
	}
	return nil
}

func (w *Watch) validate() error {
	if w.HeartbeatMS < MinIntervalMS || w.HeartbeatMS > MaxIntervalMS {
		return malformed(TypeWatch, "heartbeat_ms %d out of range %d..%d", w.HeartbeatMS, MinIntervalMS, MaxIntervalMS)
	}
	if w.StatsMS != 0 && (w.StatsMS < MinIntervalMS || w.StatsMS > MaxIntervalMS) {
		return malformed(TypeWatch, "stats_ms %d out of range %d..%d (or 0)", w.StatsMS, MinIntervalMS, MaxIntervalMS)
	}
	return nil
}

func (e *Exec) validate() error {
	if len(e.Argv) == 0 || e.Argv[0] == "" {
		return malformed(TypeExec, "no command")
	}
	if len(e.Argv) > MaxArgs || len(e.Env) > MaxArgs {
		return malformed(TypeExec, "%d arguments and %d environment entries (at most %d each)", len(e.Argv), len(e.Env), MaxArgs)
	}
	for i, a := range e.Argv {
		if err := checkString(TypeExec, fmt.Sprintf("argv[%d]", i), a, MaxArg); err != nil {
			return err
		}
	}
	for i, v := range e.Env {
		if err := checkString(TypeExec, fmt.Sprintf("env[%d]", i), v, MaxArg); err != nil {
			return err
		}
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return malformed(TypeExec, "env[%d] is not NAME=VALUE", i)
		}
	}
	return checkString(TypeExec, "dir", e.Dir, MaxText)
}

func (d *Data) validate() error {
	switch d.Stream {
	case TypeStdout, TypeStderr, TypeStdin:
	default:
		return malformed(d.Stream, "not a data stream")
	}
	if len(d.Bytes) > MaxChunk {
		return malformed(d.Stream, "chunk of %d bytes (at most %d)", len(d.Bytes), MaxChunk)
	}
	return nil
}

func (*StdinClose) validate() error { return nil }
func (*Resize) validate() error     { return nil }

func (s *Signal) validate() error {
	if s.Signal == 0 || s.Signal > MaxSignal {
		return malformed(TypeSignal, "signal %d out of range 1..%d", s.Signal, MaxSignal)
	}
	return nil
}

func (e *Exit) validate() error {
	if e.Code < -1 || e.Code > 255 {
		return malformed(TypeExit, "code %d out of range -1..255", e.Code)
	}
	if e.Signal > MaxSignal {
		return malformed(TypeExit, "signal %d out of range 0..%d", e.Signal, MaxSignal)
	}
	return checkString(TypeExit, "error", e.Error, MaxText)
}

func (e *Error) validate() error {
	if e.Code == "" {
		return malformed(TypeError, "no code")
	}
	if err := checkString(TypeError, "code", e.Code, MaxShortString); err != nil {
		return err
	}
	return checkString(TypeError, "message", e.Message, MaxText)
}

func (c *CPUs) validate() error {
	if c.Online < 1 || c.Online > MaxCPUs {
		return malformed(TypeCPUs, "online %d out of range 1..%d", c.Online, MaxCPUs)
	}
	return nil
}

func (r *CPUsResult) validate() error {
	if len(r.Online) > MaxCPUs {
		return malformed(TypeCPUsResult, "%d CPUs (at most %d)", len(r.Online), MaxCPUs)
	}
	for i, c := range r.Online {
		if c < 0 || c >= MaxCPUID || (i > 0 && c <= r.Online[i-1]) {
			return malformed(TypeCPUsResult, "cpu ids must increase and be 0..%d (online[%d] is %d)", MaxCPUID-1, i, c)
		}
	}
	return checkString(TypeCPUsResult, "error", r.Error, MaxText)
}
