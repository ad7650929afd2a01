package benchkit

import (
	"io"
	"strings"
)

// maxPartialLine bounds the unterminated tail a LineFilter keeps; a longer
// one is dropped.
const maxPartialLine = 1 << 16

// LineFilter is an io.Writer that passes to W the complete lines that
// contain Prefix (leading carriage returns removed) and drops the rest:
// the benchmarks' progress output while a long session runs.
type LineFilter struct {
	W      io.Writer
	Prefix string

	partial []byte
}

// NewLineFilter returns a LineFilter writing the lines containing prefix
// to w.
func NewLineFilter(w io.Writer, prefix string) *LineFilter {
	return &LineFilter{W: w, Prefix: prefix}
}

// Write takes p in full and never fails: write errors of W are ignored, so
// that progress output never stops the session.
func (f *LineFilter) Write(p []byte) (int, error) {
	f.partial = append(f.partial, p...)
	for {
		i := strings.IndexByte(string(f.partial), '\n')
		if i < 0 {
			break
		}
		line := string(f.partial[:i+1])
		f.partial = f.partial[i+1:]
		if strings.Contains(line, f.Prefix) {
			io.WriteString(f.W, strings.TrimLeft(line, "\r"))
		}
	}
	if len(f.partial) > maxPartialLine {
		f.partial = nil
	}
	return len(p), nil
}

// ProgressWriter is where a session's output goes on its way to log: all
// of it when verbose, otherwise only the lines containing prefix.
func ProgressWriter(log io.Writer, prefix string, verbose bool) io.Writer {
	if verbose {
		return log
	}
	return NewLineFilter(log, prefix)
}
