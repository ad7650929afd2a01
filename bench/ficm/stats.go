package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
)

// Summary describes a set of latency samples in nanoseconds.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median_ns"`
	P99    float64 `json:"p99_ns"`
	Mean   float64 `json:"mean_ns"`
	Min    float64 `json:"min_ns"`
	Max    float64 `json:"max_ns"`
}

// Summarize returns the order statistics of samples (nearest-rank
// percentiles); the zero Summary when there are none.
func Summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return Summary{
		N:      len(s),
		Median: Percentile(s, 50),
		P99:    Percentile(s, 99),
		Mean:   sum / float64(len(s)),
		Min:    s[0],
		Max:    s[len(s)-1],
	}
}

// Percentile returns the nearest-rank p-th percentile of sorted samples.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Row is one mechanism's results. Zero fields were not measured.
type Row struct {
	Mechanism string `json:"mechanism"`
	// RTT is the round trip of one 64-byte message and its 64-byte reply.
	RTT Summary `json:"rtt"`
	// OneWay is the one-way latency from sender and receiver timestamps,
	// where the mechanism allows it.
	OneWay Summary `json:"one_way_timestamps"`
	// Throughput is 64-byte messages per second streamed one way.
	Throughput float64 `json:"throughput_msgs_per_s"`
	// Floor marks the reference row that ratios are taken against.
	Floor   bool   `json:"floor,omitempty"`
	Polling bool   `json:"vm_polling,omitempty"`
	IRQ     bool   `json:"vm_interrupt,omitempty"`
	Note    string `json:"note,omitempty"`
	Skipped string `json:"skipped,omitempty"`

	samples []float64 // RTT samples behind RTT, for merging rounds
}

// MergeRounds combines rounds of one mechanism: RTT over all rounds'
// samples, throughput the median of the rounds'.
func MergeRounds(rounds []Row) Row {
	if len(rounds) == 0 {
		return Row{}
	}
	out := rounds[0]
	var all, tput []float64
	var medians []string
	for _, r := range rounds {
		all = append(all, r.samples...)
		tput = append(tput, r.Throughput)
		medians = append(medians, fmt.Sprintf("%.0f", r.RTT.Median))
	}
	out.samples = all
	out.RTT = Summarize(all)
	out.Throughput = Summarize(tput).Median
	if len(rounds) > 1 {
		out.Note += fmt.Sprintf("; %d rounds interleaved with the other spinning rows (RTT medians %s ns), msgs/s = median of rounds", len(rounds), strings.Join(medians, ", "))
	}
	return out
}

// Goal is one benchmark goal and whether this run met it.
type Goal struct {
	Name   string `json:"name"`
	Status string `json:"status"` // "met", "missed" or "n/a"
	Detail string `json:"detail"`
}

// Goals targets.
const (
	goalPollingRatio  = 1.5
	goalIRQLatencyNS  = 5000
	goalMsgsPerSecond = 20e6
)

// floorRTT returns the floor row's median round trip, 0 when absent.
func floorRTT(rows []Row) float64 {
	for _, r := range rows {
		if r.Floor && r.Skipped == "" {
			return r.RTT.Median
		}
	}
	return 0
}

// Ratio returns r's median round trip over the floor's, 0 when either is
// missing.
func Ratio(r Row, floor float64) float64 {
	if floor <= 0 || r.RTT.N == 0 || r.Skipped != "" {
		return 0
	}
	return r.RTT.Median / floor
}

// EvaluateGoals checks the rows against the goals. emulatedIRQ says the
// host runs guest interrupt handlers in KVM's emulator, where interrupt
// latency is not meaningful.
func EvaluateGoals(rows []Row, emulatedIRQ bool) []Goal {
	floor := floorRTT(rows)
	var polling, irq *Row
	for i := range rows {
		if rows[i].Skipped != "" {
			continue
		}
		if rows[i].Polling && polling == nil {
			polling = &rows[i]
		}
		if rows[i].IRQ && irq == nil {
			irq = &rows[i]
		}
	}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "missed"
	}
	var goals []Goal
	g := Goal{Name: fmt.Sprintf("VM polling round trip within %.1fx floor", goalPollingRatio), Status: "n/a"}
	if polling != nil && floor > 0 && polling.RTT.N > 0 {
		ratio := Ratio(*polling, floor)
		g.Status = met(ratio <= goalPollingRatio)
		g.Detail = fmt.Sprintf("%.0f ns vs floor %.0f ns = %.2fx", polling.RTT.Median, floor, ratio)
	} else {
		g.Detail = "VM polling or floor not measured"
	}
	goals = append(goals, g)
	g = Goal{Name: fmt.Sprintf("VM interrupt one-way < %.0f us on real KVM", goalIRQLatencyNS/1000.0), Status: "n/a"}
	switch {
	case irq == nil || irq.RTT.N == 0:
		g.Detail = "VM interrupt mode not measured"
	case emulatedIRQ:
		g.Detail = fmt.Sprintf("delivery works (%.0f rings/s) but this host emulates CPL-0 handler code; time it on real KVM", irq.Throughput)
	default:
		g.Status = met(irq.RTT.Median/2 < goalIRQLatencyNS)
		g.Detail = fmt.Sprintf("ring->ack round trip %.0f ns, one-way ~%.0f ns", irq.RTT.Median, irq.RTT.Median/2)
	}
	goals = append(goals, g)
	g = Goal{Name: fmt.Sprintf("> %.0f M msgs/s per VM pair", goalMsgsPerSecond/1e6), Status: "n/a"}
	if polling != nil && polling.Throughput > 0 {
		g.Status = met(polling.Throughput > goalMsgsPerSecond)
		g.Detail = fmt.Sprintf("%.1f M msgs/s", polling.Throughput/1e6)
	} else {
		g.Detail = "VM stream not measured"
	}
	return append(goals, g)
}

// fmtNS formats nanoseconds for the table; "-" when not measured.
func fmtNS(v float64, measured bool) string {
	if !measured {
		return "-"
	}
	if v >= 10000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

// fmtRate formats messages per second; "-" when not measured.
func fmtRate(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// WriteTable prints the rows, their notes and the goals.
func WriteTable(w io.Writer, rows []Row, goals []Goal) error {
	floor := floorRTT(rows)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mechanism\tRTT med ns\tRTT p99 ns\tone-way~RTT/2 ns\tone-way ts med ns\tone-way ts p99 ns\tmsgs/s\tRTT/floor\t")
	for _, r := range rows {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t\n", r.Mechanism)
			continue
		}
		rtt := r.RTT.N > 0
		ow := r.OneWay.N > 0
		ratio := "-"
		if q := Ratio(r, floor); q > 0 {
			ratio = fmt.Sprintf("%.2fx", q)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Mechanism,
			fmtNS(r.RTT.Median, rtt), fmtNS(r.RTT.P99, rtt), fmtNS(r.RTT.Median/2, rtt),
			fmtNS(r.OneWay.Median, ow), fmtNS(r.OneWay.P99, ow), fmtRate(r.Throughput), ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var notes []string
	for _, r := range rows {
		switch {
		case r.Skipped != "":
			notes = append(notes, fmt.Sprintf("  %s: skipped: %s", r.Mechanism, r.Skipped))
		case r.Note != "":
			notes = append(notes, fmt.Sprintf("  %s: %s", r.Mechanism, r.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nnotes:\n%s\n", strings.Join(notes, "\n"))
	}
	fmt.Fprintln(w, "\ngoals:")
	for _, g := range goals {
		fmt.Fprintf(w, "  [%s] %s: %s\n", g.Status, g.Name, g.Detail)
	}
	return nil
}
