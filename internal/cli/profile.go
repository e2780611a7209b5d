package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/profile"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

const profileUsage = `profile --out profile.json [--models a=a.onnx,b=b.onnx | --model-dir DIR --ladder a,b] [flags]

Measures every model's latency per batch size (1, 2, 4, ... --max-batch)
through the ONNX Runtime runner the stage workers use, with --threads
intra-op threads (the median of --reps timed runs), and what NATS JetStream
costs on an embedded nats-server: the latency of one hop (publish with
PubAck, fetch, ack) and the worker time per item when batches of 64 are
moved as workers move them (split into a part per item and a part per
batch, from batches of 1 and of 64). Writes the profile file
'cascadeserve plan --profile' reads. Without models it profiles the embedded
MNIST ladder. Run it on the machine (and with the threads) the workers will
use.

--system-qps Q1,Q2,... (embedded MNIST ladder only) also runs the all-in-one
system in this process (embedded nats-server, controller, ingress, one stage
worker with --runners runners, and a producer) serving the cheapest model
alone at each load, and records the CPU time per request that the model's
compute does not explain as request_overhead_ms: the share of the cores that
ingress, nats-server and producers take from runners on the same machine.
It keeps the highest of the loads' values, or with --system-fit fits
CPU = idle_cpu_ms_per_s + load × request_overhead_ms. Then it runs at
--floor-qps and records what the live latency exceeds the simulated latency
of the same run by (median and p95) as latency_floor_ms and
latency_floor_p95_ms: client, ingress and JetStream round trips that the
simulator charges every request on top of its model. With --system-curve
(the default) each load's point of the cpu_load curve carries the floor
measured there too (floor_ms, floor_p95_ms): every hop waits for a core, so
the floor grows as the cores fill, and the simulator reads it at the share
of the cores its configuration keeps busy. The loads run one after the
other on one system, as a deployed system keeps running: nats-server keeps
every message id of a stream's deduplication window in memory
(CASCADE_DEDUPE_WINDOW, 2m), and a system that has run at a high load for
longer than the window spends more per request than a young one
(--system-fresh: a fresh system for every run). A load the system falls
behind at ends the list. Measure where they
will share the machine (cascadeserve up), at loads the system keeps up
with; leave it out where they run elsewhere.`

// profileFlags are profile's flags.
type profileFlags struct {
	out, models, modelDir, ladder   string
	threads, maxBatch, reps, warmup int
	hops                            int
	quiet                           bool
	pf                              providerFlags
	systemQPS                       string
	fitCPU, curveCPU                bool
	floorQPS                        float64
	systemTime, systemDelay         time.Duration
	systemRounds                    int
	systemFresh                     bool
	systemMaxP95                    time.Duration
	systemRunners, systemBatch      int
}

func (f *profileFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.out, "out", "", "profile file to write (required)")
	fs.StringVar(&f.models, "models", "", "comma-separated name=file.onnx (default: the embedded MNIST ladder)")
	fs.StringVar(&f.modelDir, "model-dir", "", "folder of <name>.onnx files (with --ladder, or every .onnx file)")
	fs.StringVar(&f.ladder, "ladder", "", "comma-separated model names in --model-dir")
	fs.IntVar(&f.threads, "threads", 1, "ONNX Runtime intra-op threads per model")
	f.pf.register(fs, onnxrt.ProviderCPU)
	fs.IntVar(&f.maxBatch, "max-batch", 128, "largest batch size measured")
	fs.IntVar(&f.reps, "reps", 15, "timed runs per batch size (the median is kept)")
	fs.IntVar(&f.warmup, "warmup", 3, "untimed runs before them")
	fs.IntVar(&f.hops, "hop-samples", 300, "timed NATS hops (0: skip, hop overhead 0)")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress bar")
	fs.StringVar(&f.systemQPS, "system-qps", "", "also measure the all-in-one system's CPU per request at these loads, comma-separated; the highest is kept (embedded MNIST ladder only; empty: skip)")
	fs.BoolVar(&f.curveCPU, "system-curve", true, "with several --system-qps loads, also write each load's overhead CPU as the profile's cpu_load curve, which the planner interpolates: the live path's CPU per request falls as envelopes and batches fill")
	fs.DurationVar(&f.systemMaxP95, "system-max-p95", 50*time.Millisecond, "with --system-curve, leave out of the cpu_load curve the loads whose live p95 exceeds this: past saturation the cores cap the CPU time, and the curve would flatten where the system no longer keeps up (0: keep every load)")
	fs.BoolVar(&f.fitCPU, "system-fit", false, "with several --system-qps loads, fit CPU = idle + load × per-request overhead instead of keeping the highest per-request overhead")
	fs.Float64Var(&f.floorQPS, "floor-qps", 200, "with --system-qps, the low load at which the latency floor is measured (0: skip)")
	fs.DurationVar(&f.systemTime, "system-duration", 10*time.Second, "timed length of the --system-qps run (after a 3s warm-up)")
	fs.IntVar(&f.systemRounds, "system-rounds", 2, "rounds over the --system-qps loads; each load keeps the round with the lower live p95, so a slow spell of the machine spoils one round, not the curve")
	fs.BoolVar(&f.systemFresh, "system-fresh", false, "measure every --system-qps run on a fresh all-in-one system instead of all on one system that keeps running, as a deployed one does (its streams keep the earlier runs' message ids for CASCADE_DEDUPE_WINDOW, which costs a long-running system at high loads)")
	fs.IntVar(&f.systemRunners, "runners", 2, "runners of the stage worker in the --system-qps run")
	fs.IntVar(&f.systemBatch, "system-batch", 32, "max batch of the --system-qps run's gear")
	fs.DurationVar(&f.systemDelay, "system-delay", 2*time.Millisecond, "max delay of the --system-qps run's gear")
}

// check reports every problem of the flags and returns the --system-qps
// loads.
func (f *profileFlags) check() ([]float64, error) {
	var errs []error
	systemQPS, err := parseSystemLoads(f.systemQPS)
	if err != nil {
		errs = append(errs, fmt.Errorf("--system-qps: %w", err))
	}
	if f.floorQPS < 0 {
		errs = append(errs, errors.New("--floor-qps must be >= 0"))
	}
	if f.out == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	if f.models != "" && f.modelDir != "" {
		errs = append(errs, errors.New("--models and --model-dir are exclusive"))
	}
	if f.ladder != "" && f.modelDir == "" {
		errs = append(errs, errors.New("--ladder needs --model-dir"))
	}
	if f.threads < 1 || f.maxBatch < 1 || f.reps < 1 || f.warmup < 0 || f.hops < 0 {
		errs = append(errs, errors.New("--threads, --max-batch and --reps must be >= 1, --warmup and --hop-samples >= 0"))
	}
	if len(systemQPS) > 0 && (f.models != "" || f.modelDir != "") {
		errs = append(errs, errors.New("--system-qps needs the embedded MNIST ladder (no --models, --model-dir)"))
	}
	if f.systemMaxP95 < 0 {
		errs = append(errs, errors.New("--system-max-p95 cannot be negative"))
	}
	if f.systemTime <= 0 || f.systemRunners < 1 || f.systemBatch < 1 || f.systemDelay < 0 || f.systemRounds < 1 {
		errs = append(errs, errors.New("--system-duration, --runners, --system-batch and --system-rounds must be > 0, --system-delay >= 0"))
	}
	return systemQPS, errors.Join(errs...)
}

func runProfile(ctx context.Context, env Env, args []string) error {
	var f profileFlags
	fs := newFlagSet(env, "profile", profileUsage)
	f.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	systemQPS, err := f.check()
	if err != nil {
		return fmt.Errorf("%w: profile: %w", ErrUsage, err)
	}
	sessOpts, err := f.pf.sessionOptions(f.threads)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	ms, err := profileModels(f.models, f.modelDir, f.ladder)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	rt, lib, err := openRuntime(env, sessOpts.Provider)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer rt.Close()

	cfg := profile.Config{
		Models:      ms,
		Threads:     f.threads,
		Provider:    sessOpts.Provider,
		CUDA:        sessOpts.CUDA,
		MaxBatch:    f.maxBatch,
		Repetitions: f.reps,
		Warmup:      f.warmup,
		HopSamples:  f.hops,
	}
	if f.hops == 0 {
		cfg.HopSamples = -1
	}
	if !f.quiet {
		total := len(ms) * len(profile.BatchSizes(f.maxBatch))
		if f.hops > 0 {
			total++
		}
		bar := newProgressBar(env, total, "profile")
		cfg.Progress = func(done, _ int, what string) {
			bar.Describe(fmt.Sprintf("%-22s", what))
			bar.Set(done)
		}
		defer bar.Finish()
	}
	pf, err := profile.Measure(ctx, rt, cfg)
	if err != nil {
		return err
	}
	var sys systemRuns
	if len(systemQPS) > 0 {
		if sys, err = f.measureSystem(ctx, pf, ms[0], systemQPS, lib); err != nil {
			return fmt.Errorf("profile: system: %w", err)
		}
	}
	b, err := pf.Marshal()
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if err := writeFileAtomic(f.out, b); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	f.print(env.Stdout, pf, ms, sys)
	return nil
}

// measureSystem runs the all-in-one system serving model m alone and
// records the request overhead and the latency floor in pf.
func (f *profileFlags) measureSystem(ctx context.Context, pf *plan.ProfileFile, m profile.Model, loads []float64, lib string) (systemRuns, error) {
	runs, err := measureRequestOverhead(ctx, systemMeasurement{
		Model: m, Profile: pf.Models[m.Name], QPS: loads, FloorQPS: f.floorQPS,
		Warmup: 3 * time.Second, Duration: f.systemTime, Rounds: f.systemRounds,
		Runners: f.systemRunners, Threads: f.threads, Lib: lib, WorkerEnv: f.pf.workerEnv(),
		Batching:  plan.Batching{MaxBatch: f.systemBatch, MaxDelayMs: float64(f.systemDelay) / float64(time.Millisecond)},
		Overheads: pf.Overheads,
		FitCPU:    f.fitCPU,
		Fresh:     f.systemFresh,
		Curve:     f.curveCPU,
		MaxP95:    f.systemMaxP95,
	})
	if err != nil {
		return systemRuns{}, err
	}
	perRequest, idle := systemCPU(runs.Loads, f.fitCPU)
	pf.RequestOverheadMs, pf.IdleCPUMsPerS = roundSig4(perRequest), roundSig4(idle)
	if f.curveCPU {
		pf.CPULoad = cpuCurve(runs.Loads, f.systemMaxP95)
	}
	pf.LatencyFloorMs = roundSig4(runs.Floor.FloorMs)
	pf.LatencyFloorP95Ms = roundSig4(runs.Floor.FloorP95Ms)
	return runs, nil
}

// print writes what was measured: a table of the models' latencies, the
// messaging costs and what --system-qps found.
func (f *profileFlags) print(w io.Writer, pf *plan.ProfileFile, ms []profile.Model, sys systemRuns) {
	fmt.Fprintf(w, "%s, %s, %d intra-op threads, provider %s", pf.Host, pf.Runtime, pf.Threads, pf.Provider)
	if len(pf.ProviderOptions) > 0 {
		fmt.Fprintf(w, " %v", pf.ProviderOptions)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	header := "model\t"
	for _, p := range pf.Models[ms[0].Name].Points {
		header += fmt.Sprintf("b=%d\t", p.Batch)
	}
	fmt.Fprintln(tw, header+"ms/item@max\t")
	for _, m := range ms {
		p := pf.Models[m.Name]
		line := m.Name + "\t"
		for _, pt := range p.Points {
			line += fmt.Sprintf("%.3g\t", pt.LatencyMs)
		}
		fmt.Fprintln(tw, line+fmt.Sprintf("%.3g\t", p.ItemCostMs(p.MaxBatch())))
	}
	tw.Flush()
	fmt.Fprintf(w, "latency in ms per batch (the lowest of three rounds' medians, %d runs in all); NATS hop %.3g ms, messaging %.3g ms/item + %.3g ms/batch\n",
		pf.Repetitions, pf.HopOverheadMs, pf.ItemOverheadMs, pf.BatchOverheadMs)
	for _, r := range sys.Loads {
		fmt.Fprintf(w, "system at %g req/s (%s alone, %d runners): %.3g ms CPU per request, %.3g ms of it the model: overhead %.3g ms (%d answered, p50 %v, p95 %v)\n",
			r.QPS, ms[0].Name, f.systemRunners, r.CPUMsPerRequest, r.ModelMsPerRequest, r.RequestOverheadMs, r.Answered, r.P50.Round(100*time.Microsecond), r.P95.Round(100*time.Microsecond))
		if f.curveCPU && pastSaturation(r, f.systemMaxP95) {
			fmt.Fprintf(w, "  left out of the overhead CPU curve: p95 %v > --system-max-p95 %v, past saturation\n", r.P95.Round(100*time.Microsecond), f.systemMaxP95)
		} else if f.curveCPU {
			fmt.Fprintf(w, "  latency floor there (live less simulated, p50/p95): %.3g/%.3g ms\n", r.FloorMs, r.FloorP95Ms)
		}
	}
	if sys.Behind != nil {
		fmt.Fprintf(w, "saturated: %v; that load and the higher ones stay out\n", sys.Behind)
	}
	if len(sys.Loads) > 0 {
		how := "the highest per request"
		if f.fitCPU {
			how = "a line fitted over the loads"
		}
		fmt.Fprintf(w, "request overhead %.3g ms per request + %.3g ms per second (%s)\n", pf.RequestOverheadMs, pf.IdleCPUMsPerS, how)
		if len(pf.CPULoad) >= 2 {
			fmt.Fprintf(w, "overhead CPU curve (the planner interpolates it): %v\n", pf.CPULoad)
		}
	}
	if floor := sys.Floor; floor.QPS > 0 {
		fmt.Fprintf(w, "latency floor at %g req/s: measured p50/p95 %.3g/%.3g ms, simulated %.3g/%.3g ms: floor %.3g/%.3g ms\n",
			floor.QPS, floor.MeasuredP50Ms, floor.MeasuredP95Ms, floor.SimulatedP50Ms, floor.SimulatedP95Ms, pf.LatencyFloorMs, pf.LatencyFloorP95Ms)
	}
	fmt.Fprintf(w, "wrote %s\n", f.out)
}

// openRuntime loads the ONNX Runtime library for the execution provider,
// found as onnxrt.FindLibraryFor finds it, and returns it with its path.
func openRuntime(env Env, provider string) (*onnxrt.Runtime, string, error) {
	lib, err := onnxrt.FindLibraryFor(provider, env.Getenv)
	if err != nil {
		return nil, "", err
	}
	rt, err := onnxrt.NewRuntime(lib)
	if err != nil {
		return nil, "", err
	}
	return rt, lib, nil
}

// newProgressBar is the progress bar of a long command on env.Stderr,
// cleared when it finishes; extra options add to the common ones.
func newProgressBar(env Env, total int, desc string, extra ...progressbar.Option) *progressbar.ProgressBar {
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(env.Stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
	}
	opts = append(opts, extra...)
	opts = append(opts,
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionClearOnFinish(),
	)
	return progressbar.NewOptions(total, opts...)
}

// parseSystemLoads parses a comma-separated list of loads (req/s, each > 0).
func parseSystemLoads(s string) ([]float64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var loads []float64
	for _, f := range strings.Split(s, ",") {
		q, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || !(q > 0) || math.IsInf(q, 0) {
			return nil, fmt.Errorf("load %q must be a number > 0", f)
		}
		loads = append(loads, q)
	}
	return loads, nil
}

// profileModels resolves the models to profile, in ladder order.
func profileModels(models, dir, ladder string) ([]profile.Model, error) {
	var out []profile.Model
	read := func(name, file string) error {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("model %q: %w", name, err)
		}
		out = append(out, profile.Model{Name: name, ONNX: b})
		return nil
	}
	switch {
	case models != "":
		for _, spec := range splitList(models) {
			name, file, ok := strings.Cut(spec, "=")
			if !ok || name == "" || file == "" {
				return nil, fmt.Errorf("%w: --models entry %q is not name=file.onnx", ErrUsage, spec)
			}
			if err := read(name, file); err != nil {
				return nil, err
			}
		}
	case dir != "":
		names := splitList(ladder)
		if len(names) == 0 {
			files, err := filepath.Glob(filepath.Join(dir, "*.onnx"))
			if err != nil {
				return nil, err
			}
			for _, f := range files {
				names = append(names, strings.TrimSuffix(filepath.Base(f), ".onnx"))
			}
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("no .onnx files in %s", dir)
		}
		for _, name := range names {
			if err := read(name, filepath.Join(dir, name+".onnx")); err != nil {
				return nil, err
			}
		}
	default:
		for _, name := range mnist.Ladder() {
			b, err := mnist.Model(name)
			if err != nil {
				return nil, fmt.Errorf("embedded MNIST ladder: %w", err)
			}
			out = append(out, profile.Model{Name: name, ONNX: b})
		}
	}
	return out, nil
}

// roundSig4 rounds x to 4 significant digits, as the profile's other
// numbers are.
func roundSig4(x float64) float64 {
	v, err := strconv.ParseFloat(strconv.FormatFloat(x, 'g', 4, 64), 64)
	if err != nil {
		return x
	}
	return v
}
