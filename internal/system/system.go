// Package system composes the whole of CascadeServe in one process: an
// embedded nats-server (or an external one by URL), the controller, the
// ingress and one or more stage workers, each running the same Run as its
// own binary does. `cascadeserve up`, `demo`, `bench` and the end-to-end
// tests use it, so the all-in-one path is the distributed path.
//
// Shutdown order: cancelling the context stops every service at once; the
// ingress stops intake, workers finish and publish the batch in hand, the
// controller stops measuring. Only after every Run has returned are the
// NATS connections drained and the embedded server shut down.
package system

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsembed"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Config configures an all-in-one system. Zero values take the defaults in
// the field comments.
type Config struct {
	// NATSURL selects an external server; empty starts an embedded one.
	NATSURL string
	// ClientOptions are extra options of Conn, the callers' connection:
	// nats.CustomInboxPrefix("_INBOX.<client>") for a producer user of
	// deploy/nats/accounts.conf, which may use only its own inboxes.
	ClientOptions []nats.Option
	// DataDir holds the embedded server's JetStream store (default
	// ./data/nats). Tests pass t.TempDir().
	DataDir string
	// NATSPort is the embedded server's client port (default 4222; -1 picks
	// a free one). MonitorPort is its monitoring port (/varz, /jsz; 0 off,
	// -1 free).
	NATSPort    int
	MonitorPort int
	// PlanFile is the gear plan to serve; empty serves the built-in MNIST
	// plan with the embedded MNIST models.
	PlanFile string
	// Workers is the number of stage-worker instances (default 1; each runs
	// CASCADE_WORKER_RUNNERS runners).
	Workers int
	// Env holds extra CASCADE_* settings given to every service, exactly as
	// the separate binaries read them from the environment (for example
	// CASCADE_GEAR to pin a gear, CASCADE_HTTP_ADDR, CASCADE_WORKER_RUNNERS).
	Env map[string]string
	// ServiceEnv holds settings of one service ("controller", "ingress",
	// "stage-worker") on top of Env, as a deployment gives each binary its
	// own environment. A CASCADE_NATS_URL there is the URL, credentials
	// included, that the service connects with (NATSURL is then what the
	// caller's Conn uses).
	ServiceEnv map[string]map[string]string
	// Logger receives every service's logs (with a component attribute).
	Logger *slog.Logger
	// Registerer receives every service's metrics (nil: a private registry).
	Registerer prometheus.Registerer
	// ReadyTimeout bounds Start's wait for the first answer (default 60s).
	ReadyTimeout time.Duration
	// HTTP, if set, is the mux of the caller's metrics listener: the
	// controller adds its live dashboard there (/dashboard).
	HTTP *http.ServeMux
}

// System is a running all-in-one deployment.
type System struct {
	// URL is the NATS URL clients use.
	URL string
	// Plan is the plan being served.
	Plan *plan.Plan
	// Server is the embedded server, or nil with an external one.
	Server *server.Server
	// Conn is a client connection for callers (load generators, probes).
	Conn *nats.Conn
	JS   jetstream.JetStream

	cancel context.CancelFunc
	done   chan struct{}
	err    error
	conns  []*nats.Conn

	workers workerSet
}

// workerSet runs the stage workers, which, unlike the other services, can
// be stopped and added one by one while the system runs (AddWorker,
// StopWorker), as pods of a worker pool come and go.
type workerSet struct {
	mu      sync.Mutex
	ctx     context.Context // the services' context
	cfg     stageworker.Config
	models  fs.FS // the plan's model files
	connect func(name string) (*nats.Conn, error)
	logger  *slog.Logger
	reg     prometheus.Registerer
	labeled bool // label every worker's metrics worker="<n>"
	next    int
	running map[int]*runningWorker
	closed  bool // no more workers start
	wg      sync.WaitGroup
	errc    chan error // the first failure of a worker
}

type runningWorker struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// LoadPlan returns the plan a Config serves: the plan file, or the
// built-in MNIST plan when file is empty.
func LoadPlan(file string) (*plan.Plan, error) {
	if file == "" {
		return mnist.Plan()
	}
	return plan.LoadFile(file)
}

// modelFiles returns the folder the stage workers read the plan's model
// files from: the plan file's folder, or the embedded MNIST models for the
// built-in plan.
func modelFiles(file string) fs.FS {
	if file == "" {
		return mnist.Files()
	}
	return os.DirFS(filepath.Dir(file))
}

// Start starts the system and returns once it has answered a probe
// request, or with an error (after stopping what it started).
func Start(ctx context.Context, cfg Config) (*System, error) {
	cfg.defaults()
	p, err := LoadPlan(cfg.PlanFile)
	if err != nil {
		return nil, err
	}
	s := &System{Plan: p, done: make(chan struct{})}
	if err := s.startServer(cfg); err != nil {
		return nil, err
	}
	if err := s.start(cfg); err != nil {
		s.release()
		return nil, err
	}
	if err := s.waitReady(ctx, cfg.ReadyTimeout); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (cfg *Config) defaults() {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
}

// startServer starts the embedded nats-server unless cfg names a server,
// and sets s.URL.
func (s *System) startServer(cfg Config) error {
	if cfg.NATSURL != "" {
		s.URL = cfg.NATSURL
		return nil
	}
	dir := cfg.DataDir
	if dir == "" {
		dir = filepath.Join("data", "nats")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	port := cfg.NATSPort
	if port == 0 {
		port = 4222
	}
	srv, err := natsembed.StartServer(natsembed.ServerConfig{Port: port, HTTPPort: cfg.MonitorPort, StoreDir: dir})
	if err != nil {
		return err
	}
	s.Server = srv
	s.URL = srv.ClientURL()
	return nil
}

// release closes the connections and shuts the embedded server down.
func (s *System) release() {
	s.closeConns()
	if s.Server != nil {
		s.Server.Shutdown()
		s.Server.WaitForShutdown()
	}
}

// serviceOptions are the options of a service's connection to url: a
// service of the embedded server's process talks to it in memory, not over
// loopback TCP (fewer system calls per message). The callers' Conn stays
// on TCP, as a producer's would.
func (s *System) serviceOptions(url string) []nats.Option {
	if s.Server != nil && url == s.URL {
		return []nats.Option{nats.InProcessServer(s.Server)}
	}
	return nil
}

// connect opens a connection that the system closes when it stops.
func (s *System) connect(logger *slog.Logger, name, url string, opts ...nats.Option) (*nats.Conn, error) {
	nc, err := natsbus.Connect(url, name, logger.With("component", name), opts...)
	if err == nil {
		s.conns = append(s.conns, nc)
	}
	return nc, err
}

// serviceEnvs are the CASCADE_* environments of the three services: the
// system's (its server, the plan's pipeline, no HTTP and no metrics
// listeners), then cfg.Env, then each service's cfg.ServiceEnv.
func (s *System) serviceEnvs(cfg Config) (ctl, ing, wk map[string]string) {
	environ := map[string]string{
		"CASCADE_NATS_URL":     s.URL,
		"CASCADE_PIPELINE":     s.Plan.Pipeline,
		"CASCADE_METRICS_ADDR": "", // served once by the caller
		// HTTP is opt-in (Env["CASCADE_HTTP_ADDR"]): tests run many systems.
		"CASCADE_HTTP_ADDR": "",
	}
	maps.Copy(environ, cfg.Env)
	envOf := func(service string) map[string]string {
		e := maps.Clone(environ)
		maps.Copy(e, cfg.ServiceEnv[service])
		return e
	}
	return envOf("controller"), envOf("ingress"), envOf("stage-worker")
}

// start configures and connects the services and runs them under one
// errgroup; on an error the caller releases what it opened.
func (s *System) start(cfg Config) error {
	var err error
	if s.Conn, err = s.connect(cfg.Logger, "cascadeserve-client", s.URL, cfg.ClientOptions...); err != nil {
		return err
	}
	if s.JS, err = jetstream.New(s.Conn); err != nil {
		return err
	}
	ctlEnv, ingEnv, wkEnv := s.serviceEnvs(cfg)
	ctlCfg, err := controller.ConfigFromEnv(ctlEnv)
	if err != nil {
		return err
	}
	ingCfg, err := ingress.ConfigFromEnv(ingEnv)
	if err != nil {
		return err
	}
	wkCfg, err := stageworker.ConfigFromEnv(wkEnv)
	if err != nil {
		return err
	}
	// The services get the plan and its model files from here, unless
	// their environment names a plan file or a model folder, as a
	// deployment's may (the binaries read those).
	ctlPlan, models := s.Plan, modelFiles(cfg.PlanFile)
	if ctlCfg.Plan != "" {
		if ctlPlan, err = controller.LoadPlan(ctlCfg); err != nil {
			return err
		}
	}
	if wkCfg.ModelDir != "" {
		if models, err = stageworker.ModelFiles(wkCfg); err != nil {
			return err
		}
	}
	ctlConn, err := s.connect(cfg.Logger, "cascadeserve-controller", ctlEnv["CASCADE_NATS_URL"], s.serviceOptions(ctlEnv["CASCADE_NATS_URL"])...)
	if err != nil {
		return err
	}
	ingConn, err := s.connect(cfg.Logger, "cascadeserve-ingress", ingEnv["CASCADE_NATS_URL"], s.serviceOptions(ingEnv["CASCADE_NATS_URL"])...)
	if err != nil {
		return err
	}
	s.workers = workerSet{
		cfg: wkCfg, models: models, logger: cfg.Logger, reg: cfg.Registerer, labeled: cfg.Workers > 1,
		running: map[int]*runningWorker{}, errc: make(chan error, 1),
		connect: func(name string) (*nats.Conn, error) {
			// Not in s.conns: a worker's connection closes when it stops.
			url := wkEnv["CASCADE_NATS_URL"]
			return natsbus.Connect(url, name, cfg.Logger.With("component", name), s.serviceOptions(url)...)
		},
	}
	var wkConns []*nats.Conn
	for i := range cfg.Workers {
		nc, err := s.connect(cfg.Logger, "cascadeserve-worker-"+strconv.Itoa(i), wkEnv["CASCADE_NATS_URL"], s.serviceOptions(wkEnv["CASCADE_NATS_URL"])...)
		if err != nil {
			return err
		}
		wkConns = append(wkConns, nc)
	}
	return s.run(cfg, services{ctlCfg, ctlPlan, ctlConn, ingCfg, ingConn, wkConns})
}

// services are the configured and connected services of a system.
type services struct {
	ctl     controller.Config
	ctlPlan *plan.Plan
	ctlConn *nats.Conn
	ing     ingress.Config
	ingConn *nats.Conn
	wkConns []*nats.Conn
}

// run runs the services under one errgroup, which a failing service (or
// worker) stops; when it ends, the connections close and the embedded
// server shuts down.
func (s *System) run(cfg Config, svc services) error {
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error {
		return named("controller", controller.Run(gctx, svc.ctl, controller.Deps{
			Deps: servicemain.Deps{Logger: cfg.Logger.With("component", "controller"), Registerer: cfg.Registerer, Conn: svc.ctlConn, HTTP: cfg.HTTP},
			Plan: svc.ctlPlan,
		}))
	})
	g.Go(func() error {
		return named("ingress", ingress.Run(gctx, svc.ing, ingress.Deps{
			Deps: servicemain.Deps{Logger: cfg.Logger.With("component", "ingress"), Registerer: cfg.Registerer, Conn: svc.ingConn},
		}))
	})
	s.workers.ctx = gctx
	for _, nc := range svc.wkConns {
		if _, err := s.workers.start(nc); err != nil {
			cancel()
			return err
		}
	}
	g.Go(func() error {
		// A failing worker stops the system; stopped ones do not.
		select {
		case err := <-s.workers.errc:
			return err
		case <-gctx.Done():
		}
		s.workers.wait()
		select {
		case err := <-s.workers.errc:
			return err
		default:
			return nil
		}
	})
	go func() {
		s.err = g.Wait()
		s.release()
		close(s.done)
	}()
	return nil
}

func named(service string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return fmt.Errorf("%s: %w", service, err)
}

// waitReady polls until a probe request through the real pipeline is
// answered, or a service fails, or the timeout passes.
func (s *System) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	codec := wire.NewCodec()
	probe := wire.Request{ID: "probe-" + nats.NewInbox()[7:], Input: wire.FP32Tensor(s.Plan.Input.Shape, make([]float32, s.Plan.Input.Elements())), TimeoutMs: 5000}
	body, err := codec.EncodeRequest(&probe)
	if err != nil {
		return err
	}
	var last error
	for {
		select {
		case <-s.done:
			if s.err != nil {
				return fmt.Errorf("system stopped while starting: %w", s.err)
			}
			return errors.New("system stopped while starting")
		case <-ctx.Done():
			return fmt.Errorf("system not ready after %v: %w", timeout, errors.Join(ctx.Err(), last))
		default:
		}
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		msg, err := s.Conn.RequestWithContext(rctx, wire.InferSubject(s.Plan.Pipeline), body)
		rcancel()
		if err == nil {
			var res wire.Result
			if err = wire.DecodeResult(msg.Data, &res); err == nil {
				if res.Error == nil {
					return nil
				}
				err = res.Error
			}
		}
		last = err
		probe.ID = "probe-" + nats.NewInbox()[7:]
		if body, err = codec.EncodeRequest(&probe); err != nil {
			return err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		case <-s.done:
		}
	}
}

// start runs a worker on nc (closing nc when it stops) and returns its
// number. The caller holds no lock.
func (ws *workerSet) start(nc *nats.Conn) (int, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		nc.Close()
		return 0, errors.New("system stopping")
	}
	i := ws.next
	ws.next++
	reg := ws.reg
	if ws.labeled {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"worker": strconv.Itoa(i)}, reg)
	}
	ctx, cancel := context.WithCancel(ws.ctx)
	rw := &runningWorker{cancel: cancel, done: make(chan struct{})}
	ws.running[i] = rw
	ws.wg.Add(1)
	go func() {
		defer ws.wg.Done()
		defer close(rw.done)
		defer cancel()
		err := named("stage-worker", stageworker.Run(ctx, ws.cfg, stageworker.Deps{
			Deps:   servicemain.Deps{Logger: ws.logger.With("component", "stage-worker", "worker", i), Registerer: reg, Conn: nc},
			Models: ws.models,
		}))
		nc.Drain()
		ws.mu.Lock()
		delete(ws.running, i)
		ws.mu.Unlock()
		if err != nil {
			select {
			case ws.errc <- err:
			default:
			}
		}
	}()
	return i, nil
}

// wait stops new workers from starting and waits for the running ones.
func (ws *workerSet) wait() {
	ws.mu.Lock()
	ws.closed = true
	ws.mu.Unlock()
	ws.wg.Wait()
}

// AddWorker starts one more stage worker with the configuration of the
// others and returns its number (its metrics carry worker="<n>" when the
// system started with several workers). It returns once the worker runs,
// not once it is ready: its heartbeat says when it serves.
func (s *System) AddWorker() (int, error) {
	select {
	case <-s.done:
		return 0, errors.New("system stopped")
	default:
	}
	ws := &s.workers
	ws.mu.Lock()
	name := "cascadeserve-worker-" + strconv.Itoa(ws.next)
	ws.mu.Unlock()
	nc, err := ws.connect(name)
	if err != nil {
		return 0, err
	}
	return ws.start(nc)
}

// StopWorker stops worker i cleanly, as SIGTERM stops a worker pod: it
// stops pulling, finishes the batch in hand, announces that it leaves and
// returns. StopWorker waits for that, or for ctx.
func (s *System) StopWorker(ctx context.Context, i int) error {
	ws := &s.workers
	ws.mu.Lock()
	rw := ws.running[i]
	ws.mu.Unlock()
	if rw == nil {
		return fmt.Errorf("no running worker %d", i)
	}
	rw.cancel()
	select {
	case <-rw.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Workers returns the numbers of the running stage workers, ascending.
func (s *System) Workers() []int {
	ws := &s.workers
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return slices.Sorted(maps.Keys(ws.running))
}

// Done is closed once every service has stopped.
func (s *System) Done() <-chan struct{} { return s.done }

// Err is the first service error, valid after Done.
func (s *System) Err() error { return s.err }

// Stop stops every service, waits for them, and shuts the server down.
func (s *System) Stop() error {
	s.cancel()
	<-s.done
	return s.err
}

func (s *System) closeConns() {
	for _, nc := range s.conns {
		nc.Close()
	}
}
