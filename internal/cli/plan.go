package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planplot"
)

const planUsage = `plan --profile FILE --slo 50ms --capacity N --qps MIN:MAX --out plan.json [flags]
       cascadeserve plan show FILE [--plot out.svg|out.png] [--json]

Plans the gears of a pipeline: replays every cascade of the model ladder on
the validation replay (exact accuracy and reach per stage), keeps the
accuracy-versus-cost Pareto front, and for every load bucket picks the gear
(cascade, thresholds, max batch, max delay, runner shares) whose simulated
p95 latency meets the SLO on the capacity:

  max-accuracy  the most accurate gear at each load (default)
  min-cost      the cheapest gear reaching --target-accuracy at each load

More load never gets a more expensive gear. Adjacent buckets with the same
gear are merged. A max-accuracy plan whose best gear is more than
--max-accuracy-gap below the ladder's best model alone is refused, with the
reason that model is out of reach (too slow for the SLO, too costly for the
capacity). The pipeline input (item shape, UINT8 scale) is the one the replay
recorded, so the plan serves its models what the replay measured them on. The replay defaults to the embedded MNIST validation replay
when --pipeline is mnist; the profile comes from 'cascadeserve profile'.
Thresholds are chosen on the replay; each gear's predicted accuracy is
then measured on --holdout-replay, items the choice never saw (for mnist
the embedded test replay), with its validation accuracy kept beside it.

'plan show' prints a plan's gears (--json: as JSON) and can plot its Pareto
front and its accuracy and cost against load (format from the file
extension: svg, png, pdf, ...).`

// planFlags is the parsed command line of cascadeserve plan.
type planFlags struct {
	replay, profile, out  string
	holdout               string
	pipeline, description string
	slo                   time.Duration
	capacity              int
	runnerPool            string
	qps                   string
	buckets               int
	step                  float64
	spacing               string
	mode                  string
	target                float64
	grid                  int
	gridSpacing           string
	maxStages             int
	calibrate             bool
	metric                string
	models, modelsDir     string
	headroom, cpuHeadroom float64
	latencySlack          float64
	stageBatchShare       float64
	costBatch             int
	batches, delays       string
	simRequests, maxQueue int
	seed                  uint64
	inputName, inputShape string
	uint8Scale            float64
	maxAccuracyGap        float64
}

// register defines plan's flags on fs, stored in f.
func (f *planFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.replay, "replay", "", "replay file (default for --pipeline mnist: the embedded validation replay)")
	fs.StringVar(&f.holdout, "holdout-replay", "", "replay of held-out items (not used to choose thresholds) on which each gear's predicted accuracy is measured; its validation-replay accuracy is kept beside it (default for --pipeline mnist: the embedded test replay; none: predict on the validation replay)")
	fs.StringVar(&f.profile, "profile", "", "profile file written by 'cascadeserve profile' (required)")
	fs.StringVar(&f.out, "out", "", "plan file to write (required)")
	fs.StringVar(&f.pipeline, "pipeline", "mnist", "pipeline name")
	fs.StringVar(&f.description, "description", "", "free text stored in the plan")
	fs.DurationVar(&f.slo, "slo", 50*time.Millisecond, "p95 end-to-end latency objective")
	fs.IntVar(&f.capacity, "capacity", 0, "runners (inference slots) to plan for (required)")
	fs.StringVar(&f.runnerPool, "runner-pool", plan.RunnerPoolShared, "how the runners serve the models: shared (every worker hosts every model, as 'cascadeserve up' runs) or per-model (workers deployed per model)")
	fs.StringVar(&f.qps, "qps", "", "load range MIN:MAX in requests/s (required)")
	fs.IntVar(&f.buckets, "buckets", 40, "load buckets from MIN to MAX")
	fs.Float64Var(&f.step, "step", 0, "bucket width in requests/s (replaces --buckets)")
	fs.StringVar(&f.spacing, "spacing", planner.SpacingLinear, "bucket spacing: linear or log")
	fs.StringVar(&f.mode, "mode", planner.ModeMaxAccuracy, "max-accuracy or min-cost")
	fs.Float64Var(&f.target, "target-accuracy", 0, "accuracy target of --mode min-cost, in (0,1]")
	fs.IntVar(&f.grid, "grid", 21, "thresholds tried per non-last stage")
	fs.StringVar(&f.gridSpacing, "grid-spacing", planner.GridQuantile, "threshold grid: quantile (of each model's confidence) or uniform")
	fs.IntVar(&f.maxStages, "max-stages", 0, "longest cascade (0: the whole ladder, capped by the capacity)")
	fs.BoolVar(&f.calibrate, "calibrate", false, "fit each model's temperature on the replay and plan on calibrated confidences")
	fs.StringVar(&f.metric, "confidence", plan.MetricMargin, "confidence metric: margin, max_prob or entropy")
	fs.StringVar(&f.models, "models", "", "comma-separated ladder, cheapest first (default: the replay's models)")
	fs.StringVar(&f.modelsDir, "models-dir", "", "folder of <model>.onnx files; plan model files are written relative to the plan's folder")
	fs.Float64Var(&f.headroom, "headroom", 0.8, "highest utilisation of a model's runners, and highest share of the cores the whole system's CPU demand may take, in a feasible gear")
	fs.Float64Var(&f.cpuHeadroom, "cpu-headroom", 0, "highest share of the cores the overhead CPU curve and the models' compute may keep busy together (0: --headroom); the curve is measured up to where the live p95 leaves the SLO, so it holds the queueing near saturation already")
	fs.Float64Var(&f.latencySlack, "latency-slack", 0.1, "share of a gear's load range its batching may give up for a lower p95 at its lowest load (a shorter max delay); the top of the range gets the longer delay as a gear of its own; negative: none")
	fs.IntVar(&f.costBatch, "cost-batch", 8, "reference batch size of the per-item cost")
	fs.Float64Var(&f.stageBatchShare, "stage-batch-share", 0.25, "cap each stage's max batch at the largest (halving from the gear's) whose profiled compute takes at most this share of the SLO, so a costly model's batch holds a runner for a fraction of the SLO, not more than all of it; 0: no cap")
	fs.StringVar(&f.batches, "batches", "", "max batch sizes to search (default 1,2,4,...,128)")
	fs.StringVar(&f.delays, "delays", "", "max delays to search, e.g. 0,1ms,5ms (default 0 and 2%,5%,10%,20% of the SLO)")
	fs.IntVar(&f.simRequests, "sim-requests", 3000, "requests per simulation")
	fs.IntVar(&f.maxQueue, "max-queue", 0, "stream bound per model in simulations (0: unbounded)")
	fs.Uint64Var(&f.seed, "seed", 1, "simulation seed")
	fs.StringVar(&f.inputName, "input-name", "input", "input tensor name")
	fs.StringVar(&f.inputShape, "input-shape", "", "item shape without the batch axis, e.g. 1,28,28 (default: the replay's, else mnist's)")
	fs.Float64Var(&f.maxAccuracyGap, "max-accuracy-gap", planner.DefaultMaxAccuracyGap, "refuse a max-accuracy plan whose best gear is more than this (a fraction; 0.05 = 5 points) below the ladder's best model alone; negative: no check")
	fs.Float64Var(&f.uint8Scale, "uint8-scale", -1, "what a UINT8 input byte stands for, byte × scale (default: the replay's, else 1/255 for mnist; 0 refuses UINT8)")
}

func runPlan(ctx context.Context, env Env, args []string) error {
	if len(args) > 0 && args[0] == "show" {
		return runPlanShow(env, args[1:])
	}
	var f planFlags
	if _, err := parseCommandFlags(env, "plan", planUsage, f.register, args); err != nil {
		return err
	}
	replay, err := f.loadReplay()
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	cfg, err := f.config(replay)
	if err != nil {
		return fmt.Errorf("%w: plan: %w", ErrUsage, err)
	}
	cfg.Replay = replay
	if cfg.Holdout, err = f.loadHoldout(); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	if cfg.Profile, err = plan.LoadProfileFile(f.profile); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	if err := f.resolveLadder(&cfg); err != nil {
		return fmt.Errorf("plan: %w", err)
	}

	fmt.Fprintf(env.Stderr, "plan: %d models, %d replay items, loads %s, SLO p95 %v on %d runners\n",
		len(cfg.Replay.Models), cfg.Replay.Len(), f.qps, f.slo, cfg.Capacity)
	res, err := planner.Make(ctx, cfg)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	b, err := res.Plan.Marshal()
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	if err := writeFileAtomic(f.out, b); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	printPlanned(env.Stdout, res)
	fmt.Fprintf(env.Stdout, "wrote %s\n", f.out)
	return nil
}

// printPlanned writes what the planner did and the gears it planned, and
// warns when no gear meets the SLO up to the top of the planned loads.
func printPlanned(w io.Writer, res *planner.Result) {
	fmt.Fprintf(w, "planned %d gears in %v: %d cascades replayed, Pareto front of %d, %d candidates walked, %d simulations\n",
		len(res.Plan.Gears), res.Elapsed.Round(time.Millisecond), res.Evaluated, len(res.Front), len(res.Candidates), res.Simulations)
	if len(res.Temperatures) > 0 {
		fmt.Fprintf(w, "temperatures: %s\n", formatTemperatures(res.Plan))
	}
	printGears(w, res.Plan)
	if maxOK, _ := res.Plan.Planner["max_feasible_qps"].(float64); maxOK < res.Buckets[len(res.Buckets)-1].QPS {
		fmt.Fprintf(w, "no gear meets the SLO above %.6g qps: the last gear serves that load, beyond what was planned\n", maxOK)
	}
}

// config turns the flags into a planner config (without replay and
// profile). The pipeline input comes from the replay when it records one
// (cascadeserve replay does): a plan must serve its models the inputs the
// replay measured them on.
func (f *planFlags) config(replay *plan.Replay) (planner.Config, error) {
	var errs []error
	if f.profile == "" {
		errs = append(errs, errors.New("--profile is required"))
	}
	if f.out == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	if f.capacity < 1 {
		errs = append(errs, errors.New("--capacity N (runners, >= 1) is required"))
	}
	if f.slo <= 0 {
		errs = append(errs, fmt.Errorf("--slo %v must be > 0", f.slo))
	}
	minQ, maxQ, err := parseQPSRange(f.qps)
	if err != nil {
		errs = append(errs, err)
	}
	if f.mode == planner.ModeMinCost && f.target == 0 {
		errs = append(errs, errors.New("--mode min-cost needs --target-accuracy"))
	}
	batches, err := parseIntList(f.batches)
	if err != nil {
		errs = append(errs, fmt.Errorf("--batches: %w", err))
	}
	delays, err := parseDelayList(f.delays)
	if err != nil {
		errs = append(errs, fmt.Errorf("--delays: %w", err))
	}
	input, inputErrs := f.input(replay)
	errs = append(errs, inputErrs...)
	if f.replay == "" && f.pipeline != "mnist" {
		errs = append(errs, errors.New("--replay is required for a pipeline other than mnist"))
	}
	if err := errors.Join(errs...); err != nil {
		return planner.Config{}, err
	}
	return planner.Config{
		Pipeline:        f.pipeline,
		Description:     f.description,
		Input:           input,
		SLOP95Ms:        float64(f.slo) / float64(time.Millisecond),
		Capacity:        f.capacity,
		RunnerPool:      f.runnerPool,
		Load:            planner.LoadRange{MinQPS: minQ, MaxQPS: maxQ, Buckets: f.buckets, StepQPS: f.step, Spacing: f.spacing},
		Mode:            f.mode,
		TargetAccuracy:  f.target,
		MaxAccuracyGap:  f.maxAccuracyGap,
		Metric:          f.metric,
		Calibrate:       f.calibrate,
		Search:          planner.SearchOptions{GridPoints: f.grid, GridSpacing: f.gridSpacing, MaxStages: f.maxStages},
		CostBatch:       f.costBatch,
		StageBatchShare: f.stageBatchShare,
		Headroom:        f.headroom,
		CPUHeadroom:     f.cpuHeadroom,
		LatencySlack:    f.latencySlack,
		BatchSizes:      batches,
		DelaysMs:        delays,
		SimRequests:     f.simRequests,
		Seed:            f.seed,
		MaxQueue:        f.maxQueue,
	}, nil
}

// input is the pipeline input the plan serves, with every problem of the
// flags that make it: the replay's item shape and UINT8 scale when it
// records them (cascadeserve replay does), since a plan must serve its
// models the inputs the replay measured them on; else --input-shape and
// --uint8-scale, with mnist's defaults for the mnist pipeline.
func (f *planFlags) input(replay *plan.Replay) (plan.Input, []error) {
	var errs []error
	recorded := replay != nil && (replay.ItemShape != nil || replay.UINT8Scale > 0)
	input := plan.Input{Name: f.inputName, Datatype: "FP32", UINT8Scale: max(f.uint8Scale, 0)}
	switch {
	case f.inputShape != "":
		shape, err := parseIntList(f.inputShape)
		if err != nil {
			errs = append(errs, fmt.Errorf("--input-shape: %w", err))
		}
		for _, d := range shape {
			input.Shape = append(input.Shape, int64(d))
		}
		if recorded && replay.ItemShape != nil && shapeSize(input.Shape) != shapeSize(replay.ItemShape) {
			errs = append(errs, fmt.Errorf("--input-shape %v has %d values, the replay's items (%v) %d",
				input.Shape, shapeSize(input.Shape), replay.ItemShape, shapeSize(replay.ItemShape)))
		}
	case recorded && replay.ItemShape != nil:
		input.Shape = slices.Clone(replay.ItemShape)
	case f.pipeline == "mnist":
		input.Shape = mnist.ItemShape()
	default:
		errs = append(errs, errors.New("--input-shape is required for a pipeline other than mnist (or a replay that records it)"))
	}
	switch {
	case recorded && f.uint8Scale < 0:
		input.UINT8Scale = replay.UINT8Scale
	case recorded && f.uint8Scale != replay.UINT8Scale:
		// The scale is what a UINT8 request's bytes stand for; serving
		// another one than the replay used feeds the models other values
		// than it measured them on.
		errs = append(errs, fmt.Errorf("--uint8-scale %.6g differs from the replay's %.6g: the models were measured on inputs made with the replay's scale "+
			"(leave --uint8-scale out, or replay again with --uint8-scale %.6g)", f.uint8Scale, replay.UINT8Scale, f.uint8Scale))
	case f.uint8Scale < 0 && f.pipeline == "mnist":
		input.UINT8Scale = 1.0 / 255
	}
	return input, errs
}

func (f *planFlags) loadReplay() (*plan.Replay, error) {
	if f.replay != "" {
		return plan.ReadReplayFile(f.replay)
	}
	if f.pipeline != "mnist" {
		return nil, nil // config reports the missing --replay
	}
	r, err := mnist.ValidationReplay()
	if err != nil {
		return nil, fmt.Errorf("embedded MNIST validation replay: %w", err)
	}
	return r, nil
}

// loadHoldout reads --holdout-replay: nil for none, the embedded MNIST
// test replay by default for the mnist pipeline.
func (f *planFlags) loadHoldout() (*plan.Replay, error) {
	switch {
	case f.holdout == "none" || (f.holdout == "" && f.pipeline != "mnist"):
		return nil, nil
	case f.holdout != "":
		r, err := plan.ReadReplayFile(f.holdout)
		if err != nil {
			return nil, fmt.Errorf("--holdout-replay: %w", err)
		}
		return r, nil
	}
	r, err := mnist.TestReplay()
	if err != nil {
		return nil, fmt.Errorf("embedded MNIST test replay: %w", err)
	}
	return r, nil
}

// resolveLadder sets the ladder and each model's file relative to the plan.
func (f *planFlags) resolveLadder(cfg *planner.Config) error {
	names := cfg.Replay.Models
	if f.models != "" {
		names = splitList(f.models)
	}
	for _, name := range names {
		file := name + ".onnx"
		if f.modelsDir != "" {
			outDir, err := filepath.Abs(filepath.Dir(f.out))
			if err != nil {
				return err
			}
			dir, err := filepath.Abs(f.modelsDir)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(outDir, filepath.Join(dir, file))
			if err != nil {
				return fmt.Errorf("model %q: %w", name, err)
			}
			file = filepath.ToSlash(rel)
		}
		cfg.Ladder = append(cfg.Ladder, planner.LadderModel{Name: name, File: file})
	}
	return nil
}

func runPlanShow(env Env, args []string) error {
	fs := newFlagSet(env, "plan show", "plan show FILE [--plot out.svg|out.png] [--json]")
	plotFile := fs.String("plot", "", "write a plot of the Pareto front and of accuracy and cost against load (svg, png, pdf, ...)")
	asJSON := fs.Bool("json", false, "print the plan's header and gear table as JSON")
	// Accept the file before or after the flags.
	var file string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		file, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if file == "" && fs.NArg() > 0 {
		file = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%w: plan show: unexpected arguments %q", ErrUsage, fs.Args())
	}
	if file == "" {
		return fmt.Errorf("%w: plan show: a plan file is required", ErrUsage)
	}
	p, err := plan.LoadFile(file)
	if err != nil {
		return fmt.Errorf("plan show: %w", err)
	}
	if *plotFile != "" {
		if err := planplot.WriteFile(p, *plotFile); err != nil {
			return fmt.Errorf("plan show: %w", err)
		}
	}
	if *asJSON {
		if err := writeJSON(env.Stdout, planShowJSON(file, p)); err != nil {
			return fmt.Errorf("plan show: %w", err)
		}
		if *plotFile != "" {
			fmt.Fprintf(env.Stderr, "wrote %s\n", *plotFile)
		}
		return nil
	}
	pool := "shared by every model"
	if !p.SharedRunners() {
		pool = "per model"
	}
	fmt.Fprintf(env.Stdout, "plan %s: pipeline %s, SLO p95 %gms, %d runners (%s), confidence %s, hop %.3gms\n",
		file, p.Pipeline, p.SLO.P95Ms, p.Capacity, pool, p.Confidence, p.HopOverheadMs)
	if p.ItemOverheadMs > 0 || p.BatchOverheadMs > 0 || p.RequestOverheadMs > 0 {
		fmt.Fprintf(env.Stdout, "overheads: %.3gms per item, %.3gms per batch (runner time), %.3gms CPU per request on the runners' cores\n",
			p.ItemOverheadMs, p.BatchOverheadMs, p.RequestOverheadMs)
	}
	if p.IdleCPUMsPerS > 0 {
		fmt.Fprintf(env.Stdout, "idle CPU: %.3gms per second on the runners' cores whatever the load\n", p.IdleCPUMsPerS)
	}
	if p.LatencyFloorMs > 0 {
		fmt.Fprintf(env.Stdout, "latency floor: %.3gms median, %.3gms p95 per request (live path outside the model)\n",
			p.LatencyFloorMs, p.LatencyFloorP95Ms)
	}
	if floors := formatFloorCurve(p.Overheads, p.Capacity); floors != "" {
		fmt.Fprintf(env.Stdout, "latency floor by share of the cores busy (replaces the one above): %s\n", floors)
	}
	if p.Description != "" {
		fmt.Fprintln(env.Stdout, p.Description)
	}
	if mode, ok := p.Planner["mode"].(string); ok {
		fmt.Fprintf(env.Stdout, "planner: %s, grid %v (%v), %v cascades, %v simulations, %vms\n",
			mode, p.Planner["grid_points"], p.Planner["grid_spacing"], p.Planner["candidates_evaluated"], p.Planner["simulations"], p.Planner["elapsed_ms"])
	}
	if t := formatTemperatures(p); t != "" {
		fmt.Fprintf(env.Stdout, "temperatures: %s\n", t)
	}
	printGears(env.Stdout, p)
	if *plotFile != "" {
		fmt.Fprintf(env.Stdout, "wrote %s\n", *plotFile)
	}
	return nil
}

// planShow is what 'plan show --json' prints: the header and the gear
// table of the text output, as numbers.
type planShow struct {
	File        string  `json:"file"`
	Pipeline    string  `json:"pipeline"`
	Description string  `json:"description,omitempty"`
	SLOP95Ms    float64 `json:"slo_p95_ms"`
	Capacity    int     `json:"capacity"`
	// RunnerPool is "shared" or "per-model" (never empty).
	RunnerPool string `json:"runner_pool"`
	Confidence string `json:"confidence"`
	plan.Overheads
	Planner map[string]any `json:"planner,omitempty"`
	// Temperatures of the calibrated models (those not 0 or 1).
	Temperatures map[string]float64 `json:"temperatures,omitempty"`
	Gears        []planShowGear     `json:"gears"`
}

// stageBatches writes a gear's max batch, or each stage's where one has a
// cap of its own (plan.Stage.MaxBatch), e.g. "64/8".
func stageBatches(g plan.Gear) string {
	batches := make([]string, len(g.Cascade))
	capped := false
	for j, s := range g.Cascade {
		batches[j] = strconv.Itoa(g.MaxBatch(s.Model))
		capped = capped || s.MaxBatch > 0
	}
	if !capped {
		return strconv.Itoa(g.Batching.MaxBatch)
	}
	return strings.Join(batches, "/")
}

// planShowGear is one row of the gear table.
type planShowGear struct {
	ID string `json:"id"`
	// MinQPS and MaxQPS are the load range the gear serves; the last gear
	// also serves any load above MaxQPS (OpenEnded).
	MinQPS     float64      `json:"min_qps"`
	MaxQPS     float64      `json:"max_qps"`
	OpenEnded  bool         `json:"open_ended,omitempty"`
	Cascade    []plan.Stage `json:"cascade"`
	MaxBatch   int          `json:"max_batch"`
	MaxDelayMs float64      `json:"max_delay_ms"`
	// Runners is the number of runners of each stage's model.
	Runners   []int           `json:"runners"`
	Predicted plan.Prediction `json:"predicted"`
}

func planShowJSON(file string, p *plan.Plan) planShow {
	out := planShow{
		File: file, Pipeline: p.Pipeline, Description: p.Description, SLOP95Ms: p.SLO.P95Ms, Capacity: p.Capacity,
		RunnerPool: plan.RunnerPoolShared, Confidence: p.Confidence, Overheads: p.Overheads, Planner: p.Planner,
		Gears: []planShowGear{},
	}
	if !p.SharedRunners() {
		out.RunnerPool = plan.RunnerPoolPerModel
	}
	for _, m := range p.Models {
		if m.Temperature != 0 && m.Temperature != 1 {
			if out.Temperatures == nil {
				out.Temperatures = map[string]float64{}
			}
			out.Temperatures[m.Name] = m.Temperature
		}
	}
	lo := 0.0
	for i, g := range p.Gears {
		row := planShowGear{
			ID: g.ID, MinQPS: lo, MaxQPS: g.MaxQPS, OpenEnded: i == len(p.Gears)-1, Cascade: g.Cascade,
			MaxBatch: g.Batching.MaxBatch, MaxDelayMs: g.Batching.MaxDelayMs, Runners: []int{}, Predicted: g.Predicted,
		}
		for _, s := range g.Cascade {
			row.Runners = append(row.Runners, g.RunnerCount(s.Model, p.Capacity))
		}
		out.Gears = append(out.Gears, row)
		lo = g.MaxQPS
	}
	return out
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printGears writes the table of a plan's gears.
func printGears(w io.Writer, p *plan.Plan) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	holdout := p.HoldoutAccuracy()
	if holdout {
		fmt.Fprintln(tw, "gear\tload qps\tcascade (model@threshold)\tbatch\tdelay ms\trunners\taccuracy % (holdout / validation)\tp95 ms\tcost ms/item")
	} else {
		fmt.Fprintln(tw, "gear\tload qps\tcascade (model@threshold)\tbatch\tdelay ms\trunners\taccuracy %\tp95 ms\tcost ms/item")
	}
	lo := 0.0
	for i, g := range p.Gears {
		hi := fmt.Sprintf("%.6g", g.MaxQPS)
		if i == len(p.Gears)-1 {
			hi += "+"
		}
		var runners []string
		for _, s := range g.Cascade {
			runners = append(runners, strconv.Itoa(g.RunnerCount(s.Model, p.Capacity)))
		}
		acc := fmt.Sprintf("%.2f", 100*g.Predicted.Accuracy)
		if holdout {
			acc += fmt.Sprintf(" / %.2f", 100*g.Predicted.ValidationAccuracy)
		}
		fmt.Fprintf(tw, "%s\t%.6g-%s\t%s\t%s\t%g\t%s\t%s\t%.3g\t%.4g\n",
			g.ID, lo, hi, plan.CascadeString(g.Cascade), stageBatches(g), g.Batching.MaxDelayMs,
			strings.Join(runners, "/"), acc, g.Predicted.P95Ms, g.Predicted.CostMsPerItem)
		lo = g.MaxQPS
	}
	tw.Flush()
}

func formatTemperatures(p *plan.Plan) string {
	var parts []string
	for _, m := range p.Models {
		if m.Temperature != 0 && m.Temperature != 1 {
			parts = append(parts, fmt.Sprintf("%s=%g", m.Name, m.Temperature))
		}
	}
	return strings.Join(parts, " ")
}

// parseQPSRange parses "MIN:MAX" (or a single value).
func parseQPSRange(s string) (lo, hi float64, err error) {
	if s == "" {
		return 0, 0, errors.New("--qps MIN:MAX is required")
	}
	a, b, found := strings.Cut(s, ":")
	if !found {
		b = a
	}
	lo, err1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
	hi, err2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
	if err1 != nil || err2 != nil || !(lo > 0) || hi < lo || math.IsInf(hi, 0) {
		return 0, 0, fmt.Errorf("--qps %q: want MIN:MAX with 0 < MIN <= MAX", s)
	}
	return lo, hi, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func parseIntList(s string) ([]int, error) {
	var out []int
	for _, part := range splitList(s) {
		v, err := strconv.Atoi(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", part)
		}
		out = append(out, v)
	}
	return out, nil
}

// parseDelayList parses durations ("2ms", "500us"); a bare number is ms.
func parseDelayList(s string) ([]float64, error) {
	var out []float64
	for _, part := range splitList(s) {
		if v, err := strconv.ParseFloat(part, 64); err == nil {
			out = append(out, v)
			continue
		}
		d, err := time.ParseDuration(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration", part)
		}
		out = append(out, float64(d)/float64(time.Millisecond))
	}
	return out, nil
}

// writeFileAtomic writes b to path through a temporary file in its folder.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// shapeSize is the number of values of an item of the shape.
func shapeSize(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// formatFloorCurve lists the latency floor of each cpu_load point that
// carries one, at its share of the cores busy: "busy 0.31: 0.3/1.2ms, ...";
// empty when fewer than two carry one (the simulator then charges the
// constant floor).
func formatFloorCurve(o plan.Overheads, cores int) string {
	var parts []string
	for _, p := range o.CPULoad {
		if p.FloorP95Ms > 0 && cores > 0 {
			parts = append(parts, fmt.Sprintf("busy %.2f: %.3g/%.3gms", p.CPUMsPerS/1000/float64(cores), p.FloorMs, p.FloorP95Ms))
		}
	}
	if len(parts) < 2 {
		return ""
	}
	return strings.Join(parts, ", ")
}
