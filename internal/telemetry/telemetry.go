// Package telemetry serves a process's Prometheus metrics and health
// endpoints over HTTP, and builds its logger. The all-in-one binary serves
// one registry for all services; each service binary serves its own.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// NewLogger returns a text or JSON slog logger at the given level
// ("debug", "info", "warn", "error").
func NewLogger(w interface{ Write([]byte) (int, error) }, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// ServeMetrics serves Handler(g, checks...) on addr until ctx ends, with
// sec's TLS and bearer token if set. An
// empty addr serves nothing and returns when ctx ends.
func ServeMetrics(ctx context.Context, addr string, sec HTTPSecurity, g prometheus.Gatherer, logger *slog.Logger, checks ...func() error) error {
	return Serve(ctx, addr, sec, Handler(g, checks...), logger)
}

// Serve serves h (a Handler with more routes, such as the controller's
// dashboard) on addr until ctx ends, with sec's TLS and bearer token if
// set. Shutting down cancels the requests' contexts first, so long-lived
// responses (the dashboard's event stream) end instead of holding the
// shutdown. An empty addr serves nothing and returns when ctx ends.
func Serve(ctx context.Context, addr string, sec HTTPSecurity, h http.Handler, logger *slog.Logger) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{Handler: sec.Wrap(h), ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return base }}
	srv.RegisterOnShutdown(cancelBase)
	logger.Info("serving metrics", "addr", ln.Addr().String(), "tls", sec.TLS(), "bearer_token", sec.BearerToken != "")
	errc := make(chan error, 1)
	go func() { errc <- sec.Serve(srv, ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Handler serves /metrics from g, /healthz (liveness: 200 while the process
// runs) and /readyz (readiness: 200 when Ready(g, checks...) is nil, else
// 503 with the reason). Probes (cascadeserve health, Kubernetes) read
// /readyz. Services may add routes to the mux, also while it serves.
func Handler(g prometheus.Gatherer, checks ...func() error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := Ready(g, checks...); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// Ready reports whether the services whose metrics g gathers are ready:
// every check passes, g has at least one readiness gauge (a gauge named
// cascade_<service>_ready, which each service sets to 1 once it serves),
// and every readiness gauge is 1. The all-in-one process is ready when all
// its services are.
func Ready(g prometheus.Gatherer, checks ...func() error) error {
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	mfs, err := g.Gather()
	if err != nil {
		return fmt.Errorf("gather metrics: %w", err)
	}
	var notReady []string
	found := false
	for _, mf := range mfs {
		name := mf.GetName()
		if mf.GetType() != dto.MetricType_GAUGE || !strings.HasPrefix(name, "cascade_") || !strings.HasSuffix(name, "_ready") {
			continue
		}
		for _, m := range mf.GetMetric() {
			found = true
			if m.GetGauge().GetValue() != 1 {
				notReady = append(notReady, name)
			}
		}
	}
	switch {
	case len(notReady) > 0:
		return fmt.Errorf("%s not 1 yet", strings.Join(notReady, ", "))
	case !found:
		return errors.New("no service has started yet")
	}
	return nil
}
