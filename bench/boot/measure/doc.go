// Package measure times a VMM from process start to the guest's /init and
// samples its memory at that moment. Measure starts the VMM, scans its
// stdout (the guest console) for a marker, reads /proc/PID/status (VmRSS,
// VmHWM, HugetlbPages) as soon as the marker appears, and waits for the
// VMM to exit. Optionally (Spec.Idle), once a later console text says the
// guest is idle, it counts the context switches of the VMM's threads over
// a window (package wakeups). Results travel as one text line per run
// (FormatLine, ParseLine), so that they survive a serial console.
package measure
