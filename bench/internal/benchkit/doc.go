// Package benchkit holds what RainForest's benchmarks (bench/boot,
// bench/lifecycle, bench/rfcom, bench/hotplug, bench/hardening) share, so
// that they behave and print alike:
//
//   - the session's workspace: a temporary directory with the measured
//     programs built statically into it (NewWorkspace, BuildStatic); the
//     session itself runs through internal/kvmhost, nested or directly;
//     a measurer's bound on a run whose VMM cannot be killed (Bounded);
//   - the result-line codec, `PREFIX k=v k2="quoted v"` on one line so that
//     it survives a serial console (FormatLine, LineFields, SplitFields,
//     ParseLines), and the Collector that parses such lines as a session
//     streams them and reports each result as it arrives;
//   - the report: samples grouped by name (GroupSamples), median/min/max
//     (StatsOf) and nearest-rank percentiles (Percentile), failed runs'
//     errors cut for the table (ShortenError), the mark of a report whose
//     session ended early (Completion), and the table and JSON file written
//     at the end (WriteReport, Finish).
//
// What each benchmark measures, its sample fields and its table stay in
// the benchmark.
package benchkit
