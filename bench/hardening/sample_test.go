package main

import (
	"errors"
	"strings"
	"testing"

	"rainforest/bench/lifecycle/sample"
)

func TestParseLine(t *testing.T) {
	boot := sample.FormatLine(sample.Sample{System: "rfm", Run: 1, CreateReturn: 2500000, CreateInit: 1500000000})
	for _, c := range []struct {
		name, line string
		want       Sample
	}{
		{"boot", "noise RF-HARDENING config=hardened rep=1 metric=boot | " + boot,
			Sample{Config: cfgHardened, Rep: 1, Metric: metricBoot, Values: map[string]float64{"create_init_ms": 1500, "create_return_ms": 2.5}}},
		{"failed boot", "RF-HARDENING config=plain rep=2 metric=boot | " + sample.FormatLine(sample.Sample{System: "rfm", Run: 1, Error: "marker not seen"}),
			Sample{Config: cfgPlain, Rep: 2, Metric: metricBoot, Error: "marker not seen"}},
		{"disk", "RF-HARDENING config=plain rep=3 metric=disk | RF-DISK direct=1 size_bytes=67108864 seconds=3 seq_read_mbps=812.5 rand_read_iops=9000 " +
			"rand_read_p50_us=100.5 rand_read_p99_us=300 seq_write_mbps=400 rand_write_iops=5000 rand_write_p50_us=150 rand_write_p99_us=900.1 extra=7\r",
			Sample{Config: cfgPlain, Rep: 3, Metric: metricDisk, Values: map[string]float64{"direct": 1, "seq_read_mbps": 812.5, "rand_read_iops": 9000,
				"rand_read_p50_us": 100.5, "rand_read_p99_us": 300, "seq_write_mbps": 400, "rand_write_iops": 5000, "rand_write_p50_us": 150, "rand_write_p99_us": 900.1}}},
		{"ficm rtt", "RF-HARDENING config=hardened rep=1 metric=ficm | bench: peer 1 mode poll 64-byte round trip median 1.5µs p99 3ms, one-way ~750ns (500 round trips)",
			Sample{Config: cfgHardened, Rep: 1, Metric: metricFICM, Values: map[string]float64{"poll_rtt_median_us": 1.5, "poll_rtt_p99_us": 3000}}},
		{"ficm throughput", "RF-HARDENING config=hardened rep=1 metric=ficm | bench: peer 1 mode irq throughput 500 of 500 messages received in 1s: 500 msgs/s at the receiver (sent in 1s)",
			Sample{Config: cfgHardened, Rep: 1, Metric: metricFICM, Values: map[string]float64{"irq_msgs_per_s": 500}}},
		{"script failure", "RF-HARDENING config=plain rep=1 metric=disk | RF-FAILED no 'RF-DISK ' line in the log of subOS disk-p1",
			Sample{Config: cfgPlain, Rep: 1, Metric: metricDisk, Error: "no 'RF-DISK ' line in the log of subOS disk-p1"}},
	} {
		got, ok, err := parseLine(c.line)
		if !ok || err != nil || got.Config != c.want.Config || got.Rep != c.want.Rep || got.Metric != c.want.Metric || got.Error != c.want.Error ||
			len(got.Values) != len(c.want.Values) {
			t.Errorf("%s: %+v, %t, %v; want %+v", c.name, got, ok, err, c.want)
			continue
		}
		for k, v := range c.want.Values {
			if got.Values[k] != v {
				t.Errorf("%s: %s = %v, want %v", c.name, k, got.Values[k], v)
			}
		}
	}
}

func TestParseLineRefuses(t *testing.T) {
	if _, ok, err := parseLine("RF-DISK direct=1 seq_read_mbps=1"); ok || err != nil {
		t.Errorf("a guest's own line is no result: %t %v", ok, err)
	}
	for _, line := range []string{
		"RF-HARDENING config=hardened rep=1 metric=disk",
		"RF-HARDENING config=other rep=1 metric=disk | RF-DISK seq_read_mbps=1",
		"RF-HARDENING config=plain rep=0 metric=disk | RF-DISK seq_read_mbps=1",
		"RF-HARDENING config=plain rep=x metric=disk | RF-DISK seq_read_mbps=1",
		"RF-HARDENING config=plain metric=disk | RF-DISK seq_read_mbps=1",
		"RF-HARDENING config=plain rep=1 metric=net | RF-DISK seq_read_mbps=1",
		"RF-HARDENING config=plain rep=1 metric=disk | RF-DISK seq_read_mbps=-1",
		"RF-HARDENING config=plain rep=1 metric=disk | RF-DISK rand_read_iops=1",
		"RF-HARDENING config=plain rep=1 metric=disk | no disk line",
		"RF-HARDENING config=plain rep=1 metric=boot | bench: peer 1",
		"RF-HARDENING config=plain rep=1 metric=ficm | bench: peer 1 mode spin throughput 1 of 1 messages received in 1s: 1 msgs/s at the receiver",
		"RF-HARDENING config=\"plain rep=1 metric=ficm | x",
	} {
		if _, ok, err := parseLine(line); !ok || !errors.Is(err, errBadLine) {
			t.Errorf("%q: %t, %v", line, ok, err)
		}
	}
}

// A guest's text in an error is bounded and escaped.
func TestParseLineBoundsErrors(t *testing.T) {
	s, ok, err := parseLine("RF-HARDENING config=plain rep=1 metric=ficm | RF-FAILED \x1b[2J" + strings.Repeat("x", 3*maxError))
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	if strings.ContainsRune(s.Error, 0x1b) || !strings.HasPrefix(s.Error, `\x1b[2J`) || len(s.Error) > maxError+16 {
		t.Errorf("error %q...", s.Error[:40])
	}
}
