// Package report holds the filesystem benchmark's (bench/fs) samples, their
// result-line codec, the per-workload summaries over repetitions, RFfuse's
// ratios to the other systems, and the table.
package report

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"rainforest/bench/fs/fio"
	"rainforest/bench/internal/benchkit"
)

// Systems measured, in table order.
const (
	RFfuse        = "rffuse"
	QEMUVirtiofsd = "qemu-virtiofsd"
	QEMU9p        = "qemu-9p"
	VirtioBlk     = "virtio-blk"
	Host          = "host"
)

// Systems returns the systems in table order.
func Systems() []string { return []string{RFfuse, QEMUVirtiofsd, QEMU9p, VirtioBlk, Host} }

// LinePrefix starts a sample's result line.
const LinePrefix = "RF-FS"

// ErrBadLine means a result line could not be parsed.
var ErrBadLine = errors.New("report: bad result line")

// maxField bounds a text field of a line (a guest writes some lines).
const maxField = 64

// Sample is one fio run of one workload on one system.
type Sample struct {
	System   string `json:"system"`
	Workload string `json:"workload"`
	Run      int    `json:"run"`
	// BytesPerSec, IOPS, Ops, RuntimeMs, ClatP99Us and ClatMeanUs are fio's
	// (fio.Result).
	BytesPerSec float64 `json:"bytes_per_sec,omitempty"`
	IOPS        float64 `json:"iops,omitempty"`
	Ops         int64   `json:"ops,omitempty"`
	RuntimeMs   int64   `json:"runtime_ms,omitempty"`
	ClatP99Us   float64 `json:"clat_p99_us,omitempty"`
	ClatMeanUs  float64 `json:"clat_mean_us,omitempty"`
	Error       string  `json:"error,omitempty"`
}

// OK reports whether the run succeeded.
func (s Sample) OK() bool { return s.Error == "" }

// FromResult makes the sample of a parsed fio run.
func FromResult(system, workload string, run int, r fio.Result) Sample {
	return Sample{System: system, Workload: workload, Run: run, BytesPerSec: r.BytesPerSec, IOPS: r.IOPS, Ops: r.Ops,
		RuntimeMs: r.RuntimeMs, ClatP99Us: r.ClatP99Us, ClatMeanUs: r.ClatMeanUs}
}

// FormatLine renders s as a result line.
func FormatLine(s Sample) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	fields := []benchkit.Field{{Key: "system", Value: s.System}, {Key: "workload", Value: s.Workload}, {Key: "run", Value: strconv.Itoa(s.Run)}}
	if s.OK() {
		fields = append(fields, benchkit.Field{Key: "bytes_per_sec", Value: f(s.BytesPerSec)}, benchkit.Field{Key: "iops", Value: f(s.IOPS)},
			benchkit.Field{Key: "ops", Value: strconv.FormatInt(s.Ops, 10)}, benchkit.Field{Key: "runtime_ms", Value: strconv.FormatInt(s.RuntimeMs, 10)},
			benchkit.Field{Key: "clat_p99_us", Value: f(s.ClatP99Us)}, benchkit.Field{Key: "clat_mean_us", Value: f(s.ClatMeanUs)})
	}
	return benchkit.FormatLine(LinePrefix, fields, s.Error)
}

// ParseLine parses a result line (ok false: line carries none). Text
// fields are bounded; unknown keys are skipped.
func ParseLine(line string) (Sample, bool, error) {
	fields, ok, err := benchkit.LineFields(line, LinePrefix, ErrBadLine)
	if !ok || err != nil {
		return Sample{}, ok, err
	}
	var s Sample
	bad := func(why string) (Sample, bool, error) {
		return Sample{}, true, fmt.Errorf("%w: %s: %.200q", ErrBadLine, why, line)
	}
	for _, f := range fields {
		var err error
		switch f.Key {
		case "system":
			s.System = f.Value
		case "workload":
			s.Workload = f.Value
		case "run":
			s.Run, err = strconv.Atoi(f.Value)
		case "bytes_per_sec":
			s.BytesPerSec, err = strconv.ParseFloat(f.Value, 64)
		case "iops":
			s.IOPS, err = strconv.ParseFloat(f.Value, 64)
		case "ops":
			s.Ops, err = strconv.ParseInt(f.Value, 10, 64)
		case "runtime_ms":
			s.RuntimeMs, err = strconv.ParseInt(f.Value, 10, 64)
		case "clat_p99_us":
			s.ClatP99Us, err = strconv.ParseFloat(f.Value, 64)
		case "clat_mean_us":
			s.ClatMeanUs, err = strconv.ParseFloat(f.Value, 64)
		case benchkit.ErrorKey:
			s.Error = f.Value
		}
		if err != nil {
			return bad(f.Key)
		}
	}
	if s.System == "" || s.Workload == "" || len(s.System) > maxField || len(s.Workload) > maxField || s.Run < 1 {
		return bad("system, workload or run")
	}
	if len(s.Error) > 4096 {
		s.Error = s.Error[:4096] + "..."
	}
	return s, true, nil
}

// Dedupe keeps the last sample of each system, workload and run (a guest
// that crashed and rebooted ran its script again) and says how many were
// dropped.
func Dedupe(samples []Sample) (kept []Sample, dropped int) {
	last := map[[3]string]int{}
	for i, s := range samples {
		last[[3]string{s.System, s.Workload, strconv.Itoa(s.Run)}] = i
	}
	for i, s := range samples {
		if last[[3]string{s.System, s.Workload, strconv.Itoa(s.Run)}] == i {
			kept = append(kept, s)
		}
	}
	return kept, len(samples) - len(kept)
}

// Metric is what a workload's table reports: bytes per second for the
// sequential workloads, IOPS for the random ones, files per second for
// the metadata ones.
func Metric(workload string) (name string, value func(Sample) float64) {
	switch workload {
	case fio.SeqRead, fio.SeqWrite:
		return "MiB/s", func(s Sample) float64 { return s.BytesPerSec / (1 << 20) }
	case fio.Create, fio.Stat, fio.Delete:
		return "files/s", func(s Sample) float64 { return s.IOPS }
	}
	return "IOPS", func(s Sample) float64 { return s.IOPS }
}

// Summary is one workload on one system over its repetitions.
type Summary struct {
	Workload string `json:"workload"`
	System   string `json:"system"`
	Unit     string `json:"unit"`
	benchkit.Stats
	P99 float64 `json:"p99"`
	// SpreadPct is (max - min) / median, percent.
	SpreadPct float64 `json:"spread_pct"`
	// ClatP99Us and ClatMeanUs are the medians over runs of fio's per-I/O
	// p99 and mean completion latency (for the metadata engines, of the
	// create, stat or unlink call alone, without fio's own work per file).
	ClatP99Us  float64 `json:"clat_p99_us"`
	ClatMeanUs float64 `json:"clat_mean_us"`
	Failed     int     `json:"failed,omitempty"`
}

// Summarize groups samples by workload (fio.Names order) and system
// (Systems order); pairs without samples are left out.
func Summarize(samples []Sample) []Summary {
	var out []Summary
	for _, wl := range fio.Names() {
		var of []Sample
		for _, s := range samples {
			if s.Workload == wl {
				of = append(of, s)
			}
		}
		unit, value := Metric(wl)
		for _, g := range benchkit.GroupSamples(of, func(s Sample) string { return s.System }, Sample.OK, Systems()...) {
			if len(g.OK) == 0 && g.Failed == 0 {
				continue
			}
			var v, lat, mean []float64
			for _, s := range g.OK {
				v = append(v, value(s))
				lat = append(lat, s.ClatP99Us)
				mean = append(mean, s.ClatMeanUs)
			}
			sum := Summary{Workload: wl, System: g.Name, Unit: unit, Stats: benchkit.StatsOf(v), P99: benchkit.Percentile(v, 99),
				ClatP99Us: benchkit.StatsOf(lat).Median, ClatMeanUs: benchkit.StatsOf(mean).Median, Failed: g.Failed}
			if sum.Median > 0 {
				sum.SpreadPct = (sum.Max - sum.Min) / sum.Median * 100
			}
			out = append(out, sum)
		}
	}
	return out
}

// Ratio is RFfuse's median over another system's, for one workload
// (higher is better for RFfuse: every metric is a rate).
type Ratio struct {
	Workload string  `json:"workload"`
	Versus   string  `json:"versus"`
	Ratio    float64 `json:"ratio"`
}

// RatioBaselines are the systems RFfuse is compared with.
func RatioBaselines() []string { return []string{QEMUVirtiofsd, QEMU9p, Host} }

// Ratios returns RFfuse's ratios, for each workload and baseline that
// both have a median.
func Ratios(sums []Summary) []Ratio {
	median := map[[2]string]float64{}
	for _, s := range sums {
		if s.N > 0 {
			median[[2]string{s.Workload, s.System}] = s.Median
		}
	}
	var out []Ratio
	for _, wl := range fio.Names() {
		rf, ok := median[[2]string{wl, RFfuse}]
		if !ok {
			continue
		}
		for _, b := range RatioBaselines() {
			if m, ok := median[[2]string{wl, b}]; ok && m > 0 {
				out = append(out, Ratio{Workload: wl, Versus: b, Ratio: rf / m})
			}
		}
	}
	return out
}

// Report is the benchmark's result.
type Report struct {
	benchkit.Completion
	Date       string `json:"date"`
	Runs       int    `json:"runs"`
	Nested     bool   `json:"nested"`
	HostReason string `json:"host_reason"`
	// Guest describes the guests (kernel, memory, cores).
	Guest string `json:"guest"`
	// Jobs are fio's options per workload; Systems say how each system
	// was measured; Skipped why a system has no samples.
	Jobs      map[string]string `json:"jobs"`
	Systems   map[string]string `json:"systems"`
	Skipped   map[string]string `json:"skipped,omitempty"`
	Samples   []Sample          `json:"samples"`
	Summaries []Summary         `json:"summaries"`
	Ratios    []Ratio           `json:"ratios"`
	Notes     []string          `json:"notes,omitempty"`
}

// Fill computes the summaries and ratios from the samples.
func (r *Report) Fill() {
	r.Summaries = Summarize(r.Samples)
	r.Ratios = Ratios(r.Summaries)
}

// WriteTable writes the summaries (one row per workload and system), the
// ratios and the skipped systems.
func WriteTable(w io.Writer, r *Report) error {
	where := "directly on this host"
	if r.Nested {
		where = "inside the nested L1 guest (QEMU TCG): absolute numbers are not real hardware's, compare rows"
	}
	fmt.Fprintf(w, "Filesystem benchmark (bench/fs), %d run(s) per workload and system, %s\n\n", r.Runs, where)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tsystem\tunit\tn\tmedian\tp99\tmin\tmax\tspread%\tclat mean us\tclat p99 us\tfailed\t")
	for _, s := range r.Summaries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f\t%d\t\n", s.Workload, s.System, s.Unit, s.N,
			s.Median, s.P99, s.Min, s.Max, s.SpreadPct, s.ClatMeanUs, s.ClatP99Us, s.Failed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Ratios) > 0 {
		fmt.Fprintf(w, "\nRFfuse / baseline (median over median; > 1: RFfuse faster)\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "workload\t%s\t\n", strings.Join(RatioBaselines(), "\t"))
		for _, wl := range fio.Names() {
			row, any := wl, false
			for _, b := range RatioBaselines() {
				cell := "-"
				for _, x := range r.Ratios {
					if x.Workload == wl && x.Versus == b {
						cell, any = fmt.Sprintf("%.2f", x.Ratio), true
					}
				}
				row += "\t" + cell
			}
			if any {
				fmt.Fprintln(tw, row+"\t")
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, sys := range Systems() {
		if why, ok := r.Skipped[sys]; ok {
			fmt.Fprintf(w, "\n%s skipped: %s", sys, benchkit.ShortenError(why))
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(w)
	}
	for _, s := range r.Samples {
		if !s.OK() {
			fmt.Fprintf(w, "\n%s %s run %d failed: %s", s.System, s.Workload, s.Run, benchkit.ShortenError(s.Error))
		}
	}
	fmt.Fprintln(w)
	return nil
}
