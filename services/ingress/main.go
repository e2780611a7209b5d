// Command ingress is the front door of a CascadeServe pipeline: NATS
// request-reply, durable jobs and HTTP Open Inference Protocol v2 (see
// internal/ingress). It is configured by CASCADE_* environment variables.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	env "github.com/caarlos0/env/v10"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ingress:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := ingress.ConfigFromEnv(env.ToMap(os.Environ()))
	if err != nil {
		return err
	}
	logger, err := telemetry.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	reg := telemetry.NewRegistry()
	nc, err := natsbus.Connect(cfg.NATSURL, "ingress", logger)
	if err != nil {
		return err
	}
	defer nc.Drain()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ingress.Run(ctx, cfg, ingress.Deps{Logger: logger, Registerer: reg, Conn: nc}) })
	g.Go(func() error { return telemetry.ServeMetrics(ctx, cfg.MetricsAddr, reg, logger) })
	return g.Wait()
}
