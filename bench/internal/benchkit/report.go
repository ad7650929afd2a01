package benchkit

import (
	"fmt"
	"io"
)

// WriteReport writes a benchmark's report: its table (writeTable) to w,
// headed by a line saying so when the report is partial (it embeds
// Completion), and, when jsonPath is not empty, rep as JSON to that file
// (WriteJSONFile), then a line naming the file on w. It tries both and
// returns the first error.
func WriteReport[R any](w io.Writer, rep *R, writeTable func(io.Writer, *R) error, jsonPath string) error {
	io.WriteString(w, partialNote(rep))
	err := writeTable(w, rep)
	if jsonPath == "" {
		return err
	}
	if jerr := WriteJSONFile(jsonPath, rep); jerr != nil {
		if err == nil {
			err = jerr
		}
		return err
	}
	fmt.Fprintf(w, "JSON: %s\n", jsonPath)
	return err
}

// Finish ends a benchmark command: it writes the report, when the run
// produced one, with WriteReport to stdout and jsonPath, then prints the
// run's error, or else a write error, on stderr after name. It returns
// the exit status: 0, or 1 after an error.
func Finish[R any](stdout, stderr io.Writer, name string, rep *R, runErr error, writeTable func(io.Writer, *R) error, jsonPath string) int {
	err := runErr
	if rep != nil {
		if werr := WriteReport(stdout, rep, writeTable, jsonPath); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, name+":", err)
		return 1
	}
	return 0
}
