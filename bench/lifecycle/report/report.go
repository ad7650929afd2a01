// Package report summarizes subOS, VM and container lifecycle samples:
// per system the median, 99th percentile, minimum and maximum of each of
// Table 4's operations (create, destroy, CPU online and offline, memory
// online and offline), the ratios of rfm's to another system's (QEMU's
// first), and a text table with the paper's reference lines; the Report
// is also the JSON document (benchkit.WriteJSONFile).
package report

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/lifecycle/sample"
)

// Reference is a published result the table quotes.
type Reference struct {
	Source    string  `json:"source"`
	System    string  `json:"system"`
	CreateMS  float64 `json:"create_ms"`
	DestroyMS float64 `json:"destroy_ms"`
	Remark    string  `json:"remark,omitempty"`
	// CPUOnlineMS and CPUOfflineMS are the reference's CPU resize times
	// (0: none given).
	CPUOnlineMS  float64 `json:"cpu_online_ms,omitempty"`
	CPUOfflineMS float64 `json:"cpu_offline_ms,omitempty"`
}

// PaperTable4 is the RainForest paper's Table 4 line for RainForest.
func PaperTable4() Reference {
	return Reference{Source: "paper Table 4", System: "RainForest", CreateMS: 6100, DestroyMS: 0, CPUOnlineMS: 66, CPUOfflineMS: 54,
		Remark: "create 6.1 s, destroy ~0; CPU online 66 ms, offline 54 ms (Xen: 126 and 127 ms)"}
}

// Summary aggregates the successful samples of one system.
type Summary struct {
	System string `json:"system"`
	OK     int    `json:"ok"`
	Failed int    `json:"failed"`
	// CreateInitMS: create request to the guest's init, ms.
	CreateInitMS benchkit.Stats `json:"create_init_ms"`
	// CreateReturnMS: create request until it returned, ms.
	CreateReturnMS benchkit.Stats `json:"create_return_ms"`
	// DestroyReturnMS: destroy request until it returned, ms.
	DestroyReturnMS benchkit.Stats `json:"destroy_return_ms"`
	// DestroyMS: destroy request until everything is free, ms.
	DestroyMS benchkit.Stats `json:"destroy_ms"`
	// CreateInitP99 and DestroyP99 are the 99th percentiles of
	// CreateInitMS and DestroyMS.
	CreateInitP99 float64 `json:"create_init_p99_ms"`
	DestroyP99    float64 `json:"destroy_p99_ms"`
	// CPUOnlineMS and CPUOfflineMS are the CPU resizes (Table 4), with
	// their 99th percentiles; N is 0 where none was measured.
	CPUOnlineMS   benchkit.Stats `json:"cpu_online_ms"`
	CPUOnlineP99  float64        `json:"cpu_online_p99_ms"`
	CPUOfflineMS  benchkit.Stats `json:"cpu_offline_ms"`
	CPUOfflineP99 float64        `json:"cpu_offline_p99_ms"`
	// MemOnlineMS and MemOfflineMS are the memory resizes (Table 4),
	// with their 99th percentiles; N is 0 where none was measured.
	MemOnlineMS   benchkit.Stats `json:"mem_online_ms"`
	MemOnlineP99  float64        `json:"mem_online_p99_ms"`
	MemOfflineMS  benchkit.Stats `json:"mem_offline_ms"`
	MemOfflineP99 float64        `json:"mem_offline_p99_ms"`
}

// Operations of Table 4, in its order.
const (
	OpCreate     = "create"
	OpDestroy    = "destroy"
	OpCPUOnline  = "cpu online"
	OpCPUOffline = "cpu offline"
	OpMemOnline  = "memory online"
	OpMemOffline = "memory offline"
)

// Operations returns Table 4's operations in order.
func Operations() []string {
	return []string{OpCreate, OpDestroy, OpCPUOnline, OpCPUOffline, OpMemOnline, OpMemOffline}
}

// OpStats are one operation's statistics in a summary, ms.
type OpStats struct {
	Stats benchkit.Stats
	P99   float64
}

// Op returns the statistics of operation op (one of Operations; create
// is create->init, destroy until everything is free). N is 0 where none
// was measured.
func (s Summary) Op(op string) OpStats {
	switch op {
	case OpCreate:
		return OpStats{s.CreateInitMS, s.CreateInitP99}
	case OpDestroy:
		return OpStats{s.DestroyMS, s.DestroyP99}
	case OpCPUOnline:
		return OpStats{s.CPUOnlineMS, s.CPUOnlineP99}
	case OpCPUOffline:
		return OpStats{s.CPUOfflineMS, s.CPUOfflineP99}
	case OpMemOnline:
		return OpStats{s.MemOnlineMS, s.MemOnlineP99}
	case OpMemOffline:
		return OpStats{s.MemOfflineMS, s.MemOfflineP99}
	}
	return OpStats{}
}

// Ratio is System's time of an operation divided by Against's, for the
// median, the 99th percentile and the maximum (0 where either was not
// measured).
type Ratio struct {
	System  string  `json:"system"`
	Against string  `json:"against"`
	Op      string  `json:"op"`
	Median  float64 `json:"median"`
	P99     float64 `json:"p99"`
	Max     float64 `json:"max"`
}

// Ratios returns, for each system of against that has a summary, the
// ratios of system's times to its, per operation that both measured.
func Ratios(sums []Summary, system string, against ...string) []Ratio {
	find := func(name string) (Summary, bool) {
		for _, s := range sums {
			if s.System == name {
				return s, true
			}
		}
		return Summary{}, false
	}
	base, ok := find(system)
	if !ok {
		return nil
	}
	div := func(x, y float64) float64 {
		if x <= 0 || y <= 0 {
			return 0
		}
		return x / y
	}
	var out []Ratio
	for _, name := range against {
		other, ok := find(name)
		if !ok {
			continue
		}
		for _, op := range Operations() {
			b, o := base.Op(op), other.Op(op)
			if b.Stats.N == 0 || o.Stats.N == 0 {
				continue
			}
			out = append(out, Ratio{System: system, Against: name, Op: op, Median: div(b.Stats.Median, o.Stats.Median),
				P99: div(b.P99, o.P99), Max: div(b.Stats.Max, o.Stats.Max)})
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Summarize groups samples by system, in the order of systems (systems not
// listed follow in order of first appearance).
func Summarize(samples []sample.Sample, systems ...string) []Summary {
	groups := benchkit.GroupSamples(samples, func(s sample.Sample) string { return s.System }, sample.Sample.OK, systems...)
	out := make([]Summary, 0, len(groups))
	for _, g := range groups {
		sum := Summary{System: g.Name, OK: len(g.OK), Failed: g.Failed}
		var ci, cr, dr, d, on, off, mon, moff []float64
		for _, s := range g.OK {
			ci, cr = append(ci, ms(s.CreateInit)), append(cr, ms(s.CreateReturn))
			dr, d = append(dr, ms(s.DestroyReturn)), append(d, ms(s.Destroy))
			if s.CPUOnline > 0 && s.CPUOffline > 0 {
				on, off = append(on, ms(s.CPUOnline)), append(off, ms(s.CPUOffline))
			}
			if s.MemOnline > 0 && s.MemOffline > 0 {
				mon, moff = append(mon, ms(s.MemOnline)), append(moff, ms(s.MemOffline))
			}
		}
		sum.CPUOnlineMS, sum.CPUOfflineMS = benchkit.StatsOf(on), benchkit.StatsOf(off)
		sum.CPUOnlineP99, sum.CPUOfflineP99 = benchkit.Percentile(on, 99), benchkit.Percentile(off, 99)
		sum.MemOnlineMS, sum.MemOfflineMS = benchkit.StatsOf(mon), benchkit.StatsOf(moff)
		sum.MemOnlineP99, sum.MemOfflineP99 = benchkit.Percentile(mon, 99), benchkit.Percentile(moff, 99)
		sum.CreateInitMS, sum.CreateReturnMS = benchkit.StatsOf(ci), benchkit.StatsOf(cr)
		sum.DestroyReturnMS, sum.DestroyMS = benchkit.StatsOf(dr), benchkit.StatsOf(d)
		sum.CreateInitP99, sum.DestroyP99 = benchkit.Percentile(ci, 99), benchkit.Percentile(d, 99)
		out = append(out, sum)
	}
	return out
}

// Report is the outcome of one benchmark run.
type Report struct {
	// Completion marks a report whose session ended early: it holds
	// the samples measured before.
	benchkit.Completion
	// Settings says where each system ran, by system name.
	Settings map[string]string `json:"settings"`
	// Nested tells whether rfm ran inside the nested L1 guest.
	Nested bool `json:"nested"`
	// HostReason is nested.Needed's explanation.
	HostReason string `json:"host_reason"`
	Runs       int    `json:"runs"`
	// Guest describes the subOS (cores, memory, image).
	Guest string `json:"guest"`
	// Commands are the measured operations, by system and step.
	Commands map[string]map[string]string `json:"commands"`
	// Skipped says why a system was not measured, by system name.
	Skipped   map[string]string `json:"skipped,omitempty"`
	Samples   []sample.Sample   `json:"samples"`
	Summaries []Summary         `json:"summaries"`
	// Ratios are rfm's times against the other systems' (Ratios).
	Ratios     []Ratio     `json:"ratios,omitempty"`
	References []Reference `json:"references"`
	Notes      []string    `json:"notes,omitempty"`
	Date       string      `json:"date"`
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// WriteTable writes r as a text table with the reference line and notes.
func WriteTable(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "SubOS / VM / container lifecycle: %d create+destroy cycle(s) per system; %s\n", r.Runs, r.Guest)
	for _, k := range sortedKeys(r.Settings) {
		fmt.Fprintf(&b, "  %s: %s\n", k, r.Settings[k])
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tok\tcreate->init ms med\tmin\tmax\tcreate return ms med\tmin\tmax\tdestroy ms med\tmin\tmax\tdestroy return ms med\t")
	for _, s := range r.Summaries {
		if s.OK == 0 { // none measured (failed, or a session that ended early)
			fmt.Fprintf(tw, "%s\t0/%d\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", s.System, s.Failed)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n",
			s.System, s.OK, s.OK+s.Failed,
			s.CreateInitMS.Median, s.CreateInitMS.Min, s.CreateInitMS.Max,
			s.CreateReturnMS.Median, s.CreateReturnMS.Min, s.CreateReturnMS.Max,
			s.DestroyMS.Median, s.DestroyMS.Min, s.DestroyMS.Max, s.DestroyReturnMS.Median)
	}
	for _, ref := range r.References {
		fmt.Fprintf(tw, "%s (%s)\t\t%.0f\t\t\t\t\t\t%.0f\t\t\t\t\n", ref.System, ref.Source, ref.CreateMS, ref.DestroyMS)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	writeTable4(&b, r)
	for _, ref := range r.References {
		fmt.Fprintf(&b, "Reference: %s, %s: %s.\n", ref.Source, ref.System, ref.Remark)
	}
	for _, k := range sortedKeys(r.Skipped) {
		fmt.Fprintf(&b, "SKIPPED %s: %s\n", k, r.Skipped[k])
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "Note: %s\n", n)
	}
	for _, s := range r.Samples {
		if !s.OK() {
			fmt.Fprintf(&b, "FAILED %s run %d: %s\n", s.System, s.Run, benchkit.ShortenError(s.Error))
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// writeTable4 adds Table 4: per system and operation the number of
// samples, the median, 99th percentile and maximum; the paper's CPU
// resize times; and the ratios of rfm's times to the other systems'.
func writeTable4(b *strings.Builder, r *Report) {
	b.WriteString("\nTable 4, ms: create (to the guest's init), destroy, and resizes of a running instance " +
		"(CPU: one core more and back; memory: one step more and back):\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\toperation\tn\tmed\tp99\tmax\t")
	for _, s := range r.Summaries {
		for _, op := range Operations() {
			st := s.Op(op)
			if st.Stats.N == 0 {
				fmt.Fprintf(tw, "%s\t%s\t0\t-\t-\t-\t\n", s.System, op)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t\n", s.System, op, st.Stats.N, st.Stats.Median, st.P99, st.Stats.Max)
		}
	}
	for _, ref := range r.References {
		for _, v := range []struct {
			op string
			ms float64
		}{{OpCreate, ref.CreateMS}, {OpDestroy, ref.DestroyMS}, {OpCPUOnline, ref.CPUOnlineMS}, {OpCPUOffline, ref.CPUOfflineMS}} {
			if v.ms > 0 || v.op == OpDestroy {
				fmt.Fprintf(tw, "%s (%s)\t%s\t\t%.0f\t\t\t\n", ref.System, ref.Source, v.op, v.ms)
			}
		}
	}
	_ = tw.Flush()
	if len(r.Ratios) == 0 {
		return
	}
	b.WriteString("\nRatios (same run): the first system's time divided by the second's:\n")
	tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "ratio\toperation\tmed\tp99\tmax\t")
	x := func(v float64) string {
		if v <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v)
	}
	for _, q := range r.Ratios {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t\n", q.System, q.Against, q.Op, x(q.Median), x(q.P99), x(q.Max))
	}
	_ = tw.Flush()
}
