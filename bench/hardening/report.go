package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"rainforest/bench/internal/benchkit"
)

// Report is the benchmark's result (the table and the JSON file).
type Report struct {
	// Completion marks a report whose session ended early: it holds the
	// samples measured before.
	benchkit.Completion
	Date    string `json:"date"`
	Setting string `json:"setting"`
	Runs    int    `json:"runs"`
	// ServeFlags are `rfm serve`'s extra flags by configuration.
	ServeFlags map[string]string `json:"serve_flags"`
	Rows       []Row             `json:"rows"`
	Samples    []Sample          `json:"samples"`
	Notes      []string          `json:"notes,omitempty"`
}

// Row is one quantity in both configurations.
type Row struct {
	Metric   string  `json:"metric"`
	Key      string  `json:"key"`
	Label    string  `json:"label"`
	Unit     string  `json:"unit"`
	Hardened Summary `json:"hardened"`
	Plain    Summary `json:"plain"`
	// Ratio is the hardened median over the plain one (0: one is
	// missing).
	Ratio float64 `json:"hardened_over_plain"`
}

// Summary is one quantity's repeats in one configuration: median,
// minimum and maximum (the spread), nearest-rank p99, and how many runs
// of its metric failed.
type Summary struct {
	benchkit.Stats
	P99    float64 `json:"p99"`
	Failed int     `json:"failed"`
}

// quantity is one row of the table.
type quantity struct{ metric, key, label, unit string }

// quantities are the table's rows, in order.
func quantities() []quantity {
	q := []quantity{
		{metricBoot, "create_init_ms", "boot: create -> /init", "ms"},
		{metricBoot, "create_return_ms", "boot: create call returned", "ms"},
		{metricDisk, "seq_read_mbps", "virtio-blk seq read 1 MiB", "MB/s"},
		{metricDisk, "rand_read_iops", "virtio-blk rand read 4 KiB QD1", "IOPS"},
		{metricDisk, "rand_read_p50_us", "virtio-blk rand read p50", "µs"},
		{metricDisk, "rand_read_p99_us", "virtio-blk rand read p99", "µs"},
		{metricDisk, "seq_write_mbps", "virtio-blk seq write 1 MiB", "MB/s"},
		{metricDisk, "rand_write_iops", "virtio-blk rand write 4 KiB QD1", "IOPS"},
		{metricDisk, "rand_write_p50_us", "virtio-blk rand write p50", "µs"},
		{metricDisk, "rand_write_p99_us", "virtio-blk rand write p99", "µs"},
	}
	for _, m := range ficmModes {
		q = append(q,
			quantity{metricFICM, m + "_rtt_median_us", "FICM " + m + " 64 B round trip median", "µs"},
			quantity{metricFICM, m + "_rtt_p99_us", "FICM " + m + " 64 B round trip p99", "µs"},
			quantity{metricFICM, m + "_msgs_per_s", "FICM " + m + " throughput", "msgs/s"})
	}
	return q
}

// summarize makes the table's rows from the samples.
func summarize(samples []Sample) []Row {
	var rows []Row
	for _, q := range quantities() {
		r := Row{Metric: q.metric, Key: q.key, Label: q.label, Unit: q.unit,
			Hardened: summaryOf(samples, cfgHardened, q), Plain: summaryOf(samples, cfgPlain, q)}
		if r.Hardened.N > 0 && r.Plain.N > 0 && r.Plain.Median != 0 {
			r.Ratio = r.Hardened.Median / r.Plain.Median
		}
		rows = append(rows, r)
	}
	return rows
}

// summaryOf summarizes q's values in config's samples.
func summaryOf(samples []Sample, config string, q quantity) Summary {
	var v []float64
	var s Summary
	for _, x := range samples {
		switch {
		case x.Config != config || x.Metric != q.metric:
		case !x.OK():
			s.Failed++
		default:
			if val, ok := x.Values[q.key]; ok {
				v = append(v, val)
			}
		}
	}
	s.Stats, s.P99 = benchkit.StatsOf(v), benchkit.Percentile(v, 99)
	return s
}

// writeTable writes the report's table.
func writeTable(w io.Writer, rep *Report) error {
	fmt.Fprintf(w, "VMM hardening cost: hardened (rfm serve defaults: jail + seccomp) vs plain (rfm serve %s), %d alternating repeats each; %s\n\n",
		rep.ServeFlags[cfgPlain], rep.Runs, rep.Setting)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "quantity\tunit\thardened med\tp99\tmin-max\tplain med\tp99\tmin-max\thardened/plain\t")
	for _, r := range rep.Rows {
		ratio := "-"
		if r.Ratio != 0 {
			ratio = fmt.Sprintf("%.3fx", r.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r.Label, r.Unit, cells(r.Hardened), cells(r.Plain), ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var failed []string
	for _, s := range rep.Samples {
		if !s.OK() {
			failed = append(failed, fmt.Sprintf("  %s rep %d %s: %s", s.Config, s.Rep, s.Metric, benchkit.ShortenError(s.Error)))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "\nfailed runs:\n%s\n", strings.Join(failed, "\n"))
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "- "+n)
	}
	return nil
}

// cells are a summary's median, p99 and spread columns.
func cells(s Summary) string {
	if s.N == 0 {
		return "-\t-\t-"
	}
	return fmt.Sprintf("%s\t%s\t%s-%s (n=%d)", num(s.Median), num(s.P99), num(s.Min), num(s.Max), s.N)
}

// num formats a value with about four significant digits.
func num(v float64) string { return fmt.Sprintf("%.4g", v) }
