package tool

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseIperf3(t *testing.T) {
	s, err := ParseIperf3(read(t, "iperf3-client.json"))
	if err != nil {
		t.Fatal(err)
	}
	if s.BitsPerSecond < 1.9e10 || s.BitsPerSecond > 2e10 || s.Retransmits != 2 || s.Seconds < 1 {
		t.Errorf("got %+v", s)
	}
}

func TestParseIperf3Errors(t *testing.T) {
	_, err := ParseIperf3(read(t, "iperf3-refused.json"))
	if !errors.Is(err, ErrReport) || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("refused: %v", err)
	}
	for _, in := range []string{"", "not json", `{"end":{}}`, `{"end":{"sum_received":{"bits_per_second":0}}}`,
		`{"error":"` + strings.Repeat("\x1b", 300) + `"}`} {
		_, err := ParseIperf3([]byte(in))
		if !errors.Is(err, ErrReport) {
			t.Errorf("%q: %v", in, err)
		}
		if strings.Contains(err.Error(), "\x1b") || len(err.Error()) > 2000 {
			t.Errorf("%q: unbounded or unescaped error %q", in, err)
		}
	}
	if _, err := ParseIperf3(make([]byte, MaxOutput+1)); !errors.Is(err, ErrReport) {
		t.Errorf("oversized: %v", err)
	}
}

func TestParseSockperf(t *testing.T) {
	r, err := ParseSockperf(read(t, "sockperf-pingpong.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := RR{Observations: 185463, AvgUS: 8.3, P50US: 7.704, P99US: 18.19, MaxUS: 5070.144}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
}

func TestParseSockperfErrors(t *testing.T) {
	half := strings.Replace(string(read(t, "sockperf-pingpong.txt")), "avg-rtt=", "avg-latency=", 1)
	for _, in := range []string{"", "sockperf: ERROR: connect failed\x1b]0;x\a", half} {
		_, err := ParseSockperf([]byte(in))
		if !errors.Is(err, ErrReport) {
			t.Errorf("%q: %v", in, err)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\x1b\a") {
			t.Errorf("unescaped error %q", err)
		}
	}
}

func TestCommands(t *testing.T) {
	if got := StreamCommand("10.0.0.2", 5); !slices.Equal(got, []string{"iperf3", "-c", "10.0.0.2", "-p", "5201", "-t", "5", "-J"}) {
		t.Errorf("stream %q", got)
	}
	rr := strings.Join(RRCommand("10.0.0.2", 3), " ")
	if !strings.Contains(rr, "ping-pong --tcp -i 10.0.0.2 -p 11111 -t 3 --full-rtt") {
		t.Errorf("rr %q", rr)
	}
	if s := strings.Join(ServerCommand(), " "); !strings.Contains(s, "iperf3 -s -D -p 5201") || !strings.Contains(s, "sockperf server --tcp") {
		t.Errorf("server %q", s)
	}
}
