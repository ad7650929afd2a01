// Package report summarizes subOS and container lifecycle samples: per
// system the median, minimum and maximum of the create and destroy
// latencies, and a text table with the paper's reference line; the Report
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
	// CPUOnlineMS and CPUOfflineMS are the resizes (Table 4), with
	// their 99th percentiles; N is 0 where none was measured.
	CPUOnlineMS   benchkit.Stats `json:"cpu_online_ms"`
	CPUOnlineP99  float64        `json:"cpu_online_p99_ms"`
	CPUOfflineMS  benchkit.Stats `json:"cpu_offline_ms"`
	CPUOfflineP99 float64        `json:"cpu_offline_p99_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Summarize groups samples by system, in the order of systems (systems not
// listed follow in order of first appearance).
func Summarize(samples []sample.Sample, systems ...string) []Summary {
	groups := benchkit.GroupSamples(samples, func(s sample.Sample) string { return s.System }, sample.Sample.OK, systems...)
	out := make([]Summary, 0, len(groups))
	for _, g := range groups {
		sum := Summary{System: g.Name, OK: len(g.OK), Failed: g.Failed}
		var ci, cr, dr, d, on, off []float64
		for _, s := range g.OK {
			ci, cr = append(ci, ms(s.CreateInit)), append(cr, ms(s.CreateReturn))
			dr, d = append(dr, ms(s.DestroyReturn)), append(d, ms(s.Destroy))
			if s.CPUOnline > 0 && s.CPUOffline > 0 {
				on, off = append(on, ms(s.CPUOnline)), append(off, ms(s.CPUOffline))
			}
		}
		sum.CPUOnlineMS, sum.CPUOfflineMS = benchkit.StatsOf(on), benchkit.StatsOf(off)
		if len(on) > 0 {
			sum.CPUOnlineP99, sum.CPUOfflineP99 = benchkit.Percentile(on, 99), benchkit.Percentile(off, 99)
		}
		sum.CreateInitMS, sum.CreateReturnMS = benchkit.StatsOf(ci), benchkit.StatsOf(cr)
		sum.DestroyReturnMS, sum.DestroyMS = benchkit.StatsOf(dr), benchkit.StatsOf(d)
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
	Skipped    map[string]string `json:"skipped,omitempty"`
	Samples    []sample.Sample   `json:"samples"`
	Summaries  []Summary         `json:"summaries"`
	References []Reference       `json:"references"`
	Notes      []string          `json:"notes,omitempty"`
	Date       string            `json:"date"`
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
	fmt.Fprintf(&b, "SubOS / container lifecycle: %d create+destroy cycle(s) per system; %s\n", r.Runs, r.Guest)
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
	writeResizeTable(&b, r)
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

// writeResizeTable adds the CPU resize rows of Table 4: per system the
// median, 99th percentile and maximum of CPU online and offline, and the
// ratio of rfm's median to each system's.
func writeResizeTable(b *strings.Builder, r *Report) {
	var base Summary
	for _, s := range r.Summaries {
		if s.System == "rfm" {
			base = s
		}
	}
	measured := false
	for _, s := range r.Summaries {
		measured = measured || s.CPUOnlineMS.N > 0
	}
	if !measured {
		return
	}
	b.WriteString("\nCPU resize of a running instance, one core more and back (Table 4's CPU online and offline):\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tn\tonline ms med\tp99\tmax\toffline ms med\tp99\tmax\trfm/this online\toffline\t")
	for _, s := range r.Summaries {
		if s.CPUOnlineMS.N == 0 {
			fmt.Fprintf(tw, "%s\t0\t-\t-\t-\t-\t-\t-\t-\t-\t\n", s.System)
			continue
		}
		ratio := func(x, y float64) string {
			if y <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.2fx", x/y)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t\n", s.System, s.CPUOnlineMS.N,
			s.CPUOnlineMS.Median, s.CPUOnlineP99, s.CPUOnlineMS.Max, s.CPUOfflineMS.Median, s.CPUOfflineP99, s.CPUOfflineMS.Max,
			ratio(base.CPUOnlineMS.Median, s.CPUOnlineMS.Median), ratio(base.CPUOfflineMS.Median, s.CPUOfflineMS.Median))
	}
	for _, ref := range r.References {
		if ref.CPUOnlineMS > 0 {
			fmt.Fprintf(tw, "%s (%s)\t\t%.0f\t\t\t%.0f\t\t\t\t\t\n", ref.System, ref.Source, ref.CPUOnlineMS, ref.CPUOfflineMS)
		}
	}
	_ = tw.Flush()
}
