package report

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"rainforest/bench/boot/measure"
	"rainforest/bench/boot/wakeups"
	"rainforest/bench/internal/benchkit"
)

func sample(vmm string, run int, initMS int, rssKiB uint64, errText string) measure.Sample {
	return measure.Sample{VMM: vmm, Run: run, Init: time.Duration(initMS) * time.Millisecond, Error: errText,
		Status: measure.ProcStatus{VmRSS: rssKiB, VmHWM: rssKiB + 1024, RssAnon: rssKiB / 2, RssFile: rssKiB / 4,
			RssShmem: rssKiB / 4, HugetlbPages: 512 * 1024}}
}

// idle is a 10 s window in which the VMM's own threads woke vmm times
// (one of them all of those) and its vCPU vcpu times.
func idle(vmm, vcpu uint64, name string) *wakeups.Window {
	w := &wakeups.Window{Duration: 10 * time.Second, Threads: []wakeups.Count{
		{TID: 1, Name: name, Voluntary: vmm, BlockedIn: map[string]int{"futex wait no timeout": 10}},
		{TID: 2, Name: name},
		{TID: 3, Name: "vcpu0", VCPU: true, Voluntary: vcpu},
	}}
	return w
}

func testSamples() []measure.Sample {
	withIdle := func(s measure.Sample, w *wakeups.Window) measure.Sample { s.Idle = w; return s }
	return []measure.Sample{
		withIdle(sample("qemu", 1, 100, 80*1024, ""), idle(1000, 200, "qemu-system-x86")),
		withIdle(sample("rfm", 1, 40, 4*1024, ""), idle(0, 100, "rfm")),
		sample("rfm", 2, 60, 6*1024, ""),
		sample("qemu", 2, 120, 82*1024, ""),
		sample("rfm", 3, 0, 0, "marker not seen"),
		sample("qemu", 3, 110, 81*1024, ""),
	}
}

func TestSummarize(t *testing.T) {
	sums := Summarize(testSamples(), "rfm", "qemu", "absent")
	if len(sums) != 3 {
		t.Fatalf("got %d summaries", len(sums))
	}
	rfm, qemu := sums[0], sums[1]
	if rfm.VMM != "rfm" || rfm.OK != 2 || rfm.Failed != 1 {
		t.Fatalf("rfm %+v", rfm)
	}
	if rfm.InitMS != (benchkit.Stats{N: 2, Median: 50, Min: 40, Max: 60}) || rfm.OverheadMiB != (benchkit.Stats{N: 2, Median: 5, Min: 4, Max: 6}) {
		t.Fatalf("rfm stats %+v", rfm)
	}
	if rfm.HWMMiB.Median != 6 || rfm.HugetlbMiB.Median != 512 || rfm.AnonMiB.Median != 2.5 || rfm.MappedMiB.Median != 2.5 {
		t.Fatalf("rfm hwm/hugetlb %+v", rfm)
	}
	if qemu.InitMS.Median != 110 || qemu.OverheadMiB.Median != 81 {
		t.Fatalf("qemu %+v", qemu)
	}
	if rfm.IdleVMM != (benchkit.Stats{N: 1}) || rfm.IdleVCPU != (benchkit.Stats{N: 1, Median: 10, Min: 10, Max: 10}) || qemu.IdleVMM.Median != 100 {
		t.Fatalf("idle rfm %+v %+v, qemu %+v", rfm.IdleVMM, rfm.IdleVCPU, qemu.IdleVMM)
	}
	if sums[2].OK != 0 || sums[2].InitMS != (benchkit.Stats{}) {
		t.Fatalf("absent %+v", sums[2])
	}
	r := RatiosOf(rfm, qemu)
	if r.Num != "rfm" || r.Den != "qemu" || r.Init != 50.0/110 || r.Overhead != 5.0/81 || r.HWM != 6.0/82 {
		t.Fatalf("ratios %+v", r)
	}
	if z := RatiosOf(rfm, sums[2]); z.Init != 0 || z.Overhead != 0 {
		t.Fatalf("division by zero: %+v", z)
	}
	// VMMs not named come after the named ones.
	if got := Summarize(testSamples(), "rfm"); len(got) != 2 || got[1].VMM != "qemu" {
		t.Fatalf("order %+v", got)
	}
}

func testReport() *Report {
	s := testSamples()
	sums := Summarize(s, "rfm", "qemu")
	r := RatiosOf(sums[0], sums[1])
	return &Report{Setting: "nested: test", Nested: true, Runs: 3, CPUs: 2, MemoryMiB: 512, IdleAfter: "RF-MEMTOTAL-KB", IdleDelayS: 3, IdleWindowS: 10,
		Samples: s, Summaries: sums, Ratios: &r, TargetInitMS: 125, TargetOverheadMiB: 5,
		Notes: []string{"a note"}}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, testReport()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"3 run(s) per VMM, 2 vCPUs, 512 MiB", "nested: test",
		"rfm  2/3", "qemu  3/3", "rfm/qemu", "0.45x", "0.06x",
		"hugetlb pages", "< 125 ms", "< 5 MiB", "Note: a note", "FAILED rfm run 3: marker not seen",
		"Idle wake-ups per second: context switches over 10 s from 3 s after the guest printed RF-MEMTOTAL-KB",
		"  rfm run 1: none\n", "  qemu run 1: tid 1 \"qemu-system-x86\": 100.0/s (1000 voluntary, 0 not); blocked in: futex wait no timeout 10/10\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^ +rfm +1 +0\.0 +0\.0 +0\.0 +10\.0 +10\.0 +10\.0$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^ +qemu +1 +100\.0 +100\.0 +100\.0 +20\.0`).MatchString(out) {
		t.Errorf("idle rows:\n%s", out)
	}
	// Columns line up: the header and each data row have the same width.
	lines := strings.Split(out, "\n")
	if len(lines[3]) != len(lines[4]) || len(lines[4]) != len(lines[5]) {
		t.Errorf("rows not aligned:\n%s\n%s\n%s", lines[3], lines[4], lines[5])
	}
}

func TestWriteTableShortensErrors(t *testing.T) {
	r := testReport()
	long := strings.Repeat("x", 5000)
	r.Samples[4].Error = long
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); strings.Contains(out, long) || !strings.Contains(out, "FAILED rfm run 3: "+benchkit.ShortenError(long)+"\n") {
		t.Fatalf("long error not shortened:\n%s", out)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	data, err := json.Marshal(testReport())
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Samples) != 6 || back.Summaries[0].InitMS.Median != 50 || back.Ratios == nil || back.Samples[1].Init != 40*time.Millisecond {
		t.Fatalf("round trip %+v", back)
	}
}
