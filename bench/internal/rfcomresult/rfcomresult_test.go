package rfcomresult

import "testing"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		line string
		want Result
		ok   bool
	}{
		{"RF-RESULT rfm bench: peer 1 mode irq 64-byte round trip median 26.058252ms p99 60.716598ms, one-way ~13.029126ms (200 round trips)",
			Result{Mode: "irq", RTT: true, RTTMedian: 26058252, RTTP99: 60716598, OneWay: 13029126}, true},
		{"bench: peer 1 mode poll throughput 200 of 200 messages received in 109ms: 1822.5 msgs/s at the receiver (sent in 155ms)",
			Result{Mode: "poll", MsgsPerS: 1822.5}, true},
		{"noise bench: peer 1 mode poll 64-byte round trip median 1.5µs p99 3µs, one-way ~750ns (2 round trips)",
			Result{Mode: "poll", RTT: true, RTTMedian: 1500, RTTP99: 3000, OneWay: 750}, true},
		{"bench: peer 1 mode poll 64-byte round trip median 1.5x p99 3µs, one-way ~750ns (2 round trips)", Result{}, false},
		{"rfcom: bench: no peer", Result{}, false},
		{"", Result{}, false},
	} {
		got, ok := Parse(c.line)
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("Parse(%q) = %+v, %t; want %+v, %t", c.line, got, ok, c.want, c.ok)
		}
	}
}

func TestCommands(t *testing.T) {
	if got, want := ServeCommand("", "irq", "poll"), "rfcom bench --serve --mode irq --timeout 900s; rfcom bench --serve --mode poll --timeout 900s"; got != want {
		t.Errorf("ServeCommand: %q, want %q", got, want)
	}
	if got, want := ServeCommand(" --ivshmem", "poll"), "rfcom bench --serve --ivshmem --mode poll --timeout 900s"; got != want {
		t.Errorf("ServeCommand ivshmem: %q, want %q", got, want)
	}
	want := "i=0; until rfcom bench --to a --n 5 --mode poll; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 1; done"
	if got := ClientCommand("--to a", 5, "poll"); got != want {
		t.Errorf("ClientCommand: %q, want %q", got, want)
	}
}
