package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
simulator charges every request on top of its model. Measure where they
will share the machine (cascadeserve up), at loads the system keeps up
with; leave it out where they run elsewhere.`

func profileCommand() command {
	return command{
		name:    "profile",
		summary: "measure model latency per batch size and the NATS hop cost",
		run:     runProfile,
	}
}

func runProfile(ctx context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "profile", profileUsage)
	out := fs.String("out", "", "profile file to write (required)")
	models := fs.String("models", "", "comma-separated name=file.onnx (default: the embedded MNIST ladder)")
	modelDir := fs.String("model-dir", "", "folder of <name>.onnx files (with --ladder, or every .onnx file)")
	ladder := fs.String("ladder", "", "comma-separated model names in --model-dir")
	threads := fs.Int("threads", 1, "ONNX Runtime intra-op threads per model")
	var pf providerFlags
	pf.register(fs, onnxrt.ProviderCPU)
	maxBatch := fs.Int("max-batch", 128, "largest batch size measured")
	reps := fs.Int("reps", 15, "timed runs per batch size (the median is kept)")
	warmup := fs.Int("warmup", 3, "untimed runs before them")
	hops := fs.Int("hop-samples", 300, "timed NATS hops (0: skip, hop overhead 0)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	systemQPSList := fs.String("system-qps", "", "also measure the all-in-one system's CPU per request at these loads, comma-separated; the highest is kept (embedded MNIST ladder only; empty: skip)")
	fitCPU := fs.Bool("system-fit", false, "with several --system-qps loads, fit CPU = idle + load × per-request overhead instead of keeping the highest per-request overhead")
	curveCPU := fs.Bool("system-curve", true, "with several --system-qps loads, also write each load's overhead CPU as the profile's cpu_load curve, which the planner interpolates: the live path's CPU per request falls as envelopes and batches fill")
	floorQPS := fs.Float64("floor-qps", 200, "with --system-qps, the low load at which the latency floor is measured (0: skip)")
	systemTime := fs.Duration("system-duration", 10*time.Second, "timed length of the --system-qps run (after a 3s warm-up)")
	systemRunners := fs.Int("runners", 2, "runners of the stage worker in the --system-qps run")
	systemBatch := fs.Int("system-batch", 32, "max batch of the --system-qps run's gear")
	systemDelay := fs.Duration("system-delay", 2*time.Millisecond, "max delay of the --system-qps run's gear")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	var errs []error
	systemQPS, err := parseSystemLoads(*systemQPSList)
	if err != nil {
		errs = append(errs, fmt.Errorf("--system-qps: %w", err))
	}
	if *floorQPS < 0 {
		errs = append(errs, errors.New("--floor-qps must be >= 0"))
	}
	if *out == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	if *models != "" && *modelDir != "" {
		errs = append(errs, errors.New("--models and --model-dir are exclusive"))
	}
	if *ladder != "" && *modelDir == "" {
		errs = append(errs, errors.New("--ladder needs --model-dir"))
	}
	if *threads < 1 || *maxBatch < 1 || *reps < 1 || *warmup < 0 || *hops < 0 {
		errs = append(errs, errors.New("--threads, --max-batch and --reps must be >= 1, --warmup and --hop-samples >= 0"))
	}
	if len(systemQPS) > 0 && (*models != "" || *modelDir != "") {
		errs = append(errs, errors.New("--system-qps needs the embedded MNIST ladder (no --models, --model-dir)"))
	}
	if *systemTime <= 0 || *systemRunners < 1 || *systemBatch < 1 || *systemDelay < 0 {
		errs = append(errs, errors.New("--system-duration, --runners and --system-batch must be > 0, --system-delay >= 0"))
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: profile: %w", ErrUsage, err)
	}
	sessOpts, err := pf.sessionOptions(*threads)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	ms, err := profileModels(*models, *modelDir, *ladder)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	lib, err := onnxrt.FindLibraryFor(sessOpts.Provider, env.Getenv)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	rt, err := onnxrt.NewRuntime(lib)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer rt.Close()

	cfg := profile.Config{
		Models:      ms,
		Threads:     *threads,
		Provider:    sessOpts.Provider,
		CUDA:        sessOpts.CUDA,
		MaxBatch:    *maxBatch,
		Repetitions: *reps,
		Warmup:      *warmup,
		HopSamples:  *hops,
	}
	if *hops == 0 {
		cfg.HopSamples = -1
	}
	if !*quiet {
		total := len(ms) * len(profile.BatchSizes(*maxBatch))
		if *hops > 0 {
			total++
		}
		bar := progressbar.NewOptions(total,
			progressbar.OptionSetWriter(env.Stderr),
			progressbar.OptionSetDescription("profile"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionClearOnFinish(),
		)
		cfg.Progress = func(done, _ int, what string) {
			bar.Describe(fmt.Sprintf("%-22s", what))
			bar.Set(done)
		}
		defer bar.Finish()
	}
	f, err := profile.Measure(ctx, rt, cfg)
	if err != nil {
		return err
	}
	var sysRes []systemResult
	var floor floorResult
	if len(systemQPS) > 0 {
		m := ms[0]
		sysRes, floor, err = measureRequestOverhead(ctx, systemMeasurement{
			Model: m, Profile: f.Models[m.Name], QPS: systemQPS, FloorQPS: *floorQPS,
			Warmup: 3 * time.Second, Duration: *systemTime,
			Runners: *systemRunners, Threads: *threads, Lib: lib, WorkerEnv: pf.workerEnv(),
			Batching:  plan.Batching{MaxBatch: *systemBatch, MaxDelayMs: float64(*systemDelay) / float64(time.Millisecond)},
			Overheads: f.Overheads,
			FitCPU:    *fitCPU,
			Curve:     *curveCPU,
		})
		if err != nil {
			return fmt.Errorf("profile: system: %w", err)
		}
		perRequest, idle := systemCPU(sysRes, *fitCPU)
		f.RequestOverheadMs, f.IdleCPUMsPerS = roundSig4(perRequest), roundSig4(idle)
		if *curveCPU {
			f.CPULoad = cpuCurve(sysRes)
		}
		f.LatencyFloorMs = roundSig4(floor.FloorMs)
		f.LatencyFloorP95Ms = roundSig4(floor.FloorP95Ms)
	}
	b, err := f.Marshal()
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if err := writeFileAtomic(*out, b); err != nil {
		return fmt.Errorf("profile: %w", err)
	}

	fmt.Fprintf(env.Stdout, "%s, %s, %d intra-op threads, provider %s", f.Host, f.Runtime, f.Threads, f.Provider)
	if len(f.ProviderOptions) > 0 {
		fmt.Fprintf(env.Stdout, " %v", f.ProviderOptions)
	}
	fmt.Fprintln(env.Stdout)
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	header := "model\t"
	for _, p := range f.Models[ms[0].Name].Points {
		header += fmt.Sprintf("b=%d\t", p.Batch)
	}
	fmt.Fprintln(tw, header+"ms/item@max\t")
	for _, m := range ms {
		p := f.Models[m.Name]
		line := m.Name + "\t"
		for _, pt := range p.Points {
			line += fmt.Sprintf("%.3g\t", pt.LatencyMs)
		}
		fmt.Fprintln(tw, line+fmt.Sprintf("%.3g\t", p.ItemCostMs(p.MaxBatch())))
	}
	tw.Flush()
	fmt.Fprintf(env.Stdout, "latency in ms per batch (median of %d); NATS hop %.3g ms, messaging %.3g ms/item + %.3g ms/batch\n",
		f.Repetitions, f.HopOverheadMs, f.ItemOverheadMs, f.BatchOverheadMs)
	for _, r := range sysRes {
		fmt.Fprintf(env.Stdout, "system at %g req/s (%s alone, %d runners): %.3g ms CPU per request, %.3g ms of it the model: overhead %.3g ms (%d answered, p50 %v, p95 %v)\n",
			r.QPS, ms[0].Name, *systemRunners, r.CPUMsPerRequest, r.ModelMsPerRequest, r.RequestOverheadMs, r.Answered, r.P50.Round(100*time.Microsecond), r.P95.Round(100*time.Microsecond))
	}
	if len(sysRes) > 0 {
		how := "the highest per request"
		if *fitCPU {
			how = "a line fitted over the loads"
		}
		fmt.Fprintf(env.Stdout, "request overhead %.3g ms per request + %.3g ms per second (%s)\n", f.RequestOverheadMs, f.IdleCPUMsPerS, how)
		if len(f.CPULoad) >= 2 {
			fmt.Fprintf(env.Stdout, "overhead CPU curve (the planner interpolates it): %v\n", f.CPULoad)
		}
	}
	if floor.QPS > 0 {
		fmt.Fprintf(env.Stdout, "latency floor at %g req/s: measured p50/p95 %.3g/%.3g ms, simulated %.3g/%.3g ms: floor %.3g/%.3g ms\n",
			floor.QPS, floor.MeasuredP50Ms, floor.MeasuredP95Ms, floor.SimulatedP50Ms, floor.SimulatedP95Ms, f.LatencyFloorMs, f.LatencyFloorP95Ms)
	}
	fmt.Fprintf(env.Stdout, "wrote %s\n", *out)
	return nil
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
