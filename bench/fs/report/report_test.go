package report

import (
	"errors"
	"math"
	"strings"
	"testing"

	"rainforest/bench/fs/fio"
)

func TestLineRoundTrip(t *testing.T) {
	in := []Sample{
		{System: RFfuse, Workload: fio.SeqRead, Run: 2, BytesPerSec: 123456789.5, IOPS: 117.75, Ops: 600, RuntimeMs: 5001, ClatP99Us: 9000.5, ClatMeanUs: 800.25},
		{System: QEMU9p, Workload: fio.Create, Run: 1, Error: "mount -t 9p: \"no such device\"\nsecond line"},
	}
	for _, s := range in {
		got, ok, err := ParseLine("console noise " + FormatLine(s) + "\r")
		if !ok || err != nil || got != s {
			t.Errorf("round trip of %+v: %+v %v %v", s, got, ok, err)
		}
	}
	if _, ok, err := ParseLine("RF-FSX system=a"); ok || err != nil {
		t.Errorf("another prefix: %v %v", ok, err)
	}
	for _, bad := range []string{
		"RF-FS system=a workload=b run=0",
		"RF-FS system=a run=1",
		"RF-FS system=a workload=b run=1 iops=fast",
		"RF-FS system=" + strings.Repeat("a", 100) + " workload=b run=1",
	} {
		if _, ok, err := ParseLine(bad); !ok || !errors.Is(err, ErrBadLine) {
			t.Errorf("%.60q: %v %v", bad, ok, err)
		}
	}
}

// samples: RFfuse and three baselines on seqread (MiB/s) and create
// (files/s), with one failed run.
func samples() []Sample {
	mib := float64(1 << 20)
	var out []Sample
	add := func(sys, wl string, vals ...float64) {
		for i, v := range vals {
			s := Sample{System: sys, Workload: wl, Run: i + 1, IOPS: v, BytesPerSec: v * mib}
			out = append(out, s)
		}
	}
	add(Host, fio.SeqRead, 400, 400, 400)
	add(RFfuse, fio.SeqRead, 100, 120, 110)
	add(QEMUVirtiofsd, fio.SeqRead, 50, 55, 60)
	add(RFfuse, fio.Create, 1000, 1000, 1000)
	add(QEMU9p, fio.Create, 500)
	out = append(out, Sample{System: QEMU9p, Workload: fio.Create, Run: 2, Error: "boom"})
	return out
}

func TestSummarizeAndRatios(t *testing.T) {
	sums := Summarize(samples())
	var order []string
	for _, s := range sums {
		order = append(order, s.Workload+"/"+s.System)
	}
	want := "seqread/rffuse seqread/qemu-virtiofsd seqread/host create/rffuse create/qemu-9p"
	if strings.Join(order, " ") != want {
		t.Fatalf("order %v", order)
	}
	rf := sums[0]
	if rf.Unit != "MiB/s" || rf.N != 3 || rf.Median != 110 || rf.P99 != 120 || math.Abs(rf.SpreadPct-20.0/110*100) > 1e-9 {
		t.Errorf("rffuse seqread %+v", rf)
	}
	if p9 := sums[4]; p9.Unit != "files/s" || p9.N != 1 || p9.Failed != 1 || p9.Median != 500 {
		t.Errorf("9p create %+v", p9)
	}
	got := map[string]float64{}
	for _, r := range Ratios(sums) {
		got[r.Workload+"/"+r.Versus] = r.Ratio
	}
	wantR := map[string]float64{"seqread/qemu-virtiofsd": 2, "seqread/host": 0.275, "create/qemu-9p": 2}
	if len(got) != len(wantR) {
		t.Fatalf("ratios %v", got)
	}
	for k, v := range wantR {
		if math.Abs(got[k]-v) > 1e-9 {
			t.Errorf("%s: %v, want %v", k, got[k], v)
		}
	}
}

func TestWriteTable(t *testing.T) {
	r := &Report{Runs: 3, Nested: true, Samples: samples(), Skipped: map[string]string{VirtioBlk: "no disk"}}
	r.Fill()
	var b strings.Builder
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"nested L1", "seqread", "2.00", "0.28", "virtio-blk skipped: no disk", "qemu-9p create run 2 failed: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestDedupe(t *testing.T) {
	in := []Sample{{System: "a", Workload: "w", Run: 1, IOPS: 1}, {System: "a", Workload: "w", Run: 2, IOPS: 2}, {System: "a", Workload: "w", Run: 1, IOPS: 3}}
	got, dropped := Dedupe(in)
	if dropped != 1 || len(got) != 2 || got[0].IOPS != 2 || got[1].IOPS != 3 {
		t.Errorf("%v %d", got, dropped)
	}
}
