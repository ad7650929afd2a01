package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"rainforest/ledger"
	"rainforest/rfm/api"
)

// Exit statuses (documented in the root command's help).
const (
	exitFailed   = 1 // the operation failed
	exitUsage    = 2 // unknown command or flag, wrong arguments, a bad flag value
	exitNotFound = 3 // no such subOS, disk or segment (API 404)
	exitConflict = 4 // the name is taken, the device is busy (API 409)
)

// exitError ends rfm with status code; err, when set, is printed first.
// rfm check's problems and rfm vmm's guest status use it.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("exit status %d", e.code)
}

func (e exitError) Unwrap() error { return e.err }

// usageError is a command line rfm does not understand: exit status 2.
type usageError struct {
	err error
	cmd *cobra.Command // the command, for its usage line; nil for none
}

func (e usageError) Error() string {
	if e.cmd == nil {
		return e.err.Error()
	}
	return fmt.Sprintf("%v (usage: %s; see %s --help)", e.err, e.cmd.UseLine(), e.cmd.CommandPath())
}

func (e usageError) Unwrap() error { return e.err }

// usageErrorf is a usage error about a flag value or argument, reported
// without the usage line (the message names the flag).
func usageErrorf(format string, a ...any) error {
	return usageError{err: fmt.Errorf(format, a...)}
}

// classify returns the exit status of err and the code naming it in a
// JSON error ("" for an error that is not printed).
func classify(err error) (int, string) {
	var ee exitError
	var ue usageError
	switch {
	case errors.As(err, &ee):
		if ee.err == nil {
			return ee.code, ""
		}
		return ee.code, "failed"
	case errors.As(err, &ue):
		return exitUsage, "usage"
	case errors.Is(err, api.ErrVersionMismatch):
		return exitFailed, "version_mismatch"
	case errors.Is(err, api.ErrNotFound):
		return exitNotFound, "not_found"
	case errors.Is(err, api.ErrConflict):
		return exitConflict, "conflict"
	case errors.Is(err, api.ErrPermission):
		return exitFailed, "permission_denied"
	case errors.Is(err, api.ErrNotReachable):
		return exitFailed, "not_reachable"
	}
	return exitFailed, "failed"
}

// errorJSON is how an error is printed under -o json.
type errorJSON struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// Problems are the supervisor's reasons for refusing a request.
	Problems []ledger.Problem `json:"problems,omitempty"`
}

// report prints err (if it is to be printed) to w, as JSON when format
// is json, and returns the exit status.
func report(w io.Writer, err error, format outputFormat) int {
	if err == nil {
		return 0
	}
	status, code := classify(err)
	if code == "" {
		return status
	}
	if format != outputJSON {
		fmt.Fprintln(w, "rfm:", err)
		return status
	}
	out := errorJSON{Error: err.Error(), Code: code}
	var ae *api.APIError
	if errors.As(err, &ae) {
		out.Problems = ae.Body.Problems
	}
	b, _ := json.Marshal(out)
	fmt.Fprintf(w, "%s\n", b)
	return status
}

// outputFormat is the -o flag: table or json, checked as the flag is
// parsed (before any work), so a wrong one is a usage error.
type outputFormat string

// Output formats.
const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

var outputFormats = []string{string(outputTable), string(outputJSON)}

func (o *outputFormat) String() string { return string(*o) }

func (o *outputFormat) Set(v string) error {
	switch outputFormat(v) {
	case outputTable, outputJSON:
		*o = outputFormat(v)
		return nil
	}
	return fmt.Errorf("unknown output format %q: use %s", v, strings.Join(outputFormats, " or "))
}

func (o *outputFormat) Type() string { return "table|json" }

// addOutputFlag gives cmd the -o flag (only commands that print a result
// have it).
func (g *globalFlags) addOutputFlag(cmd *cobra.Command, what string) {
	cmd.Flags().VarP(&g.output, "output", "o", "output format: table or json"+what)
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats, cobra.ShellCompDirectiveNoFileComp))
}

// print writes v as JSON with -o json, else calls table.
func (g *globalFlags) print(w io.Writer, v any, table func(w io.Writer)) error {
	switch g.output {
	case outputJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "", outputTable:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return usageErrorf("-o %q: use table or json", g.output)
}

// nonNil returns s, or an empty slice for nil, so that JSON shows an empty
// list as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
