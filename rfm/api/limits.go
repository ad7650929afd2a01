package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"rainforest/internal/buildinfo"
	"rainforest/internal/tokenbucket"
)

// Limits bound what one client can make the API do: requests per
// connection (a token bucket; over it a request gets 429), connections at
// once (over the cap a connection gets 503 and is closed), header size and
// the time to send headers, and idle keep-alive connections. Request
// bodies are bounded by MaxBody.
type Limits struct {
	// Requests is each connection's token bucket.
	Requests tokenbucket.Limit
	// MaxConns is the most connections served at once.
	MaxConns int
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
	// ReadHeaderTimeout and IdleTimeout are http.Server's.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// Clock times the token buckets (the system clock when nil).
	Clock tokenbucket.Clock
}

// DefaultLimits are the limits of Serve: 20 requests/s per connection
// with a burst of 100 (far above what rfm's commands and scripts do, a
// loop hammering the supervisor is held to it), 64 connections, 16 KiB of
// headers sent within 10 s, keep-alive connections closed after 2 min
// idle.
func DefaultLimits() Limits {
	return Limits{
		Requests:          tokenbucket.Limit{Rate: 20, Burst: 100},
		MaxConns:          64,
		MaxHeaderBytes:    16 << 10,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
}

func (l Limits) clock() tokenbucket.Clock {
	if l.Clock == nil {
		return tokenbucket.SystemClock{}
	}
	return l.Clock
}

// connBucketKey is the context key of a connection's token bucket.
type connBucketKey struct{}

// withConnBucket gives a new connection's context its own bucket.
func (l Limits) withConnBucket(ctx context.Context) context.Context {
	return context.WithValue(ctx, connBucketKey{}, tokenbucket.New(l.Requests, l.clock().Now()))
}

// limitRequests answers 429, with the API's error body and Retry-After,
// to a request over its connection's bucket, and bounds every request
// body to MaxBody.
func (l Limits) limitRequests(h http.Handler) http.Handler {
	clock := l.clock()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := r.Context().Value(connBucketKey{}).(*tokenbucket.Bucket)
		if wait := b.Take(clock.Now(), 1); wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			reply(w, http.StatusTooManyRequests, ErrorBody{Error: fmt.Sprintf("too many requests on this connection (limit %d/s)", l.Requests.Rate)})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		h.ServeHTTP(w, r)
	})
}

// connCap counts the connections open and answers the ones over max with
// 503 and closes them, so a client that opens many cannot keep out the
// others for long nor grow the supervisor's goroutines without bound. Its
// connState is http.Server's ConnState hook (the connection itself stays
// unwrapped, so its peer credentials can be read).
type connCap struct {
	mu   sync.Mutex
	open int
	max  int
}

func (cc *connCap) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		cc.mu.Lock()
		cc.open++
		over := cc.open > cc.max
		cc.mu.Unlock()
		if over {
			// A small write to a fresh socket does not block; the
			// deadline bounds it if it would.
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			c.Write(overCapResponse())
			c.Close()
		}
	case http.StateClosed, http.StateHijacked:
		cc.mu.Lock()
		cc.open--
		cc.mu.Unlock()
	}
}

// connState returns the ConnState hook of the connection cap; nil when
// MaxConns is 0 (no cap).
func (l Limits) connState() func(net.Conn, http.ConnState) {
	if l.MaxConns <= 0 {
		return nil
	}
	return (&connCap{max: l.MaxConns}).connState
}

// overCapResponse is the whole reply to a connection over the cap.
func overCapResponse() []byte {
	body, _ := json.Marshal(ErrorBody{Error: "too many connections to the API"})
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s: %s\r\nConnection: close\r\n\r\n%s", len(body), VersionHeader, buildinfo.Read(), body)
}
