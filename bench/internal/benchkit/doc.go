// Package benchkit holds what RainForest's benchmarks (bench/boot and
// bench/lifecycle) share, so that both behave and print alike:
//
//   - the session's workspace: a temporary directory with the measured
//     programs built statically into it (NewWorkspace, BuildStatic), and
//     whether to measure inside the nested layer (NeedNested, from the
//     -nested flag);
//   - the result-line codec, `PREFIX k=v k2="quoted v"` on one line so that
//     it survives a serial console (FormatLine, LineFields, SplitFields,
//     ParseLines), and the progress filter that passes only such lines
//     (LineFilter, ProgressWriter);
//   - the report: samples grouped by name (GroupSamples), median/min/max
//     (StatsOf), failed runs' errors cut for the table (ShortenError), and
//     the table and JSON file written at the end (WriteReport, Finish).
//
// What each benchmark measures, its sample fields and its table stay in
// the benchmark.
package benchkit
