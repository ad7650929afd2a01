package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"rainforest/internal/buildinfo"
)

// Path is where the metrics are served.
const Path = "/metrics"

// The metrics server's bounds: a scrape is one small GET.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 16 << 10
	// scrapeTimeout bounds gathering and writing one response, and
	// maxScrapes the scrapes gathered at once (more get 503).
	scrapeTimeout = 20 * time.Second
	maxScrapes    = 4
	// shutdownTimeout is how long scrapes under way may finish when
	// the server stops.
	shutdownTimeout = 5 * time.Second
)

// CheckAddr checks that addr is a TCP listen address, HOST:PORT: HOST
// a name, an address or empty (every address), PORT a number.
func CheckAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT (e.g. 127.0.0.1:9464 or :9464): %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: the port must be a number from 0 to 65535", addr)
	}
	return nil
}

// NewRegistry returns a registry of its own holding a Collector of src,
// the Go runtime's collector and this process's (CPU, memory, open
// files).
func NewRegistry(src Source, build buildinfo.Info) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		NewCollector(src, build),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics registry: %w", err)
		}
	}
	return reg, nil
}

// Handler serves g's metrics at GET /metrics (Path), in the Prometheus
// text format or whatever else the scraper asks for and promhttp
// speaks. Gathering errors are logged to log.
func Handler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            errorLog{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxScrapes,
		Timeout:             scrapeTimeout,
	}))
	return mux
}

// errorLog is promhttp's Logger on slog.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Println(v ...any) { l.log.Error("metrics", "err", fmt.Sprint(v...)) }

// Serve serves h on ln (a TCP listener on a CheckAddr address) until ctx ends (then lets the scrapes under way
// finish, for shutdownTimeout at most) or the listener fails. It returns
// nil after ctx ended.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes}
	shut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shut)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	})
	err := srv.Serve(ln)
	if stop() { // ctx has not ended: the listener failed
		srv.Close()
		return fmt.Errorf("metrics: %w", err)
	}
	<-shut
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("metrics: %w", err)
}
