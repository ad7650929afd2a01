// Package report summarizes boot benchmark samples: per VMM median, min
// and max of the time to /init, of the memory overhead and of the idle
// wake-ups per second (the VMM's own threads and its vCPU threads apart),
// the ratios between two VMMs, and a text table with the threads that woke
// while the guest was idle; the Report is also the JSON document
// (benchkit.WriteJSONFile).
package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"rainforest/bench/boot/measure"
	"rainforest/bench/boot/wakeups"
	"rainforest/bench/internal/benchkit"
)

// Reference targets on real KVM hardware.
const (
	TargetInit        = 125 * time.Millisecond
	TargetOverheadMiB = 5.0
)

// OverheadNote states how the overhead is measured.
const OverheadNote = "overhead = VmRSS at /init: both VMMs back guest RAM with 2 MiB hugetlb pages, " +
	"which VmRSS does not count (they show as HugetlbPages), so VmRSS is the VMM's own memory; VmHWM is its peak"

// Summary aggregates the successful samples of one VMM.
type Summary struct {
	VMM    string `json:"vmm"`
	OK     int    `json:"ok"`
	Failed int    `json:"failed"`
	// InitMS is the time from VMM start to the /init marker, ms.
	InitMS benchkit.Stats `json:"init_ms"`
	// OverheadMiB is VmRSS at the marker, MiB.
	OverheadMiB benchkit.Stats `json:"overhead_mib"`
	// HWMMiB is VmHWM at the marker, MiB.
	HWMMiB benchkit.Stats `json:"vmhwm_mib"`
	// AnonMiB and MappedMiB split the overhead into anonymous memory and
	// mapped files plus shared memory (RssFile + RssShmem), MiB.
	AnonMiB   benchkit.Stats `json:"rss_anon_mib"`
	MappedMiB benchkit.Stats `json:"rss_file_shmem_mib"`
	// HugetlbMiB is the hugetlb memory mapped at the marker (guest RAM), MiB.
	HugetlbMiB benchkit.Stats `json:"hugetlb_mib"`
	// IdleVMM and IdleVCPU are the wake-ups per second, while the guest
	// was idle, of the VMM's own threads and of its vCPU threads (samples
	// with an idle window only).
	IdleVMM  benchkit.Stats `json:"idle_vmm_wakeups_per_s"`
	IdleVCPU benchkit.Stats `json:"idle_vcpu_wakeups_per_s"`
}

// Summarize groups samples by VMM, in the order of vmms (VMMs not listed
// follow in order of first appearance).
func Summarize(samples []measure.Sample, vmms ...string) []Summary {
	groups := benchkit.GroupSamples(samples, func(s measure.Sample) string { return s.VMM }, measure.Sample.OK, vmms...)
	out := make([]Summary, 0, len(groups))
	for _, g := range groups {
		sum := Summary{VMM: g.Name, OK: len(g.OK), Failed: g.Failed}
		var initMS, over, hwm, anon, mapped, huge, idleVMM, idleVCPU []float64
		for _, s := range g.OK {
			if s.Idle != nil {
				idleVMM = append(idleVMM, s.Idle.PerSecond(false))
				idleVCPU = append(idleVCPU, s.Idle.PerSecond(true))
			}
			initMS = append(initMS, float64(s.Init)/float64(time.Millisecond))
			over = append(over, kibToMiB(s.Status.VmRSS))
			hwm = append(hwm, kibToMiB(s.Status.VmHWM))
			anon = append(anon, kibToMiB(s.Status.RssAnon))
			mapped = append(mapped, kibToMiB(s.Status.RssFile+s.Status.RssShmem))
			huge = append(huge, kibToMiB(s.Status.HugetlbPages))
		}
		sum.InitMS, sum.OverheadMiB, sum.HWMMiB = benchkit.StatsOf(initMS), benchkit.StatsOf(over), benchkit.StatsOf(hwm)
		sum.AnonMiB, sum.MappedMiB, sum.HugetlbMiB = benchkit.StatsOf(anon), benchkit.StatsOf(mapped), benchkit.StatsOf(huge)
		sum.IdleVMM, sum.IdleVCPU = benchkit.StatsOf(idleVMM), benchkit.StatsOf(idleVCPU)
		out = append(out, sum)
	}
	return out
}

func kibToMiB(k uint64) float64 { return float64(k) / 1024 }

// Ratios compares the medians of two VMMs: Num / Den. A ratio is 0 when
// the denominator is 0.
type Ratios struct {
	Num      string  `json:"num"`
	Den      string  `json:"den"`
	Init     float64 `json:"init"`
	Overhead float64 `json:"overhead"`
	HWM      float64 `json:"vmhwm"`
}

// RatiosOf computes num/den from two summaries.
func RatiosOf(num, den Summary) Ratios {
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	return Ratios{
		Num: num.VMM, Den: den.VMM,
		Init:     div(num.InitMS.Median, den.InitMS.Median),
		Overhead: div(num.OverheadMiB.Median, den.OverheadMiB.Median),
		HWM:      div(num.HWMMiB.Median, den.HWMMiB.Median),
	}
}

// Report is the outcome of one benchmark run.
type Report struct {
	// Completion marks a report whose session ended early: it holds
	// the samples measured before.
	benchkit.Completion
	// Setting names where the VMMs ran, e.g. the nested-layer line.
	Setting string `json:"setting"`
	// Nested tells whether they ran inside the nested L1 guest.
	Nested bool `json:"nested"`
	// HostReason is nested.Needed's explanation.
	HostReason string `json:"host_reason"`
	Runs       int    `json:"runs"`
	CPUs       int    `json:"cpus"`
	MemoryMiB  int    `json:"memory_mib"`
	Cmdline    string `json:"cmdline"`
	// IdleAfter, IdleDelayS and IdleWindowS say when the idle window
	// opened (IdleDelayS seconds after the guest printed IdleAfter) and
	// how long it was.
	IdleAfter   string  `json:"idle_after"`
	IdleDelayS  float64 `json:"idle_delay_s"`
	IdleWindowS float64 `json:"idle_window_s"`
	// RFMBinary is the rfm binary measured when it was given (-rfm)
	// rather than built from this tree.
	RFMBinary string `json:"rfm_binary,omitempty"`
	// Commands are the VMM command lines, by VMM name.
	Commands  map[string]string `json:"commands"`
	Samples   []measure.Sample  `json:"samples"`
	Summaries []Summary         `json:"summaries"`
	Ratios    *Ratios           `json:"ratios,omitempty"`
	// TargetInitMS and TargetOverheadMiB are the real-KVM targets.
	TargetInitMS      float64  `json:"target_init_ms"`
	TargetOverheadMiB float64  `json:"target_overhead_mib"`
	Notes             []string `json:"notes,omitempty"`
	Date              string   `json:"date"`
}

// WriteTable writes r as a text table with its notes.
func WriteTable(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Boot to /init and VMM memory overhead: %d run(s) per VMM, %d vCPUs, %d MiB guest RAM on 2 MiB hugepages\n",
		r.Runs, r.CPUs, r.MemoryMiB)
	fmt.Fprintf(&b, "%s\n", r.Setting)
	if r.RFMBinary != "" {
		fmt.Fprintf(&b, "rfm measured: %s (not built from this tree)\n", r.RFMBinary)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VMM\tok\tinit ms med\tmin\tmax\toverhead MiB med\tmin\tmax\tVmHWM MiB med\tanon\tfile+shmem\thugetlb MiB\t")
	for _, s := range r.Summaries {
		if s.OK == 0 { // none measured (failed, or a session that ended early)
			fmt.Fprintf(tw, "%s\t0/%d\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", s.VMM, s.Failed)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f\t\n",
			s.VMM, s.OK, s.OK+s.Failed,
			s.InitMS.Median, s.InitMS.Min, s.InitMS.Max,
			s.OverheadMiB.Median, s.OverheadMiB.Min, s.OverheadMiB.Max,
			s.HWMMiB.Median, s.AnonMiB.Median, s.MappedMiB.Median, s.HugetlbMiB.Median)
	}
	if r.Ratios != nil {
		fmt.Fprintf(tw, "%s/%s\t\t%.2fx\t\t\t%.2fx\t\t\t%.2fx\t\t\t\t\n",
			r.Ratios.Num, r.Ratios.Den, r.Ratios.Init, r.Ratios.Overhead, r.Ratios.HWM)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	fmt.Fprintf(&b, "\n%s. anon and file+shmem (medians) split VmRSS into RssAnon and RssFile+RssShmem.\n", OverheadNote)
	fmt.Fprintf(&b, "Targets on real KVM: start to /init < %.0f ms, overhead < %.0f MiB.\n", r.TargetInitMS, r.TargetOverheadMiB)
	writeIdle(&b, r)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "Note: %s\n", n)
	}
	for _, s := range r.Samples {
		if !s.OK() {
			fmt.Fprintf(&b, "FAILED %s run %d: %s\n", s.VMM, s.Run, benchkit.ShortenError(s.Error))
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// writeIdle writes the idle wake-up table, when a sample has an idle
// window, and the VMM threads (not vCPUs) that woke in each run.
func writeIdle(b *strings.Builder, r *Report) {
	var waking []string
	for _, s := range r.Samples {
		if s.Idle == nil {
			continue
		}
		threads := s.Idle.Waking(false)
		if len(threads) == 0 {
			waking = append(waking, fmt.Sprintf("  %s run %d: none", s.VMM, s.Run))
		}
		for _, c := range threads {
			waking = append(waking, fmt.Sprintf("  %s run %d: %s", s.VMM, s.Run, threadLine(*s.Idle, c)))
		}
	}
	if len(waking) == 0 {
		return
	}
	fmt.Fprintf(b, "\nIdle wake-ups per second: context switches over %.0f s from %.0f s after the guest printed %s (then idle in rf.cmd)\n\n",
		r.IdleWindowS, r.IdleDelayS, r.IdleAfter)
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VMM\truns\tVMM threads med\tmin\tmax\tvCPU threads med\tmin\tmax\t")
	for _, s := range r.Summaries {
		if s.IdleVMM.N == 0 {
			fmt.Fprintf(tw, "%s\t0\t-\t-\t-\t-\t-\t-\t\n", s.VMM)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", s.VMM, s.IdleVMM.N,
			s.IdleVMM.Median, s.IdleVMM.Min, s.IdleVMM.Max, s.IdleVCPU.Median, s.IdleVCPU.Min, s.IdleVCPU.Max)
	}
	tw.Flush()
	fmt.Fprintf(b, "\nVMM threads (not vCPUs) that woke while the guest was idle, most frequent first, with what they were seen blocked in:\n%s\n\n",
		strings.Join(waking, "\n"))
}

// ThreadLines describes every thread of w that woke, the VMM's own
// threads first, one line each.
func ThreadLines(w wakeups.Window) []string {
	var out []string
	for _, vcpu := range []bool{false, true} {
		for _, c := range w.Waking(vcpu) {
			out = append(out, threadLine(w, c))
		}
	}
	return out
}

// threadLine says how often thread c woke and in what it was blocked.
func threadLine(w wakeups.Window, c wakeups.Count) string {
	line := fmt.Sprintf("tid %d %q: %.1f/s (%d voluntary, %d not)", c.TID, c.Name, w.Rate(c), c.Voluntary, c.Nonvoluntary)
	switch {
	case c.Started:
		line += ", started in the window"
	case c.Ended:
		line += ", ended in the window"
	}
	if d := c.Describe(); d != "" {
		line += "; blocked in: " + d
	}
	return line
}
