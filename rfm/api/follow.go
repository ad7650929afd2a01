package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"rainforest/ledger/store"
	"rainforest/rfm/supervisor"
)

// Following (GET /v1/subos/{name}/log?follow=1 and GET
// /v1/events?follow=1) streams over chunked HTTP rather than server-sent
// events: the log is the guest's bytes, which SSE (UTF-8 text framed in
// "data:" lines) would have to re-encode, while a plain chunked body is the
// very same text/plain the non-follow request answers, only longer; events
// are one JSON object a line (application/x-ndjson), which json.Decoder
// and `curl -N --unix-socket` read as they come. A client that reconnects
// passes since= the last seq it saw; nothing of SSE's replay is needed.

// Bounds of a stream.
const (
	// logPoll is how often a followed log at its end is checked for
	// growth, rotation, and its subOS's end.
	logPoll = 200 * time.Millisecond
	// logChunk bounds one read of a followed log.
	logChunk = 32 << 10
	// streamWriteTimeout bounds one write to a streaming client: one that
	// stops reading is dropped, never holds the handler for ever.
	streamWriteTimeout = 30 * time.Second
	// eventPage bounds one read of past events.
	eventPage = 1000
)

// EventFollower is a Backend that streams new audit events (a
// *supervisor.Supervisor does); GET /v1/events?follow=1 answers 404 for
// one that does not.
type EventFollower interface {
	SubscribeEvents(ctx context.Context) *supervisor.Subscription
}

// stream writes and flushes a streaming response, each write bounded by
// streamWriteTimeout.
type stream struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newStream(w http.ResponseWriter, contentType string) *stream {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	s := &stream{w: w, rc: http.NewResponseController(w)}
	s.flush()
	return s
}

func (s *stream) write(b []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	_, err := s.w.Write(b)
	return err
}

func (s *stream) flush() error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	return s.rc.Flush()
}

// followLog streams the log of the subOS info from its last tail bytes on,
// as it grows, until the subOS ends (or is replaced), the client goes or
// the server stops. The file is read from an offset, a chunk at a time;
// a log that shrank (vmm/consolelog rotates in place) is read again from
// its start. The bytes are the guest's, as the non-follow request sends
// them.
func followLog(w http.ResponseWriter, r *http.Request, b Backend, info supervisor.Info, tail int64, stop <-chan struct{}) {
	f, err := os.Open(info.Log)
	if err != nil {
		fail(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fail(w, err)
		return
	}
	off := fi.Size() - min(fi.Size(), tail)
	s := newStream(w, "text/plain; charset=utf-8")
	tick := time.NewTicker(logPoll)
	defer tick.Stop()
	buf := make([]byte, logChunk)
	last := false // the subOS ended: send what is left, then stop
	for {
		n, err := f.ReadAt(buf, off)
		if n > 0 {
			if s.write(buf[:n]) != nil {
				return
			}
			off += int64(n)
			if n == len(buf) {
				continue
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if fi, err := f.Stat(); err == nil && fi.Size() < off {
			off = 0 // rotated in place
			continue
		}
		if last || s.flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-stop:
			return
		case <-tick.C:
		}
		cur, err := b.Get(info.Name)
		last = err != nil || cur.State == supervisor.StateExited || !cur.Created.Equal(info.Created) || cur.Log != info.Log
	}
}

// followEvents streams the audit events after since (none of the past
// when since is 0 and sinceTime zero) and then each new one, one JSON
// object a line, until the client goes, the server stops, or the
// subscriber falls too far behind (it then reconnects with since= the last
// seq it got).
func followEvents(w http.ResponseWriter, r *http.Request, b Backend, since uint64, past bool, stop <-chan struct{}) {
	ef, ok := b.(EventFollower)
	if !ok {
		reply(w, http.StatusNotFound, ErrorBody{Error: "this supervisor does not stream events"})
		return
	}
	// Subscribe first, then read the past: an event in both is skipped
	// by its seq.
	sub := ef.SubscribeEvents(r.Context())
	var backlog []store.Event
	if past {
		var err error
		if backlog, err = b.Events(since, eventPage); err != nil {
			fail(w, err)
			return
		}
	}
	s := newStream(w, "application/x-ndjson")
	send := func(e store.Event) bool {
		line, err := json.Marshal(e)
		if err != nil {
			return false
		}
		since = e.Seq
		return s.write(append(line, '\n')) == nil
	}
	for past && len(backlog) > 0 {
		for _, e := range backlog {
			if !send(e) {
				return
			}
		}
		if s.flush() != nil || len(backlog) < eventPage {
			break
		}
		var err error
		if backlog, err = b.Events(since, eventPage); err != nil {
			return
		}
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-stop:
			return
		case e, ok := <-sub.C:
			if !ok {
				return
			}
			if e.Seq <= since { // already sent from the past
				continue
			}
			if !send(e) || s.flush() != nil {
				return
			}
		}
	}
}

// sinceParam reads /v1/events' since (a seq) and since_time (RFC 3339):
// the seq after which events are wanted, and whether either was given.
// since_time is turned into a seq by paging through the log to the first
// event at or after it.
func sinceParam(r *http.Request, b Backend) (uint64, bool, error) {
	q := r.URL.Query()
	since, err := uintParam(r, "since", 0)
	if err != nil {
		return 0, false, err
	}
	given := q.Has("since")
	v := q.Get("since_time")
	if v == "" {
		return since, given, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return 0, false, fmt.Errorf("query parameter since_time: %q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", v)
	}
	for {
		page, err := b.Events(since, eventPage)
		if err != nil {
			return 0, false, err
		}
		for _, e := range page {
			if !e.Time.Before(t) {
				return e.Seq - 1, true, nil
			}
			since = e.Seq
		}
		if len(page) < eventPage {
			return since, true, nil
		}
	}
}

// boolParam reads a query flag: absent, 0 or false is false; 1 or true
// is true.
func boolParam(r *http.Request, name string) (bool, error) {
	switch v := strings.ToLower(r.URL.Query().Get(name)); v {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	default:
		return false, fmt.Errorf("query parameter %s: %q is not 1, true, 0 or false", name, v)
	}
}

// The supervisor streams events and reports its ledger's usage.
var (
	_ EventFollower = (*supervisor.Supervisor)(nil)
	_ UsageReporter = (*supervisor.Supervisor)(nil)
)
