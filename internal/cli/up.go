package cli

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// systemFlags are the flags `up`, `demo` and `bench` share.
type systemFlags struct {
	natsURL, planFile, dataDir, gear string
	natsPort, monitorPort, workers   int
	runners, threads                 int
	logLevel                         string
	env                              []string
	provider                         providerFlags
}

func (f *systemFlags) register(fs *flag.FlagSet, env Env, defaultLog string) {
	fs.StringVar(&f.natsURL, "nats", "", "use this external NATS server instead of an embedded one")
	fs.StringVar(&f.planFile, "plan", envOr(env, "CASCADE_PLAN", ""), "gear plan file to serve (default: the built-in MNIST plan)")
	fs.StringVar(&f.dataDir, "data", "data/nats", "JetStream store folder of the embedded server")
	fs.IntVar(&f.natsPort, "port", 4222, "client port of the embedded server (-1: any free port)")
	fs.IntVar(&f.monitorPort, "monitor-port", 8222, "monitoring port of the embedded server (/varz, /jsz; 0: off)")
	fs.StringVar(&f.gear, "gear", "", "pin this gear id (no switching)")
	fs.IntVar(&f.workers, "workers", 1, "stage-worker instances")
	fs.IntVar(&f.runners, "runners", 0, "runners per worker (default: CASCADE_WORKER_RUNNERS or 2)")
	fs.IntVar(&f.threads, "threads", 0, "ONNX Runtime intra-op threads per runner (default 1)")
	f.provider.register(fs, "")
	fs.StringVar(&f.logLevel, "log-level", envOr(env, "CASCADE_LOG_LEVEL", defaultLog), "debug, info, warn or error")
	fs.Func("set", "extra service setting KEY=VALUE (CASCADE_ prefix optional), repeatable", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("want KEY=VALUE, got %q", s)
		}
		f.env = append(f.env, s)
		return nil
	})
}

// config builds the system configuration: CASCADE_* variables of the
// process environment first, then the flags.
func (f *systemFlags) config(env Env) (system.Config, error) {
	environ := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "CASCADE_") {
			environ[k] = v
		}
	}
	if f.gear != "" {
		environ["CASCADE_GEAR"] = f.gear
	}
	if f.runners > 0 {
		environ["CASCADE_WORKER_RUNNERS"] = fmt.Sprint(f.runners)
	}
	if f.threads > 0 {
		environ["CASCADE_WORKER_THREADS"] = fmt.Sprint(f.threads)
	}
	if err := f.provider.check(); err != nil {
		return system.Config{}, err
	}
	maps.Copy(environ, f.provider.workerEnv())
	for _, kv := range f.env {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "CASCADE_") {
			k = "CASCADE_" + k
		}
		environ[strings.ToUpper(k)] = v
	}
	logger, err := telemetry.NewLogger(env.Stderr, f.logLevel, envOr(env, "CASCADE_LOG_FORMAT", "text"))
	if err != nil {
		return system.Config{}, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	planFile := f.planFile
	if planFile != "" {
		if planFile, err = filepath.Abs(planFile); err != nil {
			return system.Config{}, err
		}
	}
	return system.Config{
		NATSURL: f.natsURL, DataDir: f.dataDir, NATSPort: f.natsPort, MonitorPort: f.monitorPort,
		PlanFile: planFile, Workers: f.workers, Env: environ, Logger: logger,
	}, nil
}

func runUp(ctx context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "up", "up [flags]")
	var sf systemFlags
	sf.register(fs, env, "info")
	metricsAddr := fs.String("metrics", "127.0.0.1:9090", "serve /metrics of all services and the live /dashboard here (empty: off)")
	httpAddr := fs.String("http", envOr(env, "CASCADE_HTTP_ADDR", "127.0.0.1:8080"), "HTTP Open Inference Protocol address of the ingress")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if err := checkListenAddrs(sf.listenAddrs(*httpAddr, *metricsAddr)); err != nil {
		return err
	}
	cfg, err := sf.config(env)
	if err != nil {
		return err
	}
	cfg.Env["CASCADE_HTTP_ADDR"] = *httpAddr
	reg := telemetry.NewRegistry()
	cfg.Registerer = reg
	mux := telemetry.Handler(reg)
	if *metricsAddr != "" {
		cfg.HTTP = mux
	}
	fmt.Fprintln(env.Stderr, "starting CascadeServe (loading models, applying topology)…")
	sys, err := system.Start(ctx, cfg)
	if err != nil {
		return err
	}
	p := sys.Plan
	fmt.Fprintf(env.Stdout, `
CascadeServe is up: pipeline %q, %d models, %d gears (%s).
  NATS          %s
  request-reply nats req %s '<json>' -H Content-Type:application/json
  jobs          publish to %s, results on %s
  HTTP          POST http://%s/v2/models/%s/infer   (GET /v2/health/ready)
  metrics       http://%s/metrics
  dashboard     http://%s/dashboard
  try           cascadeserve send -n 5 --nats %s
Ctrl-C stops everything cleanly.
`, p.Pipeline, len(p.UsedModels()), len(p.Gears), gearNames(p.Gears), natsbus.RedactURL(sys.URL),
		wire.InferSubject(p.Pipeline), wire.JobsSubject(p.Pipeline, "<client>"), wire.ResultSubject(p.Pipeline, "<client>"),
		*httpAddr, p.Pipeline, *metricsAddr, *metricsAddr, natsbus.RedactURL(sys.URL))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return telemetry.Serve(gctx, *metricsAddr, telemetry.HTTPSecurity{}, mux, cfg.Logger)
	})
	g.Go(func() error {
		select {
		case <-gctx.Done():
		case <-sys.Done():
			return fmt.Errorf("a service stopped: %w", sys.Err())
		}
		fmt.Fprintln(env.Stderr, "stopping: draining workers and connections…")
		return sys.Stop()
	})
	return g.Wait()
}
