package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"rainforest/internal/untrusted"
	"rainforest/ledger/store"
	"rainforest/rfm/api"
)

// followLog prints a subOS's log as it grows (rfm logs -f): escaped for a
// terminal, a piece at a time, until the subOS ends or Ctrl-C.
func followLog(cmd *cobra.Command, g *globalFlags, name string, tail uint64, escape bool) error {
	out := cmd.OutOrStdout()
	var esc *untrusted.EscapeWriter
	if escape {
		esc = untrusted.NewEscapeWriter(out)
		out = esc
	}
	err := g.client().FollowLog(cmd.Context(), name, tail, out)
	if esc != nil {
		esc.Flush()
	}
	if errors.Is(err, context.Canceled) {
		return nil // Ctrl-C
	}
	return err
}

// parseSince reads rfm events --since: a sequence number, an RFC 3339
// time, or a duration back from now; "" selects from the start (a
// listing) or only new events (--follow).
func parseSince(v string, now time.Time) (api.EventQuery, error) {
	if v == "" {
		return api.EventQuery{}, nil
	}
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		return api.EventQuery{Since: n, Past: true}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return api.EventQuery{SinceTime: t, Past: true}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return api.EventQuery{SinceTime: now.Add(-d), Past: true}, nil
	}
	return api.EventQuery{}, fmt.Errorf("--since %q: give a sequence number (42), a time (2026-01-02T15:04:05Z) or a duration back from now (10m)", v)
}

// followEvents prints events as they are recorded (rfm events --follow),
// one a line, until Ctrl-C. When the supervisor ends the stream (a client
// too far behind is dropped), it reconnects from the last event printed;
// it gives up when a new stream ends before bringing anything.
func followEvents(cmd *cobra.Command, g *globalFlags, q api.EventQuery) error {
	out := cmd.OutOrStdout()
	show := func(e store.Event) error { return eventLine(out, g.output, e) }
	if g.output != outputJSON {
		fmt.Fprintf(out, "%-6s %-19s %-24s %-14s %-12s %-10s %s\n", "SEQ", "TIME", "WHO", "WHAT", "NAME", "TOOK", "DETAIL")
	}
	c := g.client()
	for {
		got := false
		err := c.FollowEvents(cmd.Context(), q, func(e store.Event) error {
			got = true
			q = api.EventQuery{Since: e.Seq, Past: true}
			return show(e)
		})
		switch {
		case errors.Is(err, context.Canceled):
			return nil // Ctrl-C
		case errors.Is(err, api.ErrStreamEnded) && got:
			continue
		}
		return err
	}
}

// eventLine prints one followed event: a JSON object a line with -o json,
// else a table row of fixed widths (a stream cannot align its columns on
// rows to come).
func eventLine(w io.Writer, output outputFormat, e store.Event) error {
	if output == outputJSON {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	_, err := fmt.Fprintf(w, "%-6d %-19s %-24s %-14s %-12s %-10s %s\n", e.Seq, e.Time.Local().Format(time.DateTime), oneLine(e.Who), oneLine(e.What), oneLine(e.Name), e.Duration.Round(time.Microsecond), tableCell(e.Detail))
	return err
}

// oneLine is a table cell of text that may hold anything.
func oneLine(s string) string { return strings.TrimSpace(tableCell(s)) }
