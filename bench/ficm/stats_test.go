package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	var s []float64
	for i := 100; i >= 1; i-- {
		s = append(s, float64(i))
	}
	got := Summarize(s)
	want := Summary{N: 100, Median: 50, P99: 99, Mean: 50.5, Min: 1, Max: 100}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if s[0] != 100 {
		t.Error("Summarize reordered its input")
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("empty input gave a non-zero summary")
	}
	if one := Summarize([]float64{7}); one.Median != 7 || one.P99 != 7 {
		t.Errorf("single sample: %+v", one)
	}
}

func TestPercentile(t *testing.T) {
	s := []float64{1, 2, 3, 4}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {25, 1}, {50, 2}, {75, 3}, {99, 4}, {100, 4}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("p%.0f = %v, want %v", c.p, got, c.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty percentile")
	}
}

func testRows() []Row {
	return []Row{
		{Mechanism: "floor", Floor: true, RTT: Summary{N: 10, Median: 300, P99: 400}, Throughput: 30e6},
		{Mechanism: "pipe", RTT: Summary{N: 10, Median: 9000, P99: 12000}, OneWay: Summary{N: 10, Median: 4400, P99: 6000}, Throughput: 250e3},
		{Mechanism: "vm poll", Polling: true, RTT: Summary{N: 10, Median: 330, P99: 500}, Throughput: 25e6},
		{Mechanism: "vm irq", IRQ: true, RTT: Summary{N: 10, Median: 40000, P99: 50000}, Throughput: 25e3, Note: "emulated"},
		{Mechanism: "tcp", Skipped: "no loopback"},
	}
}

func TestRatio(t *testing.T) {
	rows := testRows()
	floor := floorRTT(rows)
	if floor != 300 {
		t.Fatalf("floor = %v", floor)
	}
	if r := Ratio(rows[1], floor); r != 30 {
		t.Errorf("pipe ratio %v", r)
	}
	if Ratio(rows[4], floor) != 0 || Ratio(rows[1], 0) != 0 {
		t.Error("ratio of a skipped row or missing floor is not 0")
	}
}

func TestEvaluateGoals(t *testing.T) {
	goals := EvaluateGoals(testRows(), true)
	if len(goals) != 3 {
		t.Fatalf("%d goals", len(goals))
	}
	if goals[0].Status != "met" || !strings.Contains(goals[0].Detail, "1.10x") {
		t.Errorf("polling goal %+v", goals[0])
	}
	if goals[1].Status != "n/a" || !strings.Contains(goals[1].Detail, "emulates") {
		t.Errorf("irq goal on an emulating host %+v", goals[1])
	}
	if goals[2].Status != "met" {
		t.Errorf("throughput goal %+v", goals[2])
	}
	rows := testRows()
	rows[2].RTT.Median = 600
	rows[2].Throughput = 5e6
	goals = EvaluateGoals(rows, false)
	if goals[0].Status != "missed" || goals[2].Status != "missed" {
		t.Errorf("missed goals reported as %+v", goals)
	}
	if goals[1].Status != "missed" { // 40 us round trip, 20 us one-way
		t.Errorf("irq goal on real KVM %+v", goals[1])
	}
	goals = EvaluateGoals(rows[:2], false)
	for _, g := range goals[:] {
		if g.Status != "n/a" && g.Name != goals[0].Name {
			t.Errorf("unmeasured goal %+v", g)
		}
	}
	if goals[0].Status != "n/a" {
		t.Errorf("polling goal without VM rows: %+v", goals[0])
	}
}

func TestWriteTable(t *testing.T) {
	rows := testRows()
	var b bytes.Buffer
	if err := WriteTable(&b, rows, EvaluateGoals(rows, true)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"mechanism", "RTT/floor", "1.00x", "30.00x", "1.10x", "9000", "12.0k", "4500", "4400",
		"25.00M", "250.0k", "tcp: skipped: no loopback", "vm irq: emulated", "[met]", "[n/a]"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	if !strings.HasSuffix(strings.TrimRight(lines[0], " "), "RTT/floor") {
		t.Errorf("header %q", lines[0])
	}
	if fmtNS(5, false) != "-" || fmtRate(0) != "-" || fmtRate(12) != "12" {
		t.Error("unmeasured cells")
	}
}

func TestMergeRounds(t *testing.T) {
	rounds := []Row{
		{Mechanism: "x", Note: "n", samples: []float64{1, 2}, RTT: Summary{Median: 1}, Throughput: 10},
		{Mechanism: "x", samples: []float64{3}, RTT: Summary{Median: 3}, Throughput: 30},
		{Mechanism: "x", samples: []float64{4, 5}, RTT: Summary{Median: 4}, Throughput: 20},
	}
	m := MergeRounds(rounds)
	if m.RTT.N != 5 || m.RTT.Median != 3 || m.Throughput != 20 || m.Mechanism != "x" {
		t.Errorf("merged %+v", m)
	}
	if !strings.HasPrefix(m.Note, "n; 3 rounds") || !strings.Contains(m.Note, "(RTT medians 1, 3, 4 ns)") {
		t.Errorf("note %q", m.Note)
	}
	if one := MergeRounds(rounds[:1]); one.Note != "n" || one.RTT.N != 2 {
		t.Errorf("one round %+v", one)
	}
	if MergeRounds(nil).RTT.N != 0 {
		t.Error("no rounds")
	}
}
