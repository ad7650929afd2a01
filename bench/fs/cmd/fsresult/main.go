// Command fsresult turns one fio run's JSON output (stdin) into the
// filesystem benchmark's result line (bench/fs/report) on stdout. It runs
// where fio's output is: in the nested L1 guest for the host and rfm
// rows, in the QEMU guest for QEMU's. A run that failed (fio's exit status
// given with -status, or output that does not parse) gives a line with
// the error.
//
//	fio ... --output-format=json | fsresult -system host -workload seqread -run 1 -status $?
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"rainforest/bench/fs/fio"
	"rainforest/bench/fs/report"
)

func main() {
	var system, workload, fail string
	var run, status int
	flag.StringVar(&system, "system", "", "system measured")
	flag.StringVar(&workload, "workload", "", "workload")
	flag.IntVar(&run, "run", 0, "repetition, from 1")
	flag.IntVar(&status, "status", 0, "fio's exit status")
	flag.StringVar(&fail, "error", "", "report this error instead of reading stdin")
	flag.Parse()
	if system == "" || workload == "" || run < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: fsresult -system S -workload W -run N [-status N] [-error TEXT] < fio.json")
		os.Exit(2)
	}
	fmt.Println(report.FormatLine(line(system, workload, run, status, fail, os.Stdin)))
}

// line reads fio's output from in and makes the sample.
func line(system, workload string, run, status int, fail string, in io.Reader) report.Sample {
	s := report.Sample{System: system, Workload: workload, Run: run}
	if fail != "" {
		s.Error = fail
		return s
	}
	out, err := io.ReadAll(io.LimitReader(in, 2<<20))
	if err != nil {
		s.Error = err.Error()
		return s
	}
	r, err := fio.Parse(out)
	switch {
	case status != 0:
		s.Error = fmt.Sprintf("fio exited with %d: %.300q", status, out)
	case err != nil:
		s.Error = err.Error()
	default:
		s = report.FromResult(system, workload, run, r)
	}
	return s
}
