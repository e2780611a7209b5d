package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/bench"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/models/mnist"
)

const benchUsage = `bench [flags]
       cascadeserve bench --check-plan [--gear ID] [flags]
       cascadeserve bench --check-plan --knee [--gears g1,g6|all] [flags]

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
measured, for --gears (default: every gear of the plan), each pinned on a
fresh all-in-one system: the highest open-loop Poisson load (items/s) at
which the live p95 stays within the plan's SLO, nothing is lost and typed
errors stay ≤ 0.1%. Probes of --warmup (default 2s, discarded) and then
--knee-duration measured, on the same system, start at the gear's max_qps
(or --knee-start), step up ×1.5 while within the SLO (down while not), then
bisect between the last good and the first bad load to 5%; a probe with a
second of its load in flight is cut short; --knee-budget bounds each gear's
search. Verdict: measured knee within ±15% of max_qps. --request-items N
sends N-item requests (loads stay in items/s); inputs go as UINT8 when the
plan takes them.
The verdicts are a report: the command fails only if it cannot measure.`

func benchCommand() command {
	return command{
		name:    "bench",
		summary: "benchmark the pipeline end to end (--check-plan: predictions vs reality)",
		run:     runBench,
	}
}

func runBench(ctx context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "bench", benchUsage)
	checkPlan := fs.Bool("check-plan", false, "check the plan's predictions for one gear against the live pipeline instead")
	planFile := fs.String("plan", envOr(env, "CASCADE_PLAN", ""), "gear plan file (default: the built-in MNIST plan)")
	runners := fs.Int("runners", 2, "stage worker runners (and in-process sessions)")
	var pf providerFlags
	pf.register(fs, onnxrt.ProviderCPU)
	concurrency := fs.Int("concurrency", 0, "closed-loop requests in flight (default 2 × max batch × runners items, in requests of --request-items)")
	requestItems := fs.Int("request-items", 1, "items per request in the saturated and half-load runs: >1 sends batched inputs [N, item shape] (the producer's batch axis)")
	warmup := fs.Duration("warmup", 0, "warm-up before each measured load phase, discarded; 0: none (default 3s; 2s with --check-plan)")
	duration := fs.Duration("duration", 0, "measured phase of each load run (default 15s per gear; 10s per rate with --check-plan)")
	jsonFile := fs.String("json", "", "also write the numbers as JSON to this file")
	logLevel := fs.String("log-level", "warn", "log level of the services (debug, info, warn, error)")
	// bench only
	gears := fs.String("gears", "", `comma-separated gear ids to measure, or "all" (default: the most accurate and the cheapest; with --knee every gear)`)
	baseline := fs.String("baseline", "", `model run alone as the single-model baseline gear (default: the plan's most accurate model, the last of its ladder; "none": no baseline)`)
	compute := fs.Duration("compute", 2*time.Second, "length of each in-process ONNX Runtime measurement")
	halfLoad := fs.Duration("half-load", 10*time.Second, "measured phase of each gear's Poisson run at half its saturated requests/s; 0: none")
	idle := fs.Int("idle", 200, "requests sent one at a time to each gear after its load runs; 0: none")
	messages := fs.Int("messages", 100000, "messages per round of the broker ceiling")
	size := fs.Int("size", 784, "message size in bytes of the broker ceiling")
	pubBatch := fs.Int("pub-batch", 500, "asynchronous publishes per PubAck window of the broker ceiling (nats bench --batch)")
	fetchBatch := fs.Int("fetch-batch", 500, "fetch size and max ack pending of the broker ceiling (nats bench --batch)")
	rounds := fs.Int("rounds", 2, "rounds of the broker ceiling, and of each fetch size of the item-hop ceiling (the best counts)")
	hopMessages := fs.Int("hop-messages", 20000, "messages per batch size in the item-hop ceiling (--only hops)")
	batches := fs.String("hop-batches", "64,128", "comma-separated fetch sizes of the item-hop ceiling (--only hops)")
	fetchers := fs.Int("fetchers", 2, "fetching goroutines of the item-hop ceiling (--only hops)")
	only := fs.String("only", "", "comma-separated parts to run: ceiling, compute, pipeline, hops (default: all but hops)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (every part of the system runs in this process) to this file, for go tool pprof")
	// --check-plan only
	gear := fs.String("gear", "", "gear to check (default: the plan's most accurate gear)")
	items := fs.Int("items", mnist.TestItems, "MNIST test images served in the accuracy check (the first N)")
	capacity := fs.Float64("capacity", 0, "gear capacity in requests/s the fractions refer to (default: its max_qps in the plan)")
	fractionsFlag := fs.String("fractions", "0.5,0.8", "comma-separated fractions of the capacity for the latency check")
	knee := fs.Bool("knee", false, "with --check-plan: measure each gear's capacity (the highest Poisson load within the SLO) against its max_qps instead")
	kneeDuration := fs.Duration("knee-duration", 5*time.Second, "measured phase of each --knee probe, after --warmup")
	kneeBudget := fs.Duration("knee-budget", 90*time.Second, "time bound of each gear's --knee search")
	kneeStart := fs.Float64("knee-start", 0, "first load of each --knee search, items/s (default: the gear's max_qps)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", ErrUsage, fs.Args())
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"runners", *runners}, {"messages", *messages}, {"fetchers", *fetchers}, {"rounds", *rounds},
		{"pub-batch", *pubBatch}, {"fetch-batch", *fetchBatch}, {"hop-messages", *hopMessages}} {
		if f.v < 1 {
			return fmt.Errorf("%w: --%s must be at least 1, got %d", ErrUsage, f.name, f.v)
		}
	}
	if *size < 8 {
		return fmt.Errorf("%w: --size must be at least 8 bytes (the message's index), got %d", ErrUsage, *size)
	}
	if *requestItems < 1 || *requestItems > 1024 {
		return fmt.Errorf("%w: --request-items must be in [1,1024]", ErrUsage)
	}
	if *knee && !*checkPlan {
		return fmt.Errorf("%w: --knee goes with --check-plan", ErrUsage)
	}
	if *kneeDuration <= 0 || *kneeBudget <= 0 || *kneeStart < 0 {
		return fmt.Errorf("%w: --knee-duration and --knee-budget must be positive, --knee-start not negative", ErrUsage)
	}
	if *concurrency < 0 || *warmup < 0 || *duration < 0 || *compute < 0 || *capacity < 0 || *halfLoad < 0 || *idle < 0 {
		return fmt.Errorf("%w: --concurrency, --warmup, --duration, --compute, --capacity, --half-load and --idle cannot be negative", ErrUsage)
	}
	// --warmup 0 means no warm-up; left out, the mode's default.
	warm := *warmup
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "warmup" && warm == 0 {
			warm = -1
		}
	})
	logger, err := telemetry.NewLogger(env.Stderr, *logLevel, "text")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	var (
		runCfg   bench.Config
		checkCfg bench.CheckConfig
		kneeCfg  bench.KneeConfig
	)
	gearList := func() []string {
		if *gears == "" || strings.TrimSpace(*gears) == "all" {
			return nil
		}
		var ids []string
		for _, id := range strings.Split(*gears, ",") {
			ids = append(ids, strings.TrimSpace(id))
		}
		return ids
	}
	sessOpts, err := pf.sessionOptions(1)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	workerEnv := pf.workerEnv()
	if *knee {
		kneeCfg = bench.KneeConfig{
			PlanFile: *planFile, Gears: gearList(), Runners: *runners, RequestItems: *requestItems, Start: *kneeStart, WorkerEnv: workerEnv,
			Warmup: warm, Duration: *kneeDuration, Budget: *kneeBudget, Logger: logger, Progress: env.Stderr,
		}
		if kneeCfg.Gears == nil && *gear != "" {
			kneeCfg.Gears = []string{*gear}
		}
	} else if *checkPlan {
		fr, err := parseFloats(*fractionsFlag)
		if err != nil {
			return fmt.Errorf("%w: --fractions: %w", ErrUsage, err)
		}
		if *items < 1 || *items > mnist.TestItems {
			return fmt.Errorf("%w: --items %d outside [1, %d]", ErrUsage, *items, mnist.TestItems)
		}
		checkCfg = bench.CheckConfig{
			PlanFile: *planFile, Gear: *gear, Runners: *runners, Concurrency: *concurrency,
			Capacity: *capacity, Fractions: fr, Warmup: warm, Duration: *duration, WorkerEnv: workerEnv,
			Logger: logger, Progress: env.Stderr,
		}
	} else {
		bs, err := parseInts(*batches)
		if err != nil {
			return fmt.Errorf("%w: --hop-batches: %w", ErrUsage, err)
		}
		runCfg = bench.Config{
			PlanFile: *planFile, Runners: *runners, Baseline: *baseline, Session: sessOpts, WorkerEnv: workerEnv,
			Broker:          bench.BrokerConfig{Messages: *messages, Size: *size, PubBatch: *pubBatch, FetchBatch: *fetchBatch, Rounds: *rounds},
			Ceiling:         bench.CeilingConfig{Batches: bs, Rounds: *rounds, Fetchers: *fetchers, Messages: *hopMessages},
			ComputeDuration: *compute, Concurrency: *concurrency, RequestItems: *requestItems, Warmup: warm, Duration: *duration,
			HalfLoad: orNone(*halfLoad), IdleRequests: orNone(*idle),
			Logger: logger, Progress: env.Stderr,
		}
		if *gears != "" && strings.TrimSpace(*gears) != "all" {
			runCfg.Gears = gearList()
		} else if *gears != "" {
			// Every gear of the plan.
			p, err := system.LoadPlan(*planFile)
			if err != nil {
				return err
			}
			for _, g := range p.Gears {
				runCfg.Gears = append(runCfg.Gears, g.ID)
			}
		}
		if *only != "" {
			runCfg.SkipCeiling, runCfg.SkipCompute, runCfg.SkipPipeline = true, true, true
			for _, part := range strings.Split(*only, ",") {
				switch strings.TrimSpace(part) {
				case "ceiling":
					runCfg.SkipCeiling = false
				case "compute":
					runCfg.SkipCompute = false
				case "pipeline":
					runCfg.SkipPipeline = false
				case "hops":
					runCfg.HopCeiling = true
				default:
					return fmt.Errorf("%w: --only: unknown part %q (ceiling, compute, pipeline, hops)", ErrUsage, part)
				}
			}
		}
	}

	// The ceilings alone need no ONNX Runtime.
	lib := ""
	if *checkPlan || !runCfg.SkipCompute || !runCfg.SkipPipeline {
		getenv := env.Getenv
		if getenv == nil {
			getenv = func(string) string { return "" }
		}
		if lib, err = onnxrt.FindLibraryFor(sessOpts.Provider, getenv); err != nil {
			return fmt.Errorf("bench needs ONNX Runtime (scripts/install-onnxruntime.sh, or set CASCADE_ONNXRUNTIME_LIB): %w", err)
		}
	}
	set, err := mnist.TestImages()
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var result interface{ WriteTable(io.Writer) error }
	if *knee {
		kneeCfg.ONNXRuntimeLib, kneeCfg.Items = lib, set
		if result, err = bench.CheckKnees(ctx, kneeCfg); err != nil {
			return err
		}
	} else if *checkPlan {
		checkCfg.ONNXRuntimeLib = lib
		if checkCfg.Items, err = set.Slice(0, *items); err != nil {
			return err
		}
		if result, err = bench.CheckPlan(ctx, checkCfg); err != nil {
			return err
		}
	} else {
		runCfg.ONNXRuntimeLib, runCfg.Items = lib, set
		if result, err = bench.Run(ctx, runCfg); err != nil {
			return err
		}
	}
	if err := result.WriteTable(env.Stdout); err != nil {
		return err
	}
	if *jsonFile != "" {
		b, err := json.MarshalIndent(result, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonFile, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write --json: %w", err)
		}
		fmt.Fprintf(env.Stderr, "bench: numbers written to %s\n", *jsonFile)
	}
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
