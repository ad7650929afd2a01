package benchkit

import (
	"fmt"
	"strconv"
	"strings"
)

// A result line is PREFIX followed by space-separated key=value fields, on
// one line, so that it survives a serial console:
//
//	RF-BENCH vmm=rfm run=1 init_us=5695138 error="marker not seen"
//
// A value is Go-quoted when it is empty, holds a space, tab, quote, '=',
// backslash, CR or LF, or a character strconv.CanBackquote rejects; the
// error field, last when present, is always Go-quoted.

// ErrorKey is the key of a result line's error field.
const ErrorKey = "error"

// Field is one key=value field of a result line.
type Field struct{ Key, Value string }

// QuoteValue returns v as a field value: unchanged, or Go-quoted where v
// would not survive as a bare value.
func QuoteValue(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\"=\\\r\n") || !strconv.CanBackquote(v) {
		return strconv.Quote(v)
	}
	return v
}

// FormatLine renders prefix and fields as a result line; when errText is
// not empty, an always-quoted error field ends the line.
func FormatLine(prefix string, fields []Field, errText string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, f := range fields {
		b.WriteString(" " + f.Key + "=" + QuoteValue(f.Value))
	}
	if errText != "" {
		b.WriteString(" " + ErrorKey + "=" + strconv.Quote(errText))
	}
	return b.String()
}

// LineFields finds the result line in line and splits its fields. ok is
// false when line carries no result (no prefix followed by a space); text
// before the prefix, such as console noise on the same line, and trailing
// CR and LF are skipped. A malformed field gives ok and an error that
// wraps errBadLine (the caller's sentinel) and quotes line.
func LineFields(line, prefix string, errBadLine error) (fields []Field, ok bool, err error) {
	i := strings.Index(line, prefix+" ")
	if i < 0 {
		return nil, false, nil
	}
	fields, err = SplitFields(strings.TrimRight(line[i+len(prefix)+1:], "\r\n"))
	if err != nil {
		return nil, true, fmt.Errorf("%w: %v: %q", errBadLine, err, line)
	}
	return fields, true, nil
}

// SplitFields splits `k=v k2="quoted v"` into fields. A key is not empty
// and holds no space, tab or quote; a value starting with a quote is a Go
// string literal, any other runs to the next space or tab.
func SplitFields(s string) ([]Field, error) {
	var out []Field
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, nil
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \t\"") {
			return nil, fmt.Errorf("field without key=value at %q", s)
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("bad quoted value for %s: %w", key, err)
			}
			if val, err = strconv.Unquote(q); err != nil {
				return nil, fmt.Errorf("bad quoted value for %s: %w", key, err)
			}
			s = s[len(q):]
		} else {
			end := strings.IndexAny(s, " \t")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		out = append(out, Field{key, val})
	}
}

// ParseLines parses every line of text with parseLine (for example a
// nested layer's console output): the results of the lines that carry one,
// in order, and the errors of those that failed to parse, which are
// skipped.
func ParseLines[T any](text string, parseLine func(string) (T, bool, error)) (results []T, errs []error) {
	c := Collector[T]{Parse: parseLine}
	for _, line := range strings.Split(text, "\n") {
		c.Line(line)
	}
	return c.Results()
}
