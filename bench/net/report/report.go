// Package report is the network benchmark's report: per path (row) the
// TCP stream throughput and the TCP request-response round trip (p50 and
// p99 of each test, over the repetitions: median, p99 and spread), the
// ratios the issue sets goals for, its table and its JSON.
package report

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/net/sample"
)

// Report is what bench/net prints and saves.
type Report struct {
	benchkit.Completion
	Date       string `json:"date"`
	Nested     bool   `json:"nested"`
	HostReason string `json:"host_reason"`
	Runs       int    `json:"runs"`
	Seconds    int    `json:"seconds_per_test"`
	Guest      string `json:"guest"`
	// Rows are the paths in order, with what each one is.
	Rows []Row `json:"rows"`
	// Info are facts the session told about a row ("" for the session).
	Info      map[string]map[string]string `json:"info,omitempty"`
	Skipped   map[string]string            `json:"skipped,omitempty"`
	Commands  map[string]string            `json:"commands,omitempty"`
	Samples   []sample.Sample              `json:"samples"`
	Summaries []Summary                    `json:"summaries"`
	Ratios    []Ratio                      `json:"ratios"`
	Notes     []string                     `json:"notes,omitempty"`
}

// Row names a path and says what it is.
type Row struct {
	Name string `json:"name"`
	What string `json:"what"`
}

// Spread are the statistics of one metric over the repetitions.
type Spread struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P99    float64 `json:"p99"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// SpreadPct is (max - min) / median, in percent.
	SpreadPct float64 `json:"spread_pct"`
}

func spreadOf(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	st := benchkit.StatsOf(v)
	s := Spread{N: st.N, Median: st.Median, P99: benchkit.Percentile(v, 99), Min: st.Min, Max: st.Max}
	if st.Median > 0 {
		s.SpreadPct = (st.Max - st.Min) / st.Median * 100
	}
	return s
}

// Summary is one row's results.
type Summary struct {
	Row string `json:"row"`
	// Gbps is the stream tests' throughput; RTTP50US and RTTP99US the
	// request-response tests' round-trip percentiles, in microseconds.
	Gbps     Spread `json:"gbps"`
	RTTP50US Spread `json:"rtt_p50_us"`
	RTTP99US Spread `json:"rtt_p99_us"`
	// Failed counts the failed tests.
	Failed int `json:"failed"`
}

// Summarize summarizes the samples by row, rows in order first.
func Summarize(samples []sample.Sample, rows ...string) []Summary {
	groups := benchkit.GroupSamples(samples, func(s sample.Sample) string { return s.Row }, sample.Sample.OK, rows...)
	var out []Summary
	for _, g := range groups {
		sum := Summary{Row: g.Name, Failed: g.Failed}
		var gbps, p50, p99 []float64
		for _, s := range g.OK {
			switch s.Test {
			case sample.Stream:
				gbps = append(gbps, s.Gbps)
			case sample.RR:
				p50, p99 = append(p50, s.P50US), append(p99, s.P99US)
			}
		}
		sum.Gbps, sum.RTTP50US, sum.RTTP99US = spreadOf(gbps), spreadOf(p50), spreadOf(p99)
		if sum.Gbps.N+sum.RTTP50US.N+sum.Failed > 0 {
			out = append(out, sum)
		}
	}
	return out
}

// Ratio compares two rows: throughput Of/To (higher is better for Of)
// and round trip p50 Of/To (lower is better for Of).
type Ratio struct {
	Of, To string `json:"-"`
	Name   string `json:"name"`
	// Throughput and RTTP50 are 0 where a side has no result.
	Throughput float64 `json:"throughput"`
	RTTP50     float64 `json:"rtt_p50"`
	// Goal is the throughput ratio the issue aims at (0: none); Paper is
	// the paper's (0: none).
	Goal  float64 `json:"goal,omitempty"`
	Paper float64 `json:"paper,omitempty"`
}

// Ratios computes the wanted ratios from the summaries.
func Ratios(sums []Summary, want []Ratio) []Ratio {
	by := map[string]Summary{}
	for _, s := range sums {
		by[s.Row] = s
	}
	var out []Ratio
	for _, r := range want {
		a, b := by[r.Of], by[r.To]
		r.Name = r.Of + "/" + r.To
		if a.Gbps.Median > 0 && b.Gbps.Median > 0 {
			r.Throughput = a.Gbps.Median / b.Gbps.Median
		}
		if a.RTTP50US.Median > 0 && b.RTTP50US.Median > 0 {
			r.RTTP50 = a.RTTP50US.Median / b.RTTP50US.Median
		}
		out = append(out, r)
	}
	return out
}

func num(v float64, prec int) string {
	if v == 0 || math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// ratio renders a ratio with three significant digits ("-" for none).
func ratio(v float64) string {
	if v == 0 || math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// WriteTable writes the report's table.
func WriteTable(w io.Writer, r *Report) error {
	fmt.Fprintf(w, "bench/net: %d repetition(s) of %d s per test; %s\n", r.Runs, r.Seconds, r.Guest)
	if r.Nested {
		fmt.Fprintf(w, "nested: %s\n", r.HostReason)
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row\tGbps med\tGbps p99\tGbps spread%\tRTT p50 µs (med)\tRTT p99 µs (med)\tRTT p50 spread%\tfailed\t")
	what := map[string]string{}
	for _, row := range r.Rows {
		what[row.Name] = row.What
	}
	for _, s := range r.Summaries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", s.Row, num(s.Gbps.Median, 3), num(s.Gbps.P99, 3), num(s.Gbps.SpreadPct, 1),
			num(s.RTTP50US.Median, 1), num(s.RTTP99US.Median, 1), num(s.RTTP50US.SpreadPct, 1), s.Failed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range r.Summaries {
		fmt.Fprintf(w, "  %s: %s\n", s.Row, what[s.Row])
	}
	for _, row := range r.Rows {
		if why, ok := r.Skipped[row.Name]; ok {
			fmt.Fprintf(w, "  %s: skipped: %s\n", row.Name, why)
		}
	}
	fmt.Fprintln(w, "ratios (throughput: higher is better for the first; RTT p50: lower is better for the first):")
	for _, q := range r.Ratios {
		extra := []string{}
		if q.Goal > 0 {
			extra = append(extra, fmt.Sprintf("goal >= %.2fx", q.Goal))
		}
		if q.Paper > 0 {
			extra = append(extra, fmt.Sprintf("paper %.2fx", q.Paper))
		}
		note := ""
		if len(extra) > 0 {
			note = " (" + strings.Join(extra, ", ") + ")"
		}
		fmt.Fprintf(w, "  %-18s throughput %sx, RTT p50 %sx%s\n", q.Name, ratio(q.Throughput), ratio(q.RTTP50), note)
	}
	for _, s := range r.Samples {
		if !s.OK() {
			fmt.Fprintf(w, "  failed: %s %s run %d: %s\n", s.Row, s.Test, s.Run, strings.ReplaceAll(benchkit.ShortenError(s.Error), "\n", "; "))
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}
