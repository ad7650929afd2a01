package main

import (
	"strings"
	"testing"
)

func TestParseResults(t *testing.T) {
	out := "noise\r\n" +
		"RF-RESULT rfm bench: peer 1 mode irq 64-byte round trip median 26.058252ms p99 60.716598ms, one-way ~13.029126ms (200 round trips)\n" +
		"RF-RESULT rfm bench: peer 1 mode irq throughput 200 of 200 messages received in 109.20757ms: 1822 msgs/s at the receiver (sent in 155.874224ms)\n" +
		"RF-RESULT rfm bench: peer 1 mode poll 64-byte round trip median 1.5µs p99 3µs, one-way ~750ns (200 round trips)\n" +
		"RF-RESULT qemu bench: peer 0 mode irq 64-byte round trip median 40ms p99 80ms, one-way ~20ms (200 round trips)\n" +
		"RF-FAILED qemu poll rfcom: bench: no MSI-X here\n"
	rows := parseResults(out)
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
