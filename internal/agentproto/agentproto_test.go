package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func sampleMessages() []Message {
	full := &PressureLine{Avg10: 0.5, Avg60: 1, Avg300: 2.25, TotalUS: 12345}
	return []Message{
		&Hello{ProtocolMajor: 1, ProtocolMinor: 3, Software: "rf-agent 1.0", Kernel: "6.1.0-28-cloud-amd64", Hostname: "web", NProc: 4},
		&Heartbeat{Seq: 7, UptimeMS: 123456},
		&Stats{
			Seq: 2, IntervalMS: 10000,
			All:    CPUUse{User: 12.5, System: 3, IOWait: 0.5, Idle: 84},
			CPUs:   []CPUUse{{CPU: 0, User: 25, Idle: 75}, {CPU: 1, System: 1, Steal: 2, Idle: 97}},
			Memory: Memory{Total: 1 << 30, Free: 1 << 29, Available: 3 << 28, Buffers: 4096, Cached: 1 << 20, SwapTotal: 0, SwapFree: 0},
			Load:   Load{Load1: 0.25, Load5: 1.5, Load15: 0, Runnable: 2, Tasks: 87},
			PSI: &PSI{CPU: &Pressure{Some: PressureLine{Avg10: 1.5}, Full: full},
				IO: &Pressure{Some: PressureLine{TotalUS: 99}}},
			Processes: 42,
		},
		&Stats{Seq: 3, Latency: &LatencySample{Seq: 9, P99US: 12500, AgeMS: 1500}},
		&Watch{HeartbeatMS: 1000, StatsMS: 0},
		&Exec{Argv: []string{"sh", "-c", "echo hi"}, Env: []string{"A=b=c"}, Dir: "/tmp", Stdin: true, TTY: true, Rows: 24, Cols: 80},
		&Data{Stream: TypeStdout, Bytes: []byte("out\x00\xff")},
		&Data{Stream: TypeStderr, Bytes: []byte{}},
		&Data{Stream: TypeStdin, Bytes: []byte("in")},
		&StdinClose{},
		&Resize{Rows: 50, Cols: 132},
		&Signal{Signal: 15},
		&Exit{Code: 3},
		&Exit{Code: -1, Signal: 9, Error: "killed"},
		&Error{Code: ErrCodeBusy, Message: "16 commands are running"},
		&CPUs{Online: 3},
		&CPUsResult{Online: []int{0, 1, 2}},
		&CPUsResult{Online: []int{0, 1}, Error: "cpu2: device or resource busy"},
	}
}

// Every message survives a trip through a stream.
func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	msgs := sampleMessages()
	for _, m := range msgs {
		if err := c.Send(m); err != nil {
			t.Fatalf("Send(%T): %v", m, err)
		}
	}
	for _, want := range msgs {
		got, err := c.Recv()
		if err != nil {
			t.Fatalf("Recv (want %T): %v", want, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %#v, want %#v", got, want)
		}
	}
	if _, err := c.Recv(); err != io.EOF {
		t.Errorf("Recv at the end = %v, want io.EOF", err)
	}
}

func frameHeader(n uint32, typ Type) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	return append(b, byte(typ))
}

// A frame over MaxFrame is refused before its body is read; zero too.
func TestReadFrameBounds(t *testing.T) {
	for _, n := range []uint32{0, MaxFrame + 1, 1<<32 - 1} {
		_, err := ReadFrame(bytes.NewReader(frameHeader(n, TypeHello)))
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("length %d: %v, want ErrFrameTooLarge", n, err)
		}
	}
	// Exactly MaxFrame is fine.
	body := make([]byte, MaxFrame-1)
	f, err := ReadFrame(io.MultiReader(bytes.NewReader(frameHeader(MaxFrame, TypeStdout)), bytes.NewReader(body)))
	if err != nil || len(f.Body) != MaxFrame-1 {
		t.Errorf("MaxFrame: %v, %d bytes", err, len(f.Body))
	}
	// Truncated.
	if _, err := ReadFrame(bytes.NewReader(frameHeader(10, TypeHello))); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0})); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated length: %v, want io.ErrUnexpectedEOF", err)
	}
	if err := WriteFrame(io.Discard, Frame{Type: TypeStdout, Body: make([]byte, MaxFrame)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("writing a frame over MaxFrame: %v", err)
	}
}

// Out-of-bounds fields are refused with ErrMalformed.
func TestDecodeBounds(t *testing.T) {
	long := strings.Repeat("x", MaxShortString+1)
	manyCPUs := `{"cpus":[` + strings.TrimSuffix(strings.Repeat(`{"cpu":0},`, MaxCPUs+1), ",") + `]}`
	for name, f := range map[string]Frame{
		"not json":           {TypeHello, []byte("hello")},
		"json array":         {TypeHello, []byte("[]")},
		"trailing":           {TypeHello, []byte(`{} {}`)},
		"empty body":         {TypeExit, nil},
		"long hostname":      {TypeHello, []byte(`{"hostname":"` + long + `"}`)},
		"nul in kernel":      {TypeHello, []byte(`{"kernel":"a\u0000b"}`)},
		"nproc":              {TypeHello, []byte(`{"nproc":5000}`)},
		"negative nproc":     {TypeHello, []byte(`{"nproc":-1}`)},
		"too many cpus":      {TypeStats, []byte(manyCPUs)},
		"cpu ids repeat":     {TypeStats, []byte(`{"cpus":[{"cpu":1},{"cpu":1}]}`)},
		"cpu id huge":        {TypeStats, []byte(`{"cpus":[{"cpu":70000}]}`)},
		"percent over 100":   {TypeStats, []byte(`{"cpus":[{"cpu":0,"idle":100.5}]}`)},
		"negative percent":   {TypeStats, []byte(`{"all":{"user":-1}}`)},
		"load":               {TypeStats, []byte(`{"load":{"load1":1e300}}`)},
		"psi":                {TypeStats, []byte(`{"psi":{"io":{"some":{"avg10":101}}}}`)},
		"psi full":           {TypeStats, []byte(`{"psi":{"cpu":{"full":{"avg300":-3}}}}`)},
		"huge number":        {TypeStats, []byte(`{"processes":1e40}`)},
		"heartbeat interval": {TypeWatch, []byte(`{"heartbeat_ms":1}`)},
		"stats interval":     {TypeWatch, []byte(`{"heartbeat_ms":1000,"stats_ms":99999999}`)},
		"no argv":            {TypeExec, []byte(`{"argv":[]}`)},
		"empty argv0":        {TypeExec, []byte(`{"argv":[""]}`)},
		"env without =":      {TypeExec, []byte(`{"argv":["x"],"env":["PATH"]}`)},
		"too many args":      {TypeExec, []byte(`{"argv":[` + strings.TrimSuffix(strings.Repeat(`"a",`, MaxArgs+1), ",") + `]}`)},
		"big chunk":          {TypeStdout, make([]byte, MaxChunk+1)},
		"stdin_close body":   {TypeStdinClose, []byte("x")},
		"signal 0":           {TypeSignal, []byte(`{"signal":0}`)},
		"signal 65":          {TypeSignal, []byte(`{"signal":65}`)},
		"exit code":          {TypeExit, []byte(`{"code":256}`)},
		"error without code": {TypeError, []byte(`{"message":"x"}`)},
		"wrong field type":   {TypeHeartbeat, []byte(`{"seq":"7"}`)},
		"no cpus online":     {TypeCPUs, []byte(`{"online":0}`)},
		"negative online":    {TypeCPUs, []byte(`{"online":-1}`)},
		"online too many":    {TypeCPUs, []byte(`{"online":4097}`)},
		"online huge":        {TypeCPUs, []byte(`{"online":1e40}`)},
		"result unsorted":    {TypeCPUsResult, []byte(`{"online":[0,2,1]}`)},
		"result repeats":     {TypeCPUsResult, []byte(`{"online":[0,0]}`)},
		"result negative":    {TypeCPUsResult, []byte(`{"online":[-1]}`)},
		"result huge cpu":    {TypeCPUsResult, []byte(`{"online":[70000]}`)},
		"result too long":    {TypeCPUsResult, []byte(`{"online":[` + manyIDs(MaxCPUs+1) + `]}`)},
		"result long error":  {TypeCPUsResult, []byte(`{"online":[0],"error":"` + strings.Repeat("x", MaxText+1) + `"}`)},
	} {
		if m, err := Decode(f); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode = %#v, %v; want ErrMalformed", name, m, err)
		}
	}
}

// manyIDs is the CPU list 0..n-1 as JSON numbers.
func manyIDs(n int) string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return strings.Join(ids, ",")
}

// Unknown types and fields are a newer minor version's: the type is
// reported (the stream stays in step), the fields ignored.
func TestForwardCompatibility(t *testing.T) {
	var buf bytes.Buffer
	WriteFrame(&buf, Frame{Type: 200, Body: []byte("future")})
	WriteFrame(&buf, Frame{Type: TypeHeartbeat, Body: []byte(`{"seq":1,"new_field":[1,2]}`)})
	c := NewConn(&buf)
	if _, err := c.Recv(); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("unknown type: %v", err)
	}
	m, err := c.Recv()
	if err != nil || m.(*Heartbeat).Seq != 1 {
		t.Fatalf("after the unknown type: %#v, %v", m, err)
	}
}

func TestCheckVersion(t *testing.T) {
	if err := CheckVersion(NewHello("x")); err != nil {
		t.Errorf("same version: %v", err)
	}
	minor := NewHello("x")
	minor.ProtocolMinor += 5
	if err := CheckVersion(minor); err != nil {
		t.Errorf("another minor: %v", err)
	}
	major := &Hello{ProtocolMajor: ProtocolMajor + 1, Software: "rf-agent 9"}
	err := CheckVersion(major)
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "protocol 2.0") || !strings.Contains(err.Error(), "same release") {
		t.Errorf("another major: %v", err)
	}
}

// Encode refuses what Decode would.
func TestEncodeValidates(t *testing.T) {
	for _, m := range []Message{&Exec{}, &Watch{}, &Signal{}, &CPUs{}, &CPUsResult{Online: []int{1, 0}}, &Data{Stream: TypeExit}, &Data{Stream: TypeStdout, Bytes: make([]byte, MaxChunk+1)}} {
		if _, err := Encode(m); !errors.Is(err, ErrMalformed) {
			t.Errorf("Encode(%#v) = %v, want ErrMalformed", m, err)
		}
	}
}

func TestHostHandshake(t *testing.T) {
	agentHello := &Hello{ProtocolMajor: ProtocolMajor, ProtocolMinor: ProtocolMinor + 1, Software: "rf-agent 2", NProc: 2}
	for name, tc := range map[string]struct {
		agent   []Frame
		wantErr error
		answers bool
	}{
		"ok":            {agent: []Frame{{Type: 99, Body: []byte("future")}, mustEncode(t, agentHello)}, answers: true},
		"other major":   {agent: []Frame{mustEncode(t, &Hello{ProtocolMajor: 2, Software: "rf-agent 9"})}, wantErr: ErrVersion},
		"not hello":     {agent: []Frame{mustEncode(t, &Heartbeat{Seq: 1})}, wantErr: ErrMalformed},
		"refused":       {agent: []Frame{mustEncode(t, &Error{Code: ErrCodeBusy, Message: "x"})}},
		"closed before": {wantErr: io.EOF},
	} {
		var in bytes.Buffer
		for _, f := range tc.agent {
			WriteFrame(&in, f)
		}
		var out bytes.Buffer
		h, err := HostHandshake(NewConn(struct {
			io.Reader
			io.Writer
		}{&in, &out}), "rfm test")
		switch {
		case name == "refused":
			var e *Error
			if !errors.As(err, &e) || e.Code != ErrCodeBusy {
				t.Errorf("%s: %v, want the agent's error", name, err)
			}
		case tc.wantErr != nil:
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("%s: %v, want %v", name, err, tc.wantErr)
			}
		case err != nil || !reflect.DeepEqual(h, agentHello):
			t.Errorf("%s: %+v, %v", name, h, err)
		}
		if answered := out.Len() > 0; answered != tc.answers {
			t.Errorf("%s: the host answered: %v, want %v", name, answered, tc.answers)
		}
	}
}

func mustEncode(t *testing.T, m Message) Frame {
	t.Helper()
	f, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
