package sample

import (
	"errors"
	"testing"

	"rainforest/bench/internal/benchkit"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []Sample{
		{Row: "rftun", Test: Stream, Run: 2, Gbps: 12.5, Retransmits: 3},
		{Row: "host", Test: RR, Run: 1, P50US: 7.7, P99US: 18.19, AvgUS: 8.3},
		{Row: "rfloop", Test: RR, Run: 3, Error: "sockperf: no 50th \"percentile\""},
	} {
		line := FormatLine(s)
		got, ok, err := ParseLine("console noise " + line + "\r")
		if !ok || err != nil || got != s {
			t.Errorf("%q: got %+v %v %v, want %+v", line, got, ok, err, s)
		}
		if _, ok, _ := ParseInfo(line); ok {
			t.Errorf("%q parsed as an info line", line)
		}
	}
}

func TestParseLineErrors(t *testing.T) {
	for _, l := range []string{"RF-NET row=a test=rr", "RF-NET row=a test=x run=1", "RF-NET row=a test=rr run=1 gbps=-1",
		"RF-NET row=a test=rr run=1 p50_us=NaN", "RF-NET row=a test=rr run=x", "RF-NET =x"} {
		if _, ok, err := ParseLine(l); !ok || !errors.Is(err, ErrBadLine) {
			t.Errorf("%q: ok %v err %v", l, ok, err)
		}
	}
	if _, ok, err := ParseLine("RF-NETWORK row=a"); ok || err != nil {
		t.Errorf("other prefix: ok %v err %v", ok, err)
	}
}

func TestInfo(t *testing.T) {
	line := FormatInfo("rftun", benchkit.Field{Key: "vhost", Value: "on"}, benchkit.Field{Key: "skipped", Value: "no loop net"})
	in, ok, err := ParseInfo(line)
	if !ok || err != nil || in.Row != "rftun" || len(in.Fields) != 2 || in.Fields[1].Value != "no loop net" {
		t.Errorf("%q: %+v %v %v", line, in, ok, err)
	}
	if _, ok, _ := ParseLine(line); ok {
		t.Error("info line parsed as a result")
	}
}
