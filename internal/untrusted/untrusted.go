// Package untrusted handles text a guest wrote (its console log, a VMM's
// output it can influence) on its way to places the host's people read: an
// audit event, an error, a log line, a terminal. Such text is bounded and
// escaped so that it can neither grow those places without limit nor pass
// for the host's own text (a forged line "destroy by uid 0", terminal
// escape sequences, bidirectional overrides).
//
// Quote makes a bounded, visibly quoted one-line string; EscapeTerminal
// keeps line structure but makes control sequences visible; ReadTail and
// LastLines read only the end of a file of any size.
package untrusted

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Ellipsis follows a quoted string that Quote truncated.
const Ellipsis = "…"

// Quote returns b, cut to at most max bytes on a rune boundary, as a Go
// double-quoted string: quotes, backslashes, control characters (newlines
// too), invalid UTF-8 and non-printable runes (U+202E and the like) are
// escaped, so the result is one line and starts and ends with a quote.
// Truncated text is followed by Ellipsis. The result is at most about
// 4*max+5 bytes.
func Quote(b []byte, max int) string {
	cut := Truncate(b, max)
	q := strconv.Quote(string(cut))
	if len(cut) < len(b) {
		q += Ellipsis
	}
	return q
}

// Truncate returns the longest prefix of b of at most max bytes that does
// not end inside a UTF-8 sequence (b itself when it is short enough).
func Truncate(b []byte, max int) []byte {
	if max < 0 {
		max = 0
	}
	if len(b) <= max {
		return b
	}
	i := max
	for k := 0; k < utf8.UTFMax-1 && i > 0 && !utf8.RuneStart(b[i]); k++ {
		i--
	}
	if !utf8.RuneStart(b[i]) { // invalid bytes: any cut will do
		i = max
	}
	return b[:i]
}

// EscapeTerminal returns b with everything that could act on a terminal
// made visible: control characters other than newline and tab (a carriage
// return only where it ends a line, "\r\n"), escape sequences, invalid
// UTF-8 and non-printable runes become Go-style escapes (\x1b, \u202e).
// Lines stay lines; the result is safe to print to a terminal.
func EscapeTerminal(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == '\n' || r == '\t':
			out = append(out, byte(r))
		case r == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r')
		case r == utf8.RuneError && n == 1:
			out = fmt.Appendf(out, `\x%02x`, b[i])
		case r == '\\':
			out = append(out, '\\', '\\')
		case unicode.IsPrint(r) || r == ' ':
			out = append(out, b[i:i+n]...)
		default:
			q := strconv.QuoteRuneToASCII(r) // 'x' with the escape inside
			out = append(out, q[1:len(q)-1]...)
		}
		i += n
	}
	return out
}

// ReadTail returns the last max bytes of the file at path (all of it when
// it is shorter), reading nothing before them, however big the file.
func ReadTail(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadTailOf(f, max)
}

// ReadTailOf is ReadTail on an open file (or anything that can seek).
func ReadTailOf(f io.ReadSeeker, max int64) ([]byte, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("read tail: %w", err)
	}
	start := size - min(size, max)
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read tail: %w", err)
	}
	buf := make([]byte, size-start)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) { // shrunk meanwhile
		return nil, fmt.Errorf("read tail: %w", err)
	}
	return buf[:n], nil
}

// LastLines returns up to n last non-empty lines of b (without their line
// ends); with a tail read by ReadTail the first may be partial.
func LastLines(b []byte, n int) [][]byte {
	var lines [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimRight(l, "\r"); len(bytes.TrimSpace(l)) > 0 {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
