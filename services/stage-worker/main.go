// Command stage-worker hosts models of a CascadeServe pipeline and serves
// their work queues (see internal/stageworker). It is configured by
// CASCADE_* environment variables.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stage-worker:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	environ := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		environ[k] = v
	}
	cfg, err := stageworker.ConfigFromEnv(environ)
	if err != nil {
		return err
	}
	logger, err := telemetry.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	reg := telemetry.NewRegistry()
	nc, err := natsbus.Connect(cfg.NATSURL, "stage-worker", logger)
	if err != nil {
		return err
	}
	defer nc.Drain()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return stageworker.Run(ctx, cfg, stageworker.Deps{Logger: logger, Registerer: reg, Conn: nc})
	})
	g.Go(func() error { return telemetry.ServeMetrics(ctx, cfg.MetricsAddr, reg, logger) })
	return g.Wait()
}
