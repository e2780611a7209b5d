// Command controller owns a CascadeServe pipeline's NATS topology, publishes
// its gear plan and switches gears with the load (see internal/controller).
// It is configured by CASCADE_* environment variables.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	env "github.com/caarlos0/env/v10"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := controller.ConfigFromEnv(env.ToMap(os.Environ()))
	if err != nil {
		return err
	}
	logger, err := telemetry.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	reg := telemetry.NewRegistry()
	nc, err := natsbus.Connect(cfg.NATSURL, "controller", logger)
	if err != nil {
		return err
	}
	defer nc.Drain()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return controller.Run(ctx, cfg, controller.Deps{Logger: logger, Registerer: reg, Conn: nc})
	})
	g.Go(func() error { return telemetry.ServeMetrics(ctx, cfg.MetricsAddr, reg, logger) })
	return g.Wait()
}
