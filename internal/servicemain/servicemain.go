// Package servicemain is the main function the three service binaries
// (services/controller, services/ingress, services/stage-worker) share:
// read the service's Config from the CASCADE_* environment, set up the
// logger, the metrics registry and endpoint and the NATS connection, run
// the service until SIGINT or SIGTERM, and exit non-zero on an error.
package servicemain

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
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
	LogLevel    string
	LogFormat   string
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
}

// Main runs the service called name with the Config parse reads from the
// process environment, and exits with status 1 and the error on stderr when
// it fails.
func Main[C Config](name string, parse func(environ map[string]string) (C, error), run func(context.Context, C, Deps) error) {
	if err := serve(name, parse, run); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

func serve[C Config](name string, parse func(map[string]string) (C, error), run func(context.Context, C, Deps) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := parse(env.ToMap(os.Environ()))
	if err != nil {
		return err
	}
	p := cfg.Process()
	logger, err := telemetry.NewLogger(os.Stderr, p.LogLevel, p.LogFormat)
	if err != nil {
		return err
	}
	reg := telemetry.NewRegistry()
	nc, err := natsbus.Connect(p.NATSURL, name, logger)
	if err != nil {
		return err
	}
	defer nc.Drain()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return run(ctx, cfg, Deps{Logger: logger, Registerer: reg, Conn: nc}) })
	g.Go(func() error { return telemetry.ServeMetrics(ctx, p.MetricsAddr, reg, logger) })
	return g.Wait()
}
