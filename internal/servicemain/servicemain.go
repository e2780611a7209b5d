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
	"time"

	env "github.com/caarlos0/env/v10"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/envconfig"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Process holds the settings every service reads alike, from the same
// variables: each service's Config embeds it (caarlos0/env reads its
// fields like the Config's own) and its Validate checks them. Only the
// metrics address is the service's own (MetricsAddress), as its default
// differs per service.
type Process struct {
	// NATSURL is the NATS server to connect to (used by the main, not by
	// Run).
	NATSURL string `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	// Pipeline names the served pipeline; it must equal the plan's.
	Pipeline string `env:"PIPELINE" envDefault:"mnist"`
	// Metrics protects the metrics endpoint: CASCADE_METRICS_TLS_CERT and
	// CASCADE_METRICS_TLS_KEY serve it over HTTPS, CASCADE_METRICS_BEARER_TOKEN
	// requires "Authorization: Bearer <token>" (probes /healthz and /readyz
	// excepted). All empty by default.
	Metrics telemetry.HTTPSecurity `envPrefix:"METRICS_"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL" envDefault:"info"`
	// LogFormat is text or json.
	LogFormat string `env:"LOG_FORMAT" envDefault:"text"`
}

// Validate reports every problem of the settings together (nil when
// there is none), named by their variables, for the service's Validate
// to join with its own.
func (p Process) Validate() error {
	var problems Problems
	problems.Add(p.Metrics.Validate(envconfig.Prefix + "METRICS_"))
	problems.If(p.NATSURL == "", "CASCADE_NATS_URL is empty")
	problems.If(!wire.ValidToken(p.Pipeline), "CASCADE_PIPELINE %q is not a valid pipeline name", p.Pipeline)
	// The level as the logger parses it (telemetry.NewLogger).
	var level slog.Level
	problems.If(level.UnmarshalText([]byte(p.LogLevel)) != nil, "CASCADE_LOG_LEVEL %q: want debug, info, warn or error", p.LogLevel)
	problems.If(p.LogFormat != "text" && p.LogFormat != "json", "CASCADE_LOG_FORMAT %q: want text or json", p.LogFormat)
	return errors.Join(problems...)
}

// ProcessSettings returns p; a Config that embeds Process offers it to
// Main this way.
func (p Process) ProcessSettings() Process { return p }

// Config is what a service's Config offers its binary.
type Config interface {
	// ProcessSettings returns the embedded Process.
	ProcessSettings() Process
	// MetricsAddress is where /metrics, /healthz and /readyz are served;
	// empty serves nothing.
	MetricsAddress() string
}

// Deps are what every service's Run needs from its process, the binary's
// or the all-in-one one's; each service's Deps embeds them.
type Deps struct {
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
	// Registerer registers the service's metrics; nil uses a private
	// registry (the metrics are then not exported).
	Registerer prometheus.Registerer
	// Conn is the NATS connection; required. Run does not close it.
	Conn *nats.Conn
	// Now is the clock; nil means time.Now. It may be called from several
	// goroutines.
	Now func() time.Time
	// HTTP is the mux of the metrics listener (/metrics, /healthz,
	// /readyz); a service may add routes (the controller's dashboard). Nil
	// when the process serves no metrics.
	HTTP *http.ServeMux
}

// WithDefaults returns d with the defaults for what it leaves nil, or an
// error naming service if it has no NATS connection.
func (d Deps) WithDefaults(service string) (Deps, error) {
	if d.Conn == nil {
		return d, fmt.Errorf("%s: no NATS connection", service)
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Registerer == nil {
		d.Registerer = prometheus.NewRegistry()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return d, nil
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
	p, metricsAddr := cfg.ProcessSettings(), cfg.MetricsAddress()
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
	if metricsAddr != "" {
		mux = telemetry.Handler(reg, natsUp)
	}
	g.Go(func() error { return telemetry.Serve(ctx, metricsAddr, p.Metrics, mux, logger) })
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

// Problems collects what is wrong with a service's configuration, so
// that its Validate reports every problem together. Nil errors are left
// out when joined, so the result of another Validate (Process.Validate)
// can be a member as it is.
type Problems []error

// Add records err, if it is not nil.
func (p *Problems) Add(err error) {
	if err != nil {
		*p = append(*p, err)
	}
}

// If records the problem that format and args describe when bad holds.
func (p *Problems) If(bad bool, format string, args ...any) {
	if bad {
		*p = append(*p, fmt.Errorf(format, args...))
	}
}

// Err returns nil when there is no problem, else invalid (the service's
// ErrInvalidConfig) wrapping every problem, one a line.
func (p Problems) Err(invalid error) error {
	if err := errors.Join(p...); err != nil {
		return fmt.Errorf("%w:\n%w", invalid, err)
	}
	return nil
}
