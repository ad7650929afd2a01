// Package report summarizes hot-plug benchmark samples per system and
// operation (median, p99, min and max of the time to completion, and the
// medians of its parts), compares the systems, and writes the table; the
// Report is also the JSON document (benchkit.WriteJSONFile).
package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"rainforest/bench/hotplug/hotmeasure"
	"rainforest/bench/internal/benchkit"
)

// Summary aggregates the successful samples of one system and operation.
type Summary struct {
	System string `json:"system"`
	Op     string `json:"op"`
	OK     int    `json:"ok"`
	Failed int    `json:"failed"`
	// DoneMS is the time to completion (hotmeasure.Sample.Done), ms;
	// DoneP99MS its 99th percentile (nearest rank: with fewer than 100
	// samples, the maximum).
	DoneMS    benchkit.Stats `json:"done_ms"`
	DoneP99MS float64        `json:"done_p99_ms"`
	// RequestMS, GuestMS and RemovedMS are the parts (Sample.Request,
	// Guest, Removed), ms.
	RequestMS benchkit.Stats `json:"request_ms"`
	GuestMS   benchkit.Stats `json:"guest_ms"`
	RemovedMS benchkit.Stats `json:"removed_ms"`
	// CLIMS is the command line tool's part of a request (Sample.CLI),
	// for systems that have one, ms.
	CLIMS benchkit.Stats `json:"cli_ms"`
}

// Summarize groups samples by system (systems in that order, others
// after) and operation (add, then remove).
func Summarize(samples []hotmeasure.Sample, systems ...string) []Summary {
	groups := benchkit.GroupSamples(samples, func(s hotmeasure.Sample) string { return s.System + "\x00" + s.Op },
		hotmeasure.Sample.OK, keys(samples, systems)...)
	out := make([]Summary, 0, len(groups))
	for _, g := range groups {
		system, op, _ := strings.Cut(g.Name, "\x00")
		sum := Summary{System: system, Op: op, OK: len(g.OK), Failed: g.Failed}
		var done, req, guest, removed, cli []float64
		for _, s := range g.OK {
			if s.CLI > 0 {
				cli = append(cli, ms(s.CLI))
			}
			done = append(done, ms(s.Done()))
			req = append(req, ms(s.Request))
			guest = append(guest, ms(s.Guest))
			if s.Op == hotmeasure.OpRemove {
				removed = append(removed, ms(s.Removed))
			}
		}
		sum.DoneMS, sum.DoneP99MS = benchkit.StatsOf(done), benchkit.Percentile(done, 99)
		sum.RequestMS, sum.GuestMS, sum.RemovedMS = benchkit.StatsOf(req), benchkit.StatsOf(guest), benchkit.StatsOf(removed)
		sum.CLIMS = benchkit.StatsOf(cli)
		out = append(out, sum)
	}
	return out
}

// keys lists the group names: each system's add and remove, the listed
// systems first.
func keys(samples []hotmeasure.Sample, systems []string) []string {
	all := append([]string(nil), systems...)
	for _, s := range samples {
		found := false
		for _, n := range all {
			found = found || n == s.System
		}
		if !found {
			all = append(all, s.System)
		}
	}
	var out []string
	for _, sys := range all {
		out = append(out, sys+"\x00"+hotmeasure.OpAdd, sys+"\x00"+hotmeasure.OpRemove)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Report is the outcome of one benchmark run.
type Report struct {
	// Completion marks a report whose session ended early.
	benchkit.Completion
	// Setting names where the systems ran; Nested whether inside the
	// nested L1 guest, and HostReason why.
	Setting    string `json:"setting"`
	Nested     bool   `json:"nested"`
	HostReason string `json:"host_reason"`
	Runs       int    `json:"runs"`
	CPUs       int    `json:"cpus"`
	MemoryMiB  int    `json:"memory_mib"`
	// Cmdline is the guests' kernel command line.
	Cmdline string `json:"cmdline"`
	// Commands are the measurer's command lines of run 1, by system.
	Commands  map[string]string   `json:"commands"`
	Samples   []hotmeasure.Sample `json:"samples"`
	Summaries []Summary           `json:"summaries"`
	Notes     []string            `json:"notes,omitempty"`
	Date      string              `json:"date"`
}

// WriteTable writes r as a text table with its notes.
func WriteTable(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Disk hot-add and hot-remove on a running guest: %d run(s) per system, %d vCPU, %d MiB\n%s\n\n",
		r.Runs, r.CPUs, r.MemoryMiB, r.Setting)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\top\tok\tmedian ms\tp99\tmin\tmax\trequest med\tguest med\tremoved med\t")
	for _, s := range r.Summaries {
		if s.OK == 0 {
			fmt.Fprintf(tw, "%s\t%s\t0/%d\t-\t-\t-\t-\t-\t-\t-\t\n", s.System, s.Op, s.Failed)
			continue
		}
		removed := "-"
		if s.Op == hotmeasure.OpRemove {
			removed = fmt.Sprintf("%.0f", s.RemovedMS.Median)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t\n", s.System, s.Op, s.OK, s.OK+s.Failed,
			s.DoneMS.Median, s.DoneP99MS, s.DoneMS.Min, s.DoneMS.Max, s.RequestMS.Median, s.GuestMS.Median, removed)
	}
	for _, op := range []string{hotmeasure.OpAdd, hotmeasure.OpRemove} {
		if num, den, ok := pair(r.Summaries, op); ok {
			fmt.Fprintf(tw, "%s/%s\t%s\t\t%.2fx\t%.2fx\t\t\t\t\t\t\n", num.System, den.System, op,
				num.DoneMS.Median/den.DoneMS.Median, num.DoneP99MS/den.DoneP99MS)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	b.WriteString("\nmedian/p99/min/max: from issuing the request to completion: add, the guest's line that /dev/vdb appeared; remove, the later of\n" +
		"the guest's line that /dev/vdb went and the VMM saying the device is gone (QEMU: DEVICE_DELETED; rfm: rfm detach returned).\n" +
		"request: until the request was answered (rfm attach/detach exited, QMP returned); guest: until the guest's line. p99 is the\n" +
		"nearest rank: with fewer than 100 runs, the maximum.\n")
	for _, s := range r.Summaries {
		if s.CLIMS.N > 0 {
			fmt.Fprintf(&b, "%s %s: a request that changes nothing (rfm inspect, timed just before) took %.0f ms (median; %.0f-%.0f): "+
				"the command line tool's part of the request.\n", s.System, s.Op, s.CLIMS.Median, s.CLIMS.Min, s.CLIMS.Max)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "Note: %s\n", n)
	}
	for _, s := range r.Samples {
		if !s.OK() {
			fmt.Fprintf(&b, "FAILED %s run %d %s: %s\n", s.System, s.Run, s.Op, benchkit.ShortenError(s.Error))
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// pair returns the first two systems' summaries of op when both have
// samples.
func pair(sums []Summary, op string) (num, den Summary, ok bool) {
	var got []Summary
	for _, s := range sums {
		if s.Op == op {
			got = append(got, s)
		}
	}
	if len(got) < 2 || got[0].OK == 0 || got[1].OK == 0 || got[1].DoneMS.Median == 0 || got[1].DoneP99MS == 0 {
		return Summary{}, Summary{}, false
	}
	return got[0], got[1], true
}
