package benchkit

import "strings"

// Completion is embedded in a benchmark's report: whether its measuring
// session ran to its end. MarkPartial records that the session ended early (its L1 guest died or went silent, a
// timeout, Ctrl-C): the report then holds what completed before, and the
// table (WriteReport) and the JSON say so.
type Completion struct {
	Partial bool `json:"partial,omitempty"`
	// SessionError is why the session ended early.
	SessionError string `json:"session_error,omitempty"`
}

// MarkPartial records that the session ended early with err.
func (p *Completion) MarkPartial(err error) {
	p.Partial = true
	p.SessionError = err.Error()
}

// completion gives WriteReport the Completion of a report that embeds
// one.
func (p *Completion) completion() *Completion { return p }

// partialNote is the line that heads the table of a partial report, or
// "".
func partialNote(rep any) string {
	r, ok := rep.(interface{ completion() *Completion })
	if !ok || !r.completion().Partial {
		return ""
	}
	first, _, _ := strings.Cut(r.completion().SessionError, "\n")
	return "PARTIAL: the session ended early (" + first + "); these are the results that completed before.\n\n"
}
