package stageworker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/modelinput"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// pollInterval is how often Run checks for the control bucket, the plan
// and the topology while it waits for the controller, and how often the
// control watch checks that its bucket is still the same one.
const pollInterval = 250 * time.Millisecond

// worker is one running stage worker.
type worker struct {
	cfg     Config
	logger  *slog.Logger
	metrics *metrics
	now     func() time.Time
	hooks   hooks
	nc      *nats.Conn
	js      jetstream.JetStream
	codec   *wire.Codec
	ctl     *watcher
	// files holds the model files (Deps.Models).
	files fs.FS
	// models are the hosted models in ladder order.
	models []*hosted
	// itemSize and classes are the plan's input elements and classes;
	// every hosted model matches them.
	itemSize   int
	classes    int
	uint8Scale float32
	// partitions is the number of partitions of every model's queue (the
	// plan's, fixed for the worker's life).
	partitions int
}

// hosted is one model this worker serves, shared by its runners.
type hosted struct {
	name string
	// input turns items into the model's input (its input type, the
	// plan's UINT8 scale).
	input modelinput.Transform
	// consumers are the model's queue's consumers, one per partition;
	// pulls take turns over them.
	consumers  []jetstream.Consumer
	next       atomic.Uint32
	maxDeliver int
	// ackWait is the consumer's AckWait: a batch still in hand after half
	// of it tells the server it is in progress (0: never).
	ackWait time.Duration
	// backlog is the last NumPending seen on the model's queue (0 after a
	// pull that found it empty); seen is when this worker last pulled from
	// it (unix ns).
	backlog     atomic.Int64
	seen        atomic.Int64
	backlogGage prometheus.Gauge
	// perMsg holds itemsPerMessage as float64 bits.
	perMsg atomic.Uint64
}

// itemsPerMessage is the running mean of items per envelope on the model's
// queue (1 until the first message), to turn the batching policy's item
// counts into message counts.
func (h *hosted) itemsPerMessage() float64 {
	if v := math.Float64frombits(h.perMsg.Load()); v >= 1 {
		return v
	}
	return 1
}

// observeItems folds one message's item count into itemsPerMessage.
func (h *hosted) observeItems(n int) {
	for {
		old := h.perMsg.Load()
		v := math.Float64frombits(old)
		next := float64(n)
		if v >= 1 {
			next = v + (float64(n)-v)/16
		}
		if h.perMsg.CompareAndSwap(old, math.Float64bits(next)) {
			return
		}
	}
}

// pick returns the consumer of the partition to pull from next.
func (h *hosted) pick() jetstream.Consumer {
	return h.consumers[int(h.next.Add(1)-1)%len(h.consumers)]
}

func (h *hosted) setBacklog(n int64) {
	h.backlog.Store(n)
	h.backlogGage.Set(float64(n))
}

// Run serves as a stage worker until ctx ends, then shuts down cleanly: it
// stops pulling, finishes the batches in hand, publishes, acks and returns
// nil. It waits for the controller's control bucket, plan and topology
// first, then loads every hosted model once per runner.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	w, err := newWorker(cfg, deps)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	// The watch waits for the control bucket, and binds it again if it is
	// recreated.
	g.Go(func() error { return w.ctl.run(gctx, w.js, wire.KVBucket(cfg.Pipeline)) })
	fail := func(err error) error {
		cancel()
		_ = g.Wait()
		return fmt.Errorf("stage worker: %w", err)
	}

	c, names, err := w.start(gctx)
	if errors.Is(err, errStopping) {
		cancel()
		return g.Wait()
	}
	if err != nil {
		return fail(err)
	}
	rt, sessions, err := w.load(c.Plan)
	if err != nil {
		return fail(err)
	}
	defer closeSessions(rt, sessions)

	w.metrics.Ready.Set(1)
	w.logger.Info("stage worker ready", "pipeline", cfg.Pipeline, "models", names, "runners", cfg.Runners,
		"threads", cfg.Threads, "provider", cfg.Provider, "onnxruntime", rt.Version(), "gear", c.State.Gear)
	for i := range cfg.Runners {
		r := newRunner(w, i, sessions[i])
		g.Go(func() error { return r.run(gctx) })
	}
	g.Go(func() error { return w.heartbeat(gctx, names) })
	err = g.Wait()
	// Acks and replies are buffered by the client: push them out before
	// the process may exit.
	if ferr := w.nc.FlushTimeout(cfg.PublishTimeout); ferr != nil && !errors.Is(ferr, nats.ErrConnectionClosed) {
		w.logger.Warn("flushing acknowledgements at shutdown", "err", ferr)
	}
	w.logger.Info("stage worker stopped")
	return err
}

// errStopping means ctx ended while the worker was still starting: Run
// then returns what its supervisor returns, with no error of its own.
var errStopping = errors.New("stopping before ready")

// newWorker validates cfg and builds a worker from deps, with its metrics
// registered, its JetStream handle and its control watcher (not yet
// running). It connects to nothing new.
func newWorker(cfg Config, deps Deps) (*worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d, err := deps.WithDefaults("stage worker")
	if err != nil {
		return nil, err
	}
	if deps.Models == nil {
		return nil, fmt.Errorf("stage worker: %w: Deps.Models is nil", ErrNoModels)
	}
	w := &worker{cfg: cfg, logger: d.Logger, now: d.Now, hooks: deps.hooks, nc: d.Conn, codec: wire.NewCodec(), files: deps.Models}
	w.metrics = newMetrics(d.Registerer)
	if w.js, err = jetstream.New(d.Conn); err != nil {
		return nil, fmt.Errorf("stage worker: jetstream: %w", err)
	}
	w.ctl = newWatcher(w.logger, w.metrics, w.now, w.hooks.gearApplied)
	return w, nil
}

// start waits for the plan (the control watch must be running) and the
// topology, then binds the hosted models' consumers and checks their
// provider. It returns the control state it started from and the hosted
// models in ladder order; errStopping if ctx ended first.
func (w *worker) start(ctx context.Context) (*control, []string, error) {
	bucket := wire.KVBucket(w.cfg.Pipeline)
	w.logger.Info("waiting for the plan", "bucket", bucket)
	select {
	case <-w.ctl.ready:
	case <-ctx.Done():
		return nil, nil, errStopping
	}
	c := w.ctl.load()
	if c.Plan.Pipeline != w.cfg.Pipeline {
		return nil, nil, fmt.Errorf("the plan in bucket %s is for pipeline %q, not %q", bucket, c.Plan.Pipeline, w.cfg.Pipeline)
	}
	names := w.cfg.Models
	if len(names) == 0 {
		names = c.Plan.UsedModels()
	}
	names, err := ladderOrder(c.Plan, names)
	if err != nil {
		return nil, nil, err
	}
	if err := natsbus.WaitTopology(ctx, w.js, w.cfg.Pipeline, names, c.Plan.QueuePartitions(), pollInterval); err != nil {
		if ctx.Err() != nil {
			return nil, nil, errStopping
		}
		return nil, nil, err
	}
	if err := w.bind(ctx, c.Plan, names); err != nil {
		return nil, nil, err
	}
	if err := checkProvider(c.Plan, names, w.cfg.Provider, w.cfg.AllowProviderMismatch, w.logger); err != nil {
		return nil, nil, err
	}
	return c, names, nil
}

// bind records the plan's input and partitions and adds a hosted model
// for each of names, with the consumers of its queue's partitions.
func (w *worker) bind(ctx context.Context, p *plan.Plan, names []string) error {
	w.itemSize, w.classes = p.Input.Elements(), p.Input.Classes
	w.uint8Scale = float32(p.Input.UINT8Scale)
	w.partitions = p.QueuePartitions()
	for _, name := range names {
		h := &hosted{name: name, backlogGage: w.metrics.host(name)}
		for part := range w.partitions {
			stream := wire.ModelPartitionStream(w.cfg.Pipeline, name, part, w.partitions)
			cons, err := w.js.Consumer(ctx, stream, wire.ModelConsumer(name))
			if err != nil {
				return fmt.Errorf("consumer of model %q on %s: %w", name, stream, err)
			}
			if info := cons.CachedInfo(); info != nil && part == 0 {
				h.maxDeliver, h.ackWait = info.Config.MaxDeliver, info.Config.AckWait
			}
			h.consumers = append(h.consumers, cons)
		}
		w.models = append(w.models, h)
	}
	return nil
}

// ladderOrder checks that every name is a model of the plan and returns
// them in ladder order.
func ladderOrder(p *plan.Plan, names []string) ([]string, error) {
	want := map[string]bool{}
	for _, n := range names {
		if _, ok := p.Model(n); !ok {
			return nil, fmt.Errorf("model %q is not in the plan (models: %s)", n, strings.Join(p.UsedModels(), ", "))
		}
		want[n] = true
	}
	var out []string
	for _, m := range p.Ladder {
		if want[m] {
			out = append(out, m)
			delete(want, m)
		}
	}
	for _, m := range p.Models { // models outside the ladder, in plan order
		if want[m.Name] {
			out = append(out, m.Name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no models to host")
	}
	return out, nil
}

// checkProvider refuses hosted models whose plan profile was measured on
// another execution provider than the worker's, unless allow (then it
// warns). A profile without a provider (plans made before it was recorded)
// passes.
func checkProvider(p *plan.Plan, names []string, provider string, allow bool, logger *slog.Logger) error {
	var other []string
	for _, n := range names {
		m, _ := p.Model(n)
		if pp := m.Profile.Provider; pp != "" && pp != provider {
			other = append(other, fmt.Sprintf("%s (%s)", n, pp))
		}
	}
	if len(other) == 0 {
		return nil
	}
	if allow {
		logger.Warn("serving models profiled for another provider: the plan's latencies and capacities may not hold",
			"provider", provider, "models", other)
		return nil
	}
	return fmt.Errorf("the plan's models %s were profiled for another execution provider than this worker's %q: "+
		"their latencies and the gears' capacities would not hold; profile and plan for %s (cascadeserve profile --provider %s), "+
		"or set CASCADE_WORKER_ALLOW_PROVIDER_MISMATCH=true to serve them anyway",
		strings.Join(other, ", "), provider, provider, provider)
}

// load opens one session of every hosted model per runner.
func (w *worker) load(p *plan.Plan) (*onnxrt.Runtime, [][]*onnxrt.Session, error) {
	opts, err := w.cfg.SessionOptions()
	if err != nil {
		return nil, nil, err
	}
	lib := w.cfg.ONNXRuntimeLib
	if lib == "" {
		if lib, err = onnxrt.FindLibraryFor(w.cfg.Provider, os.Getenv); err != nil {
			return nil, nil, err
		}
	}
	rt, err := onnxrt.NewRuntime(lib)
	if err != nil {
		return nil, nil, err
	}
	sessions := make([][]*onnxrt.Session, w.cfg.Runners)
	closeAll := func() { closeSessions(rt, sessions) }
	version, libPath := rt.Version(), rt.LibraryPath()
	// The plan from the control bucket knows no folder: its model files
	// resolve against the worker's own.
	files := *p
	files.SetModelSource(w.files)
	for _, h := range w.models {
		data, err := files.ReadModel(h.name)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		for r := range sessions {
			s, err := rt.Open(h.name, data, opts)
			if err != nil {
				closeAll()
				if errors.Is(err, onnxrt.ErrProviderUnavailable) {
					return nil, nil, fmt.Errorf("load model %q on provider %s (onnxruntime %s from %s): %w",
						h.name, w.cfg.Provider, version, libPath, err)
				}
				return nil, nil, fmt.Errorf("load model %q: %w", h.name, err)
			}
			sessions[r] = append(sessions[r], s)
			info := s.Info()
			if info.ItemSize() != w.itemSize || info.NumClasses != w.classes {
				closeAll()
				return nil, nil, fmt.Errorf("load model %q: it takes %v items with %d classes; the plan's input is %v with %d classes",
					h.name, info.ItemShape, info.NumClasses, p.Input.Shape, p.Input.Classes)
			}
			if h.input, err = modelinput.New(h.name, info.InputType, w.itemSize, p.Input.UINT8Scale); err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("load model %q: %w", h.name, err)
			}
		}
	}
	return rt, sessions, nil
}

// closeSessions closes every session, then the runtime.
func closeSessions(rt *onnxrt.Runtime, sessions [][]*onnxrt.Session) {
	for _, ss := range sessions {
		for _, s := range ss {
			_ = s.Close()
		}
	}
	_ = rt.Close()
}
