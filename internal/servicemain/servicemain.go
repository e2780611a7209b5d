// Package servicemain is the main function the three service binaries
// (services/controller, services/ingress, services/stage-worker) share:
// read the service's Config from the CASCADE_* environment, set up the
// logger, the metrics registry and endpoint (/metrics, /healthz, /readyz)
// and the NATS connection (waiting for the server if it is not up yet), run
// the service until SIGINT or SIGTERM, and exit non-zero on an error. It
// also answers --help with the service's environment variables and
// --version with the build.
package servicemain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"sync/atomic"
	"syscall"

	env "github.com/caarlos0/env/v10"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
)

// Process holds the settings of a service's Config that its binary, not
// its Run, uses.
type Process struct {
	NATSURL     string
	MetricsAddr string
	// Metrics protects the metrics endpoint (TLS, bearer token).
	Metrics   telemetry.HTTPSecurity
	LogLevel  string
	LogFormat string
}

// Config is what a service's Config offers its binary.
type Config interface {
	Process() Process
}

// Deps are what the binary hands the service's Run.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Conn       *nats.Conn
	// HTTP is the mux of the metrics listener (/metrics, /healthz,
	// /readyz); a service may add routes (the controller's dashboard). Nil
	// when the service serves no metrics.
	HTTP *http.ServeMux
}

// Main runs the service called name with the Config parse reads from the
// process environment, and exits with status 1 and the error on stderr when
// it fails. The binary takes no arguments but -h or --help, which print
// summary and C's environment variables to stdout, and --version; any
// other argument exits with status 2.
func Main[C Config](name, summary string, parse func(environ map[string]string) (C, error), run func(context.Context, C, Deps) error) {
	if done, code := handleArgs(name, summary, reflect.TypeFor[C](), os.Args[1:], os.Stdout, os.Stderr); done {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := serve(ctx, name, env.ToMap(os.Environ()), os.Stderr, parse, run)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// serve runs the service until ctx ends or it fails. The metrics endpoint
// is up first, so probes get an answer (/healthz 200, /readyz 503) while
// the service waits for NATS; a NATS server that is not up yet is waited
// for (natsbus.ConnectWait), not a reason to exit.
func serve[C Config](ctx context.Context, name string, environ map[string]string, stderr io.Writer, parse func(map[string]string) (C, error), run func(context.Context, C, Deps) error) error {
	cfg, err := parse(environ)
	if err != nil {
		return err
	}
	p := cfg.Process()
	logger, err := telemetry.NewLogger(stderr, p.LogLevel, p.LogFormat)
	if err != nil {
		return err
	}
	reg := telemetry.NewRegistry()
	var conn atomic.Pointer[nats.Conn]
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cascade_nats_connected",
		Help: "1 while this process's NATS connection is up, 0 while it waits for or reconnects to the server.",
	}, func() float64 {
		if nc := conn.Load(); nc != nil && nc.IsConnected() {
			return 1
		}
		return 0
	}))
	natsUp := func() error {
		nc := conn.Load()
		if nc == nil {
			return errors.New("waiting for NATS")
		}
		if !nc.IsConnected() {
			return fmt.Errorf("NATS connection %s", nc.Status())
		}
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	var mux *http.ServeMux
	if p.MetricsAddr != "" {
		mux = telemetry.Handler(reg, natsUp)
	}
	g.Go(func() error { return telemetry.Serve(ctx, p.MetricsAddr, p.Metrics, mux, logger) })
	g.Go(func() error {
		nc, err := natsbus.ConnectWait(ctx, p.NATSURL, name, logger)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting
			}
			return err
		}
		defer nc.Drain()
		defer cancel() // the service ended: stop serving metrics too
		conn.Store(nc)
		return run(ctx, cfg, Deps{Logger: logger, Registerer: reg, Conn: nc, HTTP: mux})
	})
	return g.Wait()
}
