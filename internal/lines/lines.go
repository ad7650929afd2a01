// Package lines cuts a byte stream into lines as it arrives: Writer is an
// io.Writer that hands each complete line to a function, so that a
// program's or a serial console's output can be followed line by line
// while it runs.
package lines

import "bytes"

// MaxPartial bounds the unterminated line a Writer keeps between writes;
// a longer one is handed over as it is, as if it had ended.
const MaxPartial = 64 << 10

// Writer is an io.Writer that calls a function with each complete line
// written to it. It is not safe for concurrent writes (exec.Cmd gives a
// writer used as both Stdout and Stderr to one goroutine at a time).
type Writer struct {
	line    func(string)
	partial []byte
}

// NewWriter returns a Writer calling line with each line, without its
// "\n" and without the carriage returns before it (a serial console ends
// lines with "\r\n", and one relaying a guest's console with "\r\r\n").
func NewWriter(line func(string)) *Writer { return &Writer{line: line} }

// Write takes p in full and never fails.
func (w *Writer) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	rest := w.partial
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		w.line(string(bytes.TrimRight(rest[:i], "\r")))
		rest = rest[i+1:]
	}
	if len(rest) > MaxPartial {
		w.line(string(rest))
		rest = nil
	}
	// Move the unterminated rest to the front of the buffer, which so
	// stays as large as the largest write.
	w.partial = append(w.partial[:0], rest...)
	return len(p), nil
}

// Flush hands over the unterminated rest, if any, as a last line.
func (w *Writer) Flush() {
	if len(w.partial) > 0 {
		w.line(string(bytes.TrimRight(w.partial, "\r")))
		w.partial = w.partial[:0]
	}
}
