package report

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"rainforest/bench/hotplug/hotmeasure"
)

func sample(system string, run int, op string, guestMS, removedMS int, errText string) hotmeasure.Sample {
	return hotmeasure.Sample{System: system, Run: run, Op: op, Request: 10 * time.Millisecond,
		Guest: time.Duration(guestMS) * time.Millisecond, Removed: time.Duration(removedMS) * time.Millisecond, Error: errText}
}

func withCLI(s hotmeasure.Sample, ms int) hotmeasure.Sample {
	s.CLI = time.Duration(ms) * time.Millisecond
	return s
}

func testSamples() []hotmeasure.Sample {
	return []hotmeasure.Sample{
		withCLI(sample("rfm", 1, hotmeasure.OpAdd, 100, 0, ""), 40),
		sample("rfm", 1, hotmeasure.OpRemove, 50, 60, ""),
		sample("qemu", 1, hotmeasure.OpAdd, 400, 0, ""),
		sample("qemu", 1, hotmeasure.OpRemove, 300, 200, ""),
		sample("qemu", 2, hotmeasure.OpAdd, 200, 0, ""),
		sample("qemu", 2, hotmeasure.OpRemove, 100, 100, ""),
		sample("rfm", 2, hotmeasure.OpAdd, 300, 0, ""),
		sample("rfm", 2, hotmeasure.OpRemove, 0, 0, "not seen"),
	}
}

func TestSummarize(t *testing.T) {
	sums := Summarize(testSamples(), "rfm", "qemu")
	if len(sums) != 4 {
		t.Fatalf("%d summaries: %+v", len(sums), sums)
	}
	var got []string
	for _, s := range sums {
		got = append(got, s.System+" "+s.Op)
	}
	if strings.Join(got, ", ") != "rfm add, rfm remove, qemu add, qemu remove" {
		t.Fatalf("order %q", got)
	}
	rfmAdd, rfmRm, qemuAdd, qemuRm := sums[0], sums[1], sums[2], sums[3]
	if rfmAdd.CLIMS.N != 1 || rfmAdd.CLIMS.Median != 40 || qemuAdd.CLIMS.N != 0 {
		t.Errorf("cli %+v %+v", rfmAdd.CLIMS, qemuAdd.CLIMS)
	}
	if rfmAdd.OK != 2 || rfmAdd.DoneMS.Median != 200 || rfmAdd.DoneP99MS != 300 || rfmAdd.DoneMS.Min != 100 || rfmAdd.RequestMS.Median != 10 {
		t.Errorf("rfm add %+v", rfmAdd)
	}
	// A remove is done when the later of the guest and the VMM is.
	if rfmRm.OK != 1 || rfmRm.Failed != 1 || rfmRm.DoneMS.Median != 60 || rfmRm.GuestMS.Median != 50 || rfmRm.RemovedMS.Median != 60 {
		t.Errorf("rfm remove %+v", rfmRm)
	}
	if qemuAdd.DoneMS.Median != 300 || qemuRm.DoneMS.Median != 200 || qemuRm.DoneP99MS != 300 {
		t.Errorf("qemu %+v %+v", qemuAdd, qemuRm)
	}
}

func TestWriteTable(t *testing.T) {
	s := testSamples()
	r := &Report{Setting: "nested: test", Runs: 2, CPUs: 1, MemoryMiB: 256, Samples: s, Summaries: Summarize(s, "rfm", "qemu"), Notes: []string{"a note"}}
	var b strings.Builder
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, re := range []string{
		`(?m)^ +rfm +add +2/2 +200 +300 +100 +300 +10 +200 +-$`,
		`(?m)^ +rfm +remove +1/2 +60 +60 +60 +60 +10 +50 +60$`,
		`(?m)^ +qemu +remove +2/2 +200 +300 +100 +300 `,
		`(?m)^ +rfm/qemu +add +0\.67x +0\.75x`,
		`(?m)^ +rfm/qemu +remove +0\.30x +0\.20x`,
		`Note: a note`, `FAILED rfm run 2 remove: not seen`, `nearest rank`,
		`rfm add: a request that changes nothing \(rfm inspect, timed just before\) took 40 ms \(median; 40-40\)`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("table lacks %s:\n%s", re, out)
		}
	}
	// A system without samples shows dashes and no ratio.
	r.Summaries = Summarize(s[:2], "rfm", "qemu")
	b.Reset()
	WriteTable(&b, r)
	if !regexp.MustCompile(`(?m)^ +qemu +add +0/0 +- `).MatchString(b.String()) || strings.Contains(b.String(), "rfm/qemu") {
		t.Errorf("table without qemu:\n%s", b.String())
	}
}

func TestJSON(t *testing.T) {
	s := testSamples()
	data, err := json.Marshal(&Report{Samples: s, Summaries: Summarize(s, "rfm")})
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil || len(back.Samples) != 8 || back.Summaries[0].DoneP99MS != 300 {
		t.Fatalf("round trip %v %+v", err, back)
	}
}
