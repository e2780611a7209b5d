package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/bench"
	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

const benchUsage = `bench [flags]
       cascadeserve bench --check-plan [--gear ID] [flags]
       cascadeserve bench --check-plan --knee [--gears g1,g6|all] [flags]
       cascadeserve bench --compare [--quick] [--systems LIST] [--plots DIR] [flags]
       cascadeserve bench --trace [--trace-duration 2m] [--systems LIST] [--plots DIR] [flags]

Without --check-plan: the end-to-end benchmark. In one run, on this machine:
  1. the broker ceiling, measured as the official tool (nats bench js pub
     async, then js fetch) measures it: an embedded nats-server, one
     file-backed stream, --messages messages of --size bytes published
     asynchronously (--pub-batch PubAcks awaited per window), then fetched
     by a durable pull consumer (Fetch(--fetch-batch), explicit acks); best
     of --rounds rounds of each phase, in msg/s;
  2. in-process ONNX Runtime throughput, no bus: every model of the measured
     gears at the gear's max batch on --runners sessions, and each gear's
     cascade (the compute-only upper bound);
  3. the whole pipeline: a fresh all-in-one system per gear with the gear
     pinned, MNIST test images as requests: saturated (closed loop,
     --warmup discarded, then --duration measured), then open-loop Poisson
     at half the saturated requests/s (--half-load measured), then --idle
     requests one at a time;
  4. ratios: pipeline items/s ÷ the broker's fetch+ack msg/s, pipeline /
     in-process cascade, and every gear against the single-model baseline.
The measured gears are the most accurate and the cheapest (--gears), plus
the single-model baseline (--baseline): a gear running one model alone,
with the most accurate gear's batching, added to the plan the run serves.
--only hops adds the item-hop ceiling of earlier versions (publish with
Nats-Msg-Id, Fetch, Ack on a work queue of MNIST-item-sized messages, per
--hop-batches and --fetchers).

With --check-plan: predictions checked against reality for one gear
(--gear, default the most accurate), pinned on a fresh all-in-one system:
  - accuracy: all 10,000 MNIST test images (--items) served once; measured
    accuracy vs the plan's predicted accuracy (target within 0.3 points);
  - latency: Poisson arrivals at --fractions of the gear's capacity
    (--capacity, default its max_qps in the plan), --warmup discarded then
    --duration measured; measured p95 vs the simulator's p95 (target within
    25%).

With --check-plan --knee: each gear's capacity instead, planned vs
measured, for --gears (default: every gear of the plan), each pinned: the
highest open-loop Poisson load (items/s) at which the live p95 stays within
the plan's SLO, nothing is lost and typed errors stay ≤ 0.1%, each gear on
a fresh all-in-one system (--knee-fresh-probes: a fresh one for every
probe, so that no probe inherits an overloaded one's backlog or the message
ids nats-server keeps for the streams' deduplication windows). Probes of
--warmup (default 2s, discarded) and then --knee-duration measured, on the
same system, start at the gear's max_qps
(or --knee-start), step up ×1.5 while within the SLO (down while not), then
bisect between the last good and the first bad load to 5%; a probe with a
second of its load in flight is cut short; with --knee-retries N a probe that
misses otherwise is run up to N times more and the load passes if one run
does (a slow spell of the machine then spoils one run, not the knee; raise
--knee-budget with it); --knee-budget bounds each gear's search. Verdict: measured knee within ±15% of max_qps. --request-items N
sends N-item requests (loads stay in items/s); inputs go as UINT8 when the
plan takes them.

With --compare: the iso-accuracy capacity of four systems, on this machine,
in one run, with the plan's SLO and the same items (MNIST test images):
  single        the ladder's most accurate model alone, pinned, with the
                batching the planner chooses for it (dynamic batching, as
                Triton or Ray Serve would serve it);
  switching     model switching (MS+, INFaaS): the planner's plan restricted
                to one-model gears (plan --max-stages 1, the plan's own
                settings from its planner metadata, the embedded validation
                replay), the controller switching them by load;
  static        the plan's most accurate gear pinned (a static cascade);
  cascadeserve  the plan, the controller switching gears.
Each runs on a fresh all-in-one system; its capacity is the knee search's
highest open-loop Poisson load with live p95 ≤ SLO, nothing lost, typed
errors ≤ 0.1% and accuracy ≥ the single model's − 0.1 point (the single
model's accuracy on the very items each probe answered, from the embedded
test replay), measured at every probe: unpinned, the controller may switch.
Probes: --warmup (default 2s) + --knee-duration, ×1.5 steps then bisection
to 5%, --knee-budget per system. Then accuracy and p95 at 1×, 2× and 4× the
single model's capacity (--multiples). The table gives each system's
ratio to the single model; the last line the headline, CascadeServe /
single model. --quick: 1s + 1s probes, ×2 steps to 25%, 10s per system (7s
for model switching), multiples for CascadeServe only: about a minute on
two cores, a figure for CI to track, not one to quote. --systems picks
among switching, static, cascadeserve (single is always measured).

With --trace: a bursty load replayed against model switching, the static
cascade and CascadeServe (--systems), each on a fresh system: Poisson at
--trace-base (0.4) of --trace-capacity (default: the plan's most accurate
gear's max_qps), bursts to --trace-burst (3)× for --trace-burst-length (10s)
every --trace-burst-every (30s), the base ramping up from a quarter over the
first --trace-ramp (25%) of --trace-duration (default 2m) and down over the
last. Per system: per-second p95 and the share of seconds whose p95 exceeds
the SLO (target ≤ 1% for CascadeServe), accuracy, typed errors, lost items,
gear switches (the control bucket's gear key, watched) and their apply
latency, from the controller's write to the stage worker applying it (the
workers' cascade_worker_gear_apply_seconds histogram; target p99 ≤ 100 ms).
--compare --trace runs both, the trace after the comparison.

--plots DIR writes figures (PNG) of --compare (p95 and accuracy against
load per system) and of --trace (offered load, p95 and gear per second).

The verdicts are a report: the command fails only if it cannot measure.`

// benchFlags are bench's flags: shared by every mode, of the end-to-end
// benchmark, and of --check-plan (with or without --knee).
type benchFlags struct {
	checkPlan, knee                bool
	compare, quick, trace          bool
	systems, multiples, plots      string
	traceDuration                  time.Duration
	traceCapacity, traceBase       float64
	traceBurst, traceRamp          float64
	traceBurstLen, traceBurstEvery time.Duration
	planFile                       string
	runners, concurrency, reqItems int
	pf                             providerFlags
	warmup, duration               time.Duration
	jsonFile, logLevel             string
	// The end-to-end benchmark.
	gears, baseline, only, cpuProfile, hopBatches string
	compute, halfLoad                             time.Duration
	idle, messages, size, pubBatch, fetchBatch    int
	partitions                                    int
	rounds, hopMessages, fetchers                 int
	// --check-plan.
	gear                     string
	items                    int
	capacity, kneeStart      float64
	fractions                string
	kneeDuration, kneeBudget time.Duration
	kneeRetries              int
	kneeFresh                bool
}

func (f *benchFlags) register(fs *flag.FlagSet, env Env) {
	fs.BoolVar(&f.checkPlan, "check-plan", false, "check the plan's predictions for one gear against the live pipeline instead")
	fs.StringVar(&f.planFile, "plan", envOr(env, "CASCADE_PLAN", ""), "gear plan file (default: the built-in MNIST plan)")
	fs.IntVar(&f.runners, "runners", 2, "stage worker runners (and in-process sessions)")
	fs.IntVar(&f.partitions, "partitions", 0, "partitions of every model's queue, a stream each (CASCADE_QUEUE_PARTITIONS; default: the plan's)")
	f.pf.register(fs, onnxrt.ProviderCPU)
	fs.IntVar(&f.concurrency, "concurrency", 0, "closed-loop requests in flight (default 6 × max batch × runners items, in requests of --request-items)")
	fs.IntVar(&f.reqItems, "request-items", 1, "items per request in the saturated and half-load runs: >1 sends batched inputs [N, item shape] (the producer's batch axis)")
	fs.DurationVar(&f.warmup, "warmup", 0, "warm-up before each measured load phase, discarded; 0: none (default 3s; 2s with --check-plan)")
	fs.DurationVar(&f.duration, "duration", 0, "measured phase of each load run (default 15s per gear; 10s per rate with --check-plan)")
	fs.StringVar(&f.jsonFile, "json", "", "also write the numbers as JSON to this file")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the services (debug, info, warn, error)")
	// bench only
	fs.StringVar(&f.gears, "gears", "", `comma-separated gear ids to measure, or "all" (default: the most accurate and the cheapest; with --knee every gear)`)
	fs.StringVar(&f.baseline, "baseline", "", `model run alone as the single-model baseline gear (default: the plan's most accurate model, the last of its ladder; "none": no baseline)`)
	fs.DurationVar(&f.compute, "compute", 2*time.Second, "length of each in-process ONNX Runtime measurement")
	fs.DurationVar(&f.halfLoad, "half-load", 10*time.Second, "measured phase of each gear's Poisson run at half its saturated requests/s; 0: none")
	fs.IntVar(&f.idle, "idle", 200, "requests sent one at a time to each gear after its load runs; 0: none")
	fs.IntVar(&f.messages, "messages", 100000, "messages per round of the broker ceiling")
	fs.IntVar(&f.size, "size", 784, "message size in bytes of the broker ceiling")
	fs.IntVar(&f.pubBatch, "pub-batch", 500, "asynchronous publishes per PubAck window of the broker ceiling (nats bench --batch)")
	fs.IntVar(&f.fetchBatch, "fetch-batch", 500, "fetch size and max ack pending of the broker ceiling (nats bench --batch)")
	fs.IntVar(&f.rounds, "rounds", 2, "rounds of the broker ceiling, and of each fetch size of the item-hop ceiling (the best counts)")
	fs.IntVar(&f.hopMessages, "hop-messages", 20000, "messages per batch size in the item-hop ceiling (--only hops)")
	fs.StringVar(&f.hopBatches, "hop-batches", "64,128", "comma-separated fetch sizes of the item-hop ceiling (--only hops)")
	fs.IntVar(&f.fetchers, "fetchers", 2, "fetching goroutines of the item-hop ceiling (--only hops)")
	fs.StringVar(&f.only, "only", "", "comma-separated parts to run: ceiling, compute, pipeline, hops (default: all but hops)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (every part of the system runs in this process) to this file, for go tool pprof")
	// --check-plan only
	fs.StringVar(&f.gear, "gear", "", "gear to check (default: the plan's most accurate gear)")
	fs.IntVar(&f.items, "items", mnist.TestItems, "MNIST test images served in the accuracy check (the first N)")
	fs.Float64Var(&f.capacity, "capacity", 0, "gear capacity in requests/s the fractions refer to (default: its max_qps in the plan)")
	fs.StringVar(&f.fractions, "fractions", "0.5,0.8", "comma-separated fractions of the capacity for the latency check")
	fs.BoolVar(&f.knee, "knee", false, "with --check-plan: measure each gear's capacity (the highest Poisson load within the SLO) against its max_qps instead")
	fs.DurationVar(&f.kneeDuration, "knee-duration", 5*time.Second, "measured phase of each --knee (and --compare) probe, after --warmup")
	fs.DurationVar(&f.kneeBudget, "knee-budget", 90*time.Second, "time bound of each gear's --knee search (of each system's with --compare)")
	fs.BoolVar(&f.kneeFresh, "knee-fresh-probes", false, "with --knee: give every probe a fresh system instead of running a gear's probes one after the other on one")
	fs.IntVar(&f.kneeRetries, "knee-retries", 0, "with --knee: how often a probe that misses without being cut short is run again at the same load; the load passes if one run does (a slow spell of the machine spoils one run, not the knee)")
	// --compare and --trace
	fs.BoolVar(&f.compare, "compare", false, "measure the iso-accuracy capacity of the single model, model switching, the static cascade and CascadeServe instead")
	fs.BoolVar(&f.quick, "quick", false, "with --compare: short probes and a coarse search, about a minute (CI)")
	fs.BoolVar(&f.trace, "trace", false, "replay a bursty load against model switching, the static cascade and CascadeServe (with --compare: after it)")
	fs.StringVar(&f.systems, "systems", "", "with --compare or --trace: comma-separated systems among switching, static, cascadeserve (default: all)")
	fs.StringVar(&f.multiples, "multiples", "1,2,4", "with --compare: multiples of the single model's capacity at which every system's accuracy and p95 are measured")
	fs.StringVar(&f.plots, "plots", "", "with --compare or --trace: write figures (PNG) to this folder")
	fs.DurationVar(&f.traceDuration, "trace-duration", 2*time.Minute, "length of the --trace load, per system")
	fs.Float64Var(&f.traceCapacity, "trace-capacity", 0, "items/s the --trace levels are fractions of (default: the plan's most accurate gear's max_qps)")
	fs.Float64Var(&f.traceBase, "trace-base", 0.4, "--trace base load, a fraction of --trace-capacity")
	fs.Float64Var(&f.traceBurst, "trace-burst", 3, "--trace bursts, a multiple of the base load")
	fs.DurationVar(&f.traceBurstLen, "trace-burst-length", 10*time.Second, "length of each --trace burst")
	fs.DurationVar(&f.traceBurstEvery, "trace-burst-every", 30*time.Second, "--trace burst period (the first burst ends the first period)")
	fs.Float64Var(&f.traceRamp, "trace-ramp", 0.25, "share of --trace-duration over which the base ramps up from a quarter (and down at the end)")
	fs.Float64Var(&f.kneeStart, "knee-start", 0, "first load of each --knee search, items/s (default: the gear's max_qps)")
}

// check refuses values no mode can run with.
func (f *benchFlags) check() error {
	for _, c := range []struct {
		name string
		v    int
	}{{"runners", f.runners}, {"messages", f.messages}, {"fetchers", f.fetchers}, {"rounds", f.rounds},
		{"pub-batch", f.pubBatch}, {"fetch-batch", f.fetchBatch}, {"hop-messages", f.hopMessages}} {
		if c.v < 1 {
			return fmt.Errorf("--%s must be at least 1, got %d", c.name, c.v)
		}
	}
	switch {
	case f.partitions < 0 || f.partitions > plan.MaxPartitions:
		return fmt.Errorf("--partitions must be in [0,%d], got %d", plan.MaxPartitions, f.partitions)
	case f.size < 8:
		return fmt.Errorf("--size must be at least 8 bytes (the message's index), got %d", f.size)
	case f.reqItems < 1 || f.reqItems > 1024:
		return errors.New("--request-items must be in [1,1024]")
	case f.knee && !f.checkPlan:
		return errors.New("--knee goes with --check-plan")
	case (f.compare || f.trace) && f.checkPlan:
		return errors.New("--compare and --trace do not go with --check-plan")
	case f.quick && !f.compare:
		return errors.New("--quick goes with --compare")
	case f.traceDuration <= 0 || f.traceCapacity < 0 || !(f.traceBase > 0) || !(f.traceBurst > 0) || f.traceBurstLen < 0 || f.traceBurstEvery <= 0 || f.traceRamp < 0 || f.traceRamp > 0.5:
		return errors.New("--trace-duration, --trace-base, --trace-burst and --trace-burst-every must be positive, --trace-capacity and --trace-burst-length not negative, --trace-ramp in [0, 0.5]")
	case f.kneeDuration <= 0 || f.kneeBudget <= 0 || f.kneeStart < 0 || f.kneeRetries < 0:
		return errors.New("--knee-duration and --knee-budget must be positive, --knee-start and --knee-retries not negative")
	case f.concurrency < 0 || f.warmup < 0 || f.duration < 0 || f.compute < 0 || f.capacity < 0 || f.halfLoad < 0 || f.idle < 0:
		return errors.New("--concurrency, --warmup, --duration, --compute, --capacity, --half-load and --idle cannot be negative")
	}
	return nil
}

// workerEnv is the services' settings of the provider flags and
// --partitions.
func (f *benchFlags) workerEnv() map[string]string {
	env := f.pf.workerEnv()
	if f.partitions > 0 {
		env["CASCADE_QUEUE_PARTITIONS"] = strconv.Itoa(f.partitions)
	}
	return env
}

// gearList is --gears as ids; nil for none or "all".
func (f *benchFlags) gearList() []string {
	if f.gears == "" || strings.TrimSpace(f.gears) == "all" {
		return nil
	}
	var ids []string
	for _, id := range strings.Split(f.gears, ",") {
		ids = append(ids, strings.TrimSpace(id))
	}
	return ids
}

// benchShared is what every mode's config takes alike.
type benchShared struct {
	live   bench.Live
	warmup time.Duration
}

func (f *benchFlags) kneeConfig(sh benchShared) bench.KneeConfig {
	cfg := bench.KneeConfig{
		Live:         sh.live,
		Gears:        f.gearList(),
		RequestItems: f.reqItems,
		Start:        f.kneeStart,
		Probing:      bench.Probing{Warmup: sh.warmup, Duration: f.kneeDuration, Budget: f.kneeBudget, Retries: f.kneeRetries},
		FreshProbes:  f.kneeFresh,
	}
	if cfg.Gears == nil && f.gear != "" {
		cfg.Gears = []string{f.gear}
	}
	return cfg
}

func (f *benchFlags) checkConfig(sh benchShared) (bench.CheckConfig, error) {
	fr, err := parseFloats(f.fractions)
	if err != nil {
		return bench.CheckConfig{}, fmt.Errorf("%w: --fractions: %w", ErrUsage, err)
	}
	if f.items < 1 || f.items > mnist.TestItems {
		return bench.CheckConfig{}, fmt.Errorf("%w: --items %d outside [1, %d]", ErrUsage, f.items, mnist.TestItems)
	}
	return bench.CheckConfig{
		Live:        sh.live,
		Gear:        f.gear,
		Concurrency: f.concurrency,
		Capacity:    f.capacity,
		Fractions:   fr,
		Warmup:      sh.warmup,
		Duration:    f.duration,
	}, nil
}

func (f *benchFlags) runConfig(sh benchShared, sess onnxrt.SessionOptions) (bench.Config, error) {
	bs, err := parseInts(f.hopBatches)
	if err != nil {
		return bench.Config{}, fmt.Errorf("%w: --hop-batches: %w", ErrUsage, err)
	}
	cfg := bench.Config{
		Live:            sh.live,
		Baseline:        f.baseline,
		Session:         sess,
		Broker:          bench.BrokerConfig{Messages: f.messages, Size: f.size, PubBatch: f.pubBatch, FetchBatch: f.fetchBatch, Rounds: f.rounds},
		Ceiling:         bench.CeilingConfig{Batches: bs, Rounds: f.rounds, Fetchers: f.fetchers, Messages: f.hopMessages},
		ComputeDuration: f.compute,
		Concurrency:     f.concurrency,
		RequestItems:    f.reqItems,
		Warmup:          sh.warmup,
		Duration:        f.duration,
		HalfLoad:        orNone(f.halfLoad),
		IdleRequests:    orNone(f.idle),
	}
	if f.gears != "" && strings.TrimSpace(f.gears) != "all" {
		cfg.Gears = f.gearList()
	} else if f.gears != "" {
		// Every gear of the plan.
		p, err := system.LoadPlan(f.planFile)
		if err != nil {
			return bench.Config{}, err
		}
		for _, g := range p.Gears {
			cfg.Gears = append(cfg.Gears, g.ID)
		}
	}
	if f.only != "" {
		cfg.SkipCeiling, cfg.SkipCompute, cfg.SkipPipeline = true, true, true
		for _, part := range strings.Split(f.only, ",") {
			switch strings.TrimSpace(part) {
			case "ceiling":
				cfg.SkipCeiling = false
			case "compute":
				cfg.SkipCompute = false
			case "pipeline":
				cfg.SkipPipeline = false
			case "hops":
				cfg.HopCeiling = true
			default:
				return bench.Config{}, fmt.Errorf("%w: --only: unknown part %q (ceiling, compute, pipeline, hops)", ErrUsage, part)
			}
		}
	}
	return cfg, nil
}

func runBench(ctx context.Context, env Env, args []string) error {
	var f benchFlags
	fs, err := parseCommandFlags(env, "bench", benchUsage, func(fs *flag.FlagSet) { f.register(fs, env) }, args)
	if err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	sh, err := f.shared(env, fs)
	if err != nil {
		return err
	}
	sessOpts, err := f.pf.sessionOptions(1)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	run, needsRuntime, err := f.mode(ctx, fs, sh, sessOpts)
	if err != nil {
		return err
	}
	lib := ""
	if needsRuntime {
		if lib, err = benchRuntime(env, sessOpts.Provider); err != nil {
			return err
		}
	}
	set, err := mnist.TestImages()
	if err != nil {
		return err
	}
	if f.cpuProfile != "" {
		stop, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	result, err := run(lib, set)
	if err != nil {
		return err
	}
	return writeBenchResult(env, result, f.jsonFile)
}

// benchRun runs one mode of bench with the ONNX Runtime library lib (empty
// when the mode needs none) on the items of set.
type benchRun func(lib string, set *dataset.Set) (benchResult, error)

// shared is what every mode takes alike, from the flags parsed by fs:
// --warmup 0 means no warm-up (-1), left out the mode's default (0).
func (f *benchFlags) shared(env Env, fs *flag.FlagSet) (benchShared, error) {
	sh := benchShared{
		live:   bench.Live{PlanFile: f.planFile, Runners: f.runners, WorkerEnv: f.workerEnv(), Progress: env.Stderr},
		warmup: f.warmup,
	}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "warmup" && sh.warmup == 0 {
			sh.warmup = -1
		}
	})
	var err error
	if sh.live.Logger, err = telemetry.NewLogger(env.Stderr, f.logLevel, "text"); err != nil {
		return benchShared{}, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return sh, nil
}

// mode returns the run of the mode the flags choose (--compare or --trace,
// --knee, --check-plan, else the end-to-end benchmark) and whether it needs
// ONNX Runtime.
func (f *benchFlags) mode(ctx context.Context, fs *flag.FlagSet, sh benchShared, sess onnxrt.SessionOptions) (run benchRun, needsRuntime bool, err error) {
	switch {
	case f.compare || f.trace:
		run, err := f.compareRun(ctx, fs, sh)
		return run, true, err
	case f.knee:
		cfg := f.kneeConfig(sh)
		return func(lib string, set *dataset.Set) (benchResult, error) {
			cfg.ONNXRuntimeLib, cfg.Items = lib, set
			return bench.CheckKnees(ctx, cfg)
		}, true, nil
	case f.checkPlan:
		cfg, err := f.checkConfig(sh)
		if err != nil {
			return nil, false, err
		}
		return func(lib string, set *dataset.Set) (benchResult, error) {
			cfg.ONNXRuntimeLib = lib
			var err error
			if cfg.Items, err = set.Slice(0, f.items); err != nil {
				return nil, err
			}
			return bench.CheckPlan(ctx, cfg)
		}, true, nil
	default:
		cfg, err := f.runConfig(sh, sess)
		if err != nil {
			return nil, false, err
		}
		// The ceilings alone need no ONNX Runtime.
		return func(lib string, set *dataset.Set) (benchResult, error) {
			cfg.ONNXRuntimeLib, cfg.Items = lib, set
			return bench.Run(ctx, cfg)
		}, !cfg.SkipCompute || !cfg.SkipPipeline, nil
	}
}

// benchRuntime finds the ONNX Runtime library for the provider.
func benchRuntime(env Env, provider string) (string, error) {
	getenv := env.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	lib, err := onnxrt.FindLibraryFor(provider, getenv)
	if err != nil {
		return "", fmt.Errorf("bench needs ONNX Runtime (scripts/install-onnxruntime.sh, or set CASCADE_ONNXRUNTIME_LIB): %w", err)
	}
	return lib, nil
}

// benchResult is what every mode of bench reports.
type benchResult interface{ WriteTable(io.Writer) error }

// startCPUProfile starts a CPU profile written to file; stop ends it.
func startCPUProfile(file string) (stop func(), err error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// writeBenchResult prints the result's table and, with jsonFile, writes
// its numbers as JSON.
func writeBenchResult(env Env, result benchResult, jsonFile string) error {
	if err := result.WriteTable(env.Stdout); err != nil {
		return err
	}
	if jsonFile == "" {
		return nil
	}
	b, err := json.MarshalIndent(result, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonFile, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write --json: %w", err)
	}
	fmt.Fprintf(env.Stderr, "bench: numbers written to %s\n", jsonFile)
	return nil
}

// orNone maps a flag's 0 ("none") to bench.Config's -1; bench.Config
// reads 0 as its default.
func orNone[T int | time.Duration](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || !(v > 0) {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, v)
	}
	return out, nil
}
