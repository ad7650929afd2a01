package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"rainforest/bench/internal/benchkit"
)

func TestParseResults(t *testing.T) {
	out := "noise\r\n" +
		"RF-RESULT rfm bench: peer 1 mode irq 64-byte round trip median 26.058252ms p99 60.716598ms, one-way ~13.029126ms (200 round trips)\n" +
		"RF-RESULT rfm bench: peer 1 mode irq throughput 200 of 200 messages received in 109.20757ms: 1822 msgs/s at the receiver (sent in 155.874224ms)\n" +
		"RF-RESULT rfm bench: peer 1 mode poll 64-byte round trip median 1.5µs p99 3µs, one-way ~750ns (200 round trips)\n" +
		"RF-RESULT qemu bench: peer 0 mode irq 64-byte round trip median 40ms p99 80ms, one-way ~20ms (200 round trips)\n" +
		"RF-FAILED qemu poll rfcom: bench: no MSI-X here\n"
	var log strings.Builder
	res := &results{log: &log}
	for _, l := range strings.Split(out, "\n") {
		res.line(strings.TrimSuffix(l, "\r"))
	}
	rows := res.rows()
	get := func(sys, mode string) Row {
		for _, r := range rows {
			if r.System == sys && r.Mode == mode {
				return r
			}
		}
		t.Fatalf("no row %s %s in %+v", sys, mode, rows)
		return Row{}
	}
	if r := get("rfm", "irq"); r.RTTMedian != 26058252 || r.RTTP99 != 60716598 || r.OneWay != 13029126 || r.MsgsPerS != 1822 || r.Error != "" {
		t.Errorf("rfm irq %+v", r)
	}
	if r := get("rfm", "poll"); r.RTTMedian != 1500 || r.MsgsPerS != 0 {
		t.Errorf("rfm poll %+v", r)
	}
	if r := get("qemu", "poll"); r.Error != "bench: no MSI-X here" {
		t.Errorf("failed qemu poll row: %+v", r)
	}
	for _, want := range []string{"rfcom bench: rfm irq: 64-byte round trip median 26.1ms, p99 60.7ms\n", "rfcom bench: rfm irq: 1822 msgs/s\n",
		"rfcom bench: qemu poll failed: bench: no MSI-X here\n"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, log.String())
		}
	}
	var b strings.Builder
	if err := writeTable(&b, &Report{N: 200, Setting: "test", Rows: rows}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "0.65x") || !strings.Contains(b.String(), "no MSI-X here") {
		t.Errorf("table lacks the rfm/qemu irq ratio:\n%s", b.String())
	}
}

// The script runs the same tool in both pairs, with the pinning and the
// ivshmem server wiring.
func TestScript(t *testing.T) {
	s := script(options{n: 500, qemuCPU: "host"})
	for _, want := range []string{"--to a --n 500 --mode irq", "--ivshmem --peers 16 --peer 0 --n 500 --mode poll", "ivshmem-doorbell,chardev=ivsh",
		`"$RFM" create a --cores 1`, "taskset -c $core", "RF-RESULT qemu"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q", want)
		}
	}
}

// TestResultsOfASessionThatDied streams the rfm pair's results and ends
// there, as when L1 goes silent during the QEMU pair: the rfm rows are
// kept, the QEMU rows say they got nothing, and the report is partial.
func TestResultsOfASessionThatDied(t *testing.T) {
	res := &results{log: io.Discard}
	if res.any() {
		t.Fatal("results before any line")
	}
	res.line("RF-BENCH-INFO kernel=6.1.0-test cpus=3")
	res.line("RF-RESULT rfm bench: peer 1 mode irq 64-byte round trip median 26ms p99 60ms, one-way ~13ms (200 round trips)")
	if !res.any() {
		t.Fatal("no result after the first result line")
	}
	rep := &Report{N: 200, Setting: "test", Rows: res.rows()}
	rep.MarkPartial(errors.New("kvmhost: nested: L1 guest silent for 1m0s"))
	if rep.Rows[0].RTTMedian != 26e6 || rep.Rows[0].Error != "" || rep.Rows[2].Error != "no result (see the log)" {
		t.Errorf("rows %+v", rep.Rows)
	}
	var b strings.Builder
	if err := benchkit.WriteReport(&b, rep, writeTable, ""); err != nil || !strings.HasPrefix(b.String(), "PARTIAL: the session ended early (kvmhost: nested: L1 guest silent for 1m0s)") {
		t.Errorf("table (%v):\n%s", err, b.String())
	}
}
