package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/natsembed"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Config configures Run. Zero values take the defaults in the comments.
type Config struct {
	// Live is the plan served and the systems' stage worker; its Runners
	// is also the number of sessions of the in-process runs, and its
	// ONNXRuntimeLib is required.
	Live
	// Gears are the ids of the gears measured; empty: the most accurate
	// (first) and the cheapest (last) gear of the plan.
	Gears []string
	// Session holds the in-process sessions' provider and CUDA options
	// (its IntraOpThreads is ignored), on the provider of Live.WorkerEnv.
	Session onnxrt.SessionOptions

	// Broker configures the broker ceiling (MeasureBroker); Ceiling the
	// item-hop ceiling (MeasureCeiling), measured only with HopCeiling.
	Broker  BrokerConfig
	Ceiling CeilingConfig
	// Baseline names the model of the single-model baseline: a gear running
	// it alone, added to the plan for the run (withBaselineGear), measured
	// in process and through the pipeline like the other gears. Empty: the
	// plan's most accurate model (the last of its ladder); BaselineNone:
	// no baseline.
	Baseline string
	// ComputeDuration is the length of each in-process measurement
	// (default 2s).
	ComputeDuration time.Duration
	// Concurrency is the closed loop's requests in flight; 0: 2 × the
	// gear's max batch × Runners.
	Concurrency int
	// RequestItems > 1 sends that many items per request (a batched
	// input) in the saturated and half-load runs; the idle run sends lone
	// items. Default 1.
	RequestItems int
	// Warmup (default 3s) and Duration (default 15s) of each saturated
	// pipeline run; the warm-up's results are discarded. The half-load run
	// has the same warm-up.
	Warmup   time.Duration
	Duration time.Duration
	// HalfLoad is the measured phase of each gear's open-loop Poisson run
	// at half its saturated requests/s, on the same system right after the
	// saturated run (default 10s; < 0: none). IdleRequests are then sent
	// one at a time, each after the previous answer (default 200; < 0:
	// none): a lone request's latency.
	HalfLoad     time.Duration
	IdleRequests int

	// SkipCeiling, SkipCompute and SkipPipeline leave a part out;
	// HopCeiling adds the item-hop ceiling.
	SkipCeiling, SkipCompute, SkipPipeline bool
	HopCeiling                             bool
}

// Live configures the live systems a measurement starts (a fresh
// all-in-one system per gear, gear pinned) and what they serve; Config,
// CheckConfig and KneeConfig embed it.
type Live struct {
	// PlanFile is the plan to serve; empty: the built-in MNIST plan.
	PlanFile string
	// Runners is the stage worker's runner count (CASCADE_WORKER_RUNNERS,
	// default 2).
	Runners int
	// ONNXRuntimeLib is the ONNX Runtime library of the stage worker
	// (empty: its own search).
	ONNXRuntimeLib string
	// WorkerEnv are further settings of the stage worker
	// (CASCADE_WORKER_PROVIDER, CASCADE_WORKER_CUDA_*).
	WorkerEnv map[string]string
	// Items are the requests (default: the 10,000 MNIST test images).
	Items *dataset.Set
	// TempDir is where the JetStream stores go (default os.TempDir()); each
	// system gets a fresh folder, removed afterwards.
	TempDir string
	// Logger receives the services' logs (default: discarded).
	Logger *slog.Logger
	// Progress receives a line as each measurement starts (nil: none).
	Progress io.Writer
}

// defaults fills Live's defaults.
func (l *Live) defaults() error {
	orDefault(&l.Runners, 2)
	if l.Logger == nil {
		l.Logger = slog.New(slog.DiscardHandler)
	}
	if l.Progress == nil {
		l.Progress = io.Discard
	}
	if l.Items == nil {
		set, err := mnist.TestImages()
		if err != nil {
			return err
		}
		l.Items = set
	}
	return nil
}

// configured fills a configuration's defaults with fill, then loads the
// plan its systems serve (l.PlanFile; empty: the built-in plan).
func configured(fill func() error, l *Live) (*plan.Plan, error) {
	if err := fill(); err != nil {
		return nil, err
	}
	return system.LoadPlan(l.PlanFile)
}

// progressf writes a progress line to l.Progress, "bench: " first.
func (l Live) progressf(format string, args ...any) {
	fmt.Fprintf(l.Progress, "bench: "+format+"\n", args...)
}

// environmentOf is where a measurement of p on these systems runs, with
// the version of the stage workers' ONNX Runtime.
func (l Live) environmentOf(p *plan.Plan) Environment {
	e := environment(p, l.PlanFile, l.Runners, l.WorkerEnv)
	e.ORTVersion = ortVersion(l.ONNXRuntimeLib)
	return e
}

// orDefault sets *v to def unless *v is positive (NaN is not).
func orDefault[T int | float64 | time.Duration](v *T, def T) {
	if !(*v > 0) {
		*v = def
	}
}

// warmupOr is a configured warm-up: w, def when w is 0, none when w < 0.
func warmupOr(w, def time.Duration) time.Duration {
	switch {
	case w < 0:
		return 0
	case w == 0:
		return def
	}
	return w
}

func (c *Config) defaults() error {
	orDefault(&c.ComputeDuration, 2*time.Second)
	c.Warmup = warmupOr(c.Warmup, 3*time.Second)
	orDefault(&c.Duration, 15*time.Second)
	if c.HalfLoad == 0 {
		c.HalfLoad = 10 * time.Second
	}
	if c.IdleRequests == 0 {
		c.IdleRequests = 200
	}
	return c.Live.defaults()
}

// Run measures, in this order and in this process: the broker ceiling
// (and, with HopCeiling, the item-hop ceiling) on an embedded server of its
// own, in-process ONNX Runtime throughput of every model of the measured
// gears and of their cascades, and the whole pipeline at each measured
// gear (a fresh all-in-one system per gear, gear pinned: saturated, then
// at half that load, then one request at a time), then relates them. The
// measured gears include the single-model baseline gear unless
// Config.Baseline is BaselineNone; every system then serves the plan with
// that gear added.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	p, err := configured(cfg.defaults, &cfg.Live)
	if err != nil {
		return nil, err
	}
	picked, err := pickGears(p, cfg.Gears)
	if err != nil {
		return nil, err
	}
	rep := &Report{
		Environment: environment(p, cfg.PlanFile, cfg.Runners, cfg.WorkerEnv),
		Settings: RunSettings{
			ComputeSeconds: cfg.ComputeDuration.Seconds(), WarmupSeconds: cfg.Warmup.Seconds(),
			DurationSeconds: cfg.Duration.Seconds(), Concurrency: cfg.Concurrency,
			HalfLoadSeconds: max(cfg.HalfLoad.Seconds(), 0), IdleRequests: max(cfg.IdleRequests, 0),
			RequestItems: cfg.RequestItems,
		},
	}
	progress := cfg.progressf

	// The gears measured, by id: the picked ones, then the baseline's,
	// served from a copy of the plan that has it.
	ids := make([]string, len(picked))
	for i, gi := range picked {
		ids[i] = p.Gears[gi].ID
	}
	src := modelSource(p)
	served := p
	if cfg.Baseline != BaselineNone && (!cfg.SkipCompute || !cfg.SkipPipeline) {
		model, err := baselineModel(p, cfg.Baseline)
		if err != nil {
			return nil, err
		}
		d, id, err := withBaselineGear(p, model)
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp(cfg.TempDir, "cascadeserve-bench-plan-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if cfg.PlanFile, err = writePlan(d, src, dir); err != nil {
			return nil, err
		}
		served = d
		ids = append(ids, id)
		rep.Baseline = &Baseline{Model: model, Gear: id, BatchingOf: p.Gears[0].ID}
	}
	gears := make([]int, len(ids))
	for i, id := range ids {
		gears[i] = served.GearByID(id)
	}

	if !cfg.SkipCeiling || cfg.HopCeiling {
		if err := ceilingsOnOwnServer(ctx, cfg, rep, progress); err != nil {
			return nil, err
		}
	}

	if err := measureGears(ctx, cfg, served, src, gears, rep, progress); err != nil {
		return nil, err
	}
	rep.Ratios = ratios(rep)
	if rep.Baseline != nil {
		rep.Baseline.Versus = baselineRatios(rep)
	}
	return rep, nil
}

// measureGears measures the gears of served (by index) into rep: in
// process, unless SkipCompute, then through the pipeline, unless
// SkipPipeline.
func measureGears(ctx context.Context, cfg Config, served *plan.Plan, src ModelSource, gears []int, rep *Report, progress func(string, ...any)) error {
	if !cfg.SkipCompute {
		rt, err := onnxrt.NewRuntime(cfg.ONNXRuntimeLib)
		if err != nil {
			return err
		}
		rep.Environment.ORTVersion = rt.Version()
		err = compute(ctx, cfg, served, src, gears, rt, rep, progress)
		rt.Close()
		if err != nil {
			return err
		}
	}
	if !cfg.SkipPipeline {
		for _, gi := range gears {
			run, err := pipeline(ctx, cfg, served, served.Gears[gi], progress)
			if err != nil {
				return fmt.Errorf("pipeline at gear %s: %w", served.Gears[gi].ID, err)
			}
			rep.Pipelines = append(rep.Pipelines, run)
		}
	}
	return nil
}

// pipeline runs the gear pinned on a fresh system: saturated (closed
// loop), then open-loop Poisson at half the saturated requests/s, then
// IdleRequests one at a time.
func pipeline(ctx context.Context, cfg Config, p *plan.Plan, g plan.Gear, progress func(string, ...any)) (GearRun, error) {
	conc := cfg.Concurrency
	if conc <= 0 {
		// 6 × max batch × runners items in flight, in requests of
		// RequestItems items: enough that every runner's next batch is
		// queued while the last one's results travel back (with 2× the
		// cheapest gear of 32-item requests measured 25% below its
		// saturated rate, waiting on round trips).
		conc = max(6*maxBatch(g)*cfg.Runners/max(cfg.RequestItems, 1), 2)
	}
	stages := StageIndex(g)
	progress("whole pipeline, gear %s (%s), %d in flight, %v warm-up + %v...", g.ID, plan.CascadeString(g.Cascade), conc, cfg.Warmup, cfg.Duration)
	return withSystem(ctx, cfg.TempDir, cfg.systemConfig(g.ID), func(sys *system.System) (GearRun, error) {
		out := GearRun{Gear: g.ID, Cascade: plan.CascadeString(g.Cascade)}
		var err error
		out.Load, err = Load(ctx, sys.Conn, LoadConfig{
			Pipeline: p.Pipeline, Items: cfg.Items, Concurrency: conc, RequestItems: cfg.RequestItems, UINT8Scale: p.Input.UINT8Scale,
			Warmup: cfg.Warmup, Duration: cfg.Duration, Stages: stages,
		})
		if err != nil {
			return out, err
		}
		if half := out.Load.Throughput / 2; cfg.HalfLoad > 0 && half > 0 {
			progress("  gear %s at half load: Poisson %.0f/s, %v warm-up + %v...", g.ID, half, cfg.Warmup, cfg.HalfLoad)
			run, err := Load(ctx, sys.Conn, LoadConfig{
				Pipeline: p.Pipeline, Items: cfg.Items, QPS: half, RequestItems: cfg.RequestItems, UINT8Scale: p.Input.UINT8Scale, Warmup: cfg.Warmup, Duration: cfg.HalfLoad, Stages: stages,
			})
			if err != nil {
				return out, fmt.Errorf("half load: %w", err)
			}
			out.HalfLoad = &run
		}
		if cfg.IdleRequests > 0 {
			progress("  gear %s at idle: %d requests one at a time...", g.ID, cfg.IdleRequests)
			run, err := Load(ctx, sys.Conn, LoadConfig{
				Pipeline: p.Pipeline, Items: cfg.Items, Concurrency: 1, MaxRequests: cfg.IdleRequests, Stages: stages, UINT8Scale: p.Input.UINT8Scale,
			})
			if err != nil {
				return out, fmt.Errorf("idle: %w", err)
			}
			out.Idle = &run
		}
		return out, nil
	})
}

// pickGears resolves gear ids to indices; none means the first and last.
func pickGears(p *plan.Plan, ids []string) ([]int, error) {
	if len(ids) == 0 {
		if len(p.Gears) == 1 {
			return []int{0}, nil
		}
		return []int{0, len(p.Gears) - 1}, nil
	}
	var out []int
	for _, id := range ids {
		i := p.GearByID(id)
		if i < 0 {
			var have []string
			for _, g := range p.Gears {
				have = append(have, g.ID)
			}
			return nil, fmt.Errorf("plan %s has no gear %q (gears: %v)", p.Pipeline, id, have)
		}
		out = append(out, i)
	}
	return out, nil
}

func environment(p *plan.Plan, file string, runners int, workerEnv map[string]string) Environment {
	if file == "" {
		file = "built-in " + p.Pipeline + " plan"
	}
	provider := workerEnv["CASCADE_WORKER_PROVIDER"]
	if provider == "" {
		provider = onnxrt.ProviderCPU
	}
	partitions := p.QueuePartitions()
	if n, err := strconv.Atoi(workerEnv["CASCADE_QUEUE_PARTITIONS"]); err == nil && n > 0 {
		partitions = n
	}
	return Environment{
		Started: time.Now().UTC(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		CPUs: runtime.NumCPU(), Pipeline: p.Pipeline, PlanFile: file, Runners: runners, Partitions: partitions, Provider: provider,
	}
}

// ortVersion is the version of the ONNX Runtime library at lib, the one the
// stage workers load; "" when lib is empty or does not load.
func ortVersion(lib string) string {
	if lib == "" {
		return ""
	}
	rt, err := onnxrt.NewRuntime(lib)
	if err != nil {
		return ""
	}
	defer rt.Close()
	return rt.Version()
}

// maxBatch is the largest batch any stage of the gear runs.
func maxBatch(g plan.Gear) int {
	b := g.Batching.MaxBatch
	for _, s := range g.Cascade {
		b = max(b, s.MaxBatch)
	}
	return b
}

// stageBatch is the batch size of stage j of the gear.
func stageBatch(g plan.Gear, j int) int {
	if b := g.Cascade[j].MaxBatch; b > 0 {
		return b
	}
	return g.Batching.MaxBatch
}

// ceilingsOnOwnServer measures the broker ceiling and, with HopCeiling,
// the item-hop ceiling on an embedded server of their own, set up as the
// systems' embedded servers are.
func ceilingsOnOwnServer(ctx context.Context, cfg Config, rep *Report, progress func(string, ...any)) error {
	dir, err := os.MkdirTemp(cfg.TempDir, "cascadeserve-bench-ceiling-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := natsembed.StartServer(natsembed.ServerConfig{Port: -1, StoreDir: dir})
	if err != nil {
		return err
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	if !cfg.SkipCeiling {
		bc := cfg.Broker.withDefaults()
		progress("broker ceiling as nats bench measures it (%d messages of %d bytes, %d rounds)...", bc.Messages, bc.Size, bc.Rounds)
		b, err := MeasureBroker(ctx, srv.ClientURL(), bc)
		if err != nil {
			return err
		}
		rep.Broker = &b
	}
	if cfg.HopCeiling {
		progress("item-hop ceiling (%d messages per batch size)...", cfg.Ceiling.withDefaults().Messages)
		c, err := MeasureCeiling(ctx, srv.ClientURL(), cfg.Ceiling)
		if err != nil {
			return err
		}
		rep.HopCeiling = &c
	}
	return nil
}

// modelSource reads models from the plan's model source, falling back to
// the embedded MNIST ladder for the mnist pipeline.
func modelSource(p *plan.Plan) ModelSource {
	return func(name string) ([]byte, error) {
		b, err := p.ReadModel(name)
		if err != nil && p.Pipeline == "mnist" {
			if b2, err2 := mnist.Model(name); err2 == nil {
				return b2, nil
			}
		}
		return b, err
	}
}

func compute(ctx context.Context, cfg Config, p *plan.Plan, src ModelSource, gears []int, rt *onnxrt.Runtime, rep *Report, progress func(string, ...any)) error {
	type key struct {
		model string
		batch int
	}
	done := map[key]bool{}
	for _, gi := range gears {
		g := p.Gears[gi]
		for j, s := range g.Cascade {
			k := key{s.Model, min(stageBatch(g, j), cfg.Items.Len())}
			if done[k] {
				continue
			}
			done[k] = true
			onnx, err := src(s.Model)
			if err != nil {
				return err
			}
			progress("in-process %s, batch %d, %d sessions, %v...", k.model, k.batch, cfg.Runners, cfg.ComputeDuration)
			r, err := ModelThroughput(ctx, rt, ModelRunConfig{
				Model: s.Model, ONNX: onnx, Items: cfg.Items, Batch: k.batch, Sessions: cfg.Runners, Duration: cfg.ComputeDuration,
				Options: cfg.Session,
			})
			if err != nil {
				return err
			}
			rep.Models = append(rep.Models, r)
		}
	}
	for _, gi := range gears {
		g := p.Gears[gi]
		progress("in-process cascade of gear %s (%s), %v...", g.ID, plan.CascadeString(g.Cascade), cfg.ComputeDuration)
		r, err := CascadeThroughput(ctx, rt, CascadeRunConfig{
			Plan: p, Gear: gi, Models: src, Items: cfg.Items, Sessions: cfg.Runners, Duration: cfg.ComputeDuration,
			Options: cfg.Session,
		})
		if err != nil {
			return err
		}
		rep.Cascades = append(rep.Cascades, r)
	}
	return nil
}

// systemConfig is an all-in-one system serving the plan pinned to a gear.
func (c Live) systemConfig(gear string) system.Config {
	env := maps.Clone(c.WorkerEnv)
	if env == nil {
		env = map[string]string{}
	}
	env["CASCADE_GEAR"] = gear
	env["CASCADE_WORKER_RUNNERS"] = strconv.Itoa(c.Runners)
	if c.ONNXRuntimeLib != "" {
		env["CASCADE_ONNXRUNTIME_LIB"] = c.ONNXRuntimeLib
	}
	return system.Config{
		PlanFile: c.PlanFile, NATSPort: -1, Workers: 1, Env: env, Logger: c.Logger, ReadyTimeout: 2 * time.Minute,
	}
}

// withSystem starts a fresh system with its store in a new temporary
// folder under parent (os.TempDir() when empty), calls f, and stops and removes everything.
func withSystem[T any](ctx context.Context, parent string, sc system.Config, f func(*system.System) (T, error)) (T, error) {
	var zero T
	dir, err := os.MkdirTemp(parent, "cascadeserve-bench-")
	if err != nil {
		return zero, err
	}
	defer os.RemoveAll(dir)
	sc.DataDir = dir
	sys, err := system.Start(ctx, sc)
	if err != nil {
		return zero, err
	}
	out, err := f(sys)
	if stopErr := sys.Stop(); stopErr != nil {
		err = errors.Join(err, fmt.Errorf("stop system: %w", stopErr))
	}
	// The systems share this process: collect this one's heap (nats-server's
	// message ids and caches, the load's buffers) now, or the collector
	// charges it to the next system's measured runs.
	debug.FreeOSMemory()
	return out, err
}
