package untrusted

import (
	"io"
	"unicode/utf8"
)

// EscapeWriter escapes guest text for a terminal as EscapeTerminal does,
// for text that arrives in pieces (a followed log): a UTF-8 sequence or a
// "\r\n" cut between two writes is held back until the next write
// completes it, so that each piece is escaped as the whole text would be.
// Flush writes out what is held back.
type EscapeWriter struct {
	w    io.Writer
	held []byte // an incomplete end of the last write
}

// NewEscapeWriter returns an EscapeWriter writing to w.
func NewEscapeWriter(w io.Writer) *EscapeWriter { return &EscapeWriter{w: w} }

// Write escapes p (after what was held back) and writes all but an
// incomplete end of it.
func (e *EscapeWriter) Write(p []byte) (int, error) {
	b := append(e.held, p...)
	cut := incompleteEnd(b)
	e.held = append([]byte(nil), b[len(b)-cut:]...)
	if _, err := e.w.Write(EscapeTerminal(b[:len(b)-cut])); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush escapes and writes what is held back.
func (e *EscapeWriter) Flush() error {
	if len(e.held) == 0 {
		return nil
	}
	_, err := e.w.Write(EscapeTerminal(e.held))
	e.held = nil
	return err
}

// incompleteEnd is the length of b's end that the next bytes may change
// the escaping of: a final '\r' (shown as is before '\n', escaped
// otherwise) or the start of a UTF-8 sequence not yet complete.
func incompleteEnd(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	if b[len(b)-1] == '\r' {
		return 1
	}
	for n := 1; n < utf8.UTFMax && n <= len(b); n++ {
		c := b[len(b)-n]
		if !utf8.RuneStart(c) {
			continue // a continuation byte: look further back
		}
		if c < utf8.RuneSelf || utf8.FullRune(b[len(b)-n:]) {
			return 0
		}
		return n
	}
	return 0
}
