package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"
)

const simulateUsage = `simulate --plan FILE [--scale K] [--duration 10s] [--qps LOADS] [flags]

Runs the plan's discrete-event simulator (the one the planner used) for every
gear at the load it was planned for, or at the given loads with the gear the
plan assigns to each. --scale K simulates K times the load on K times the
runners of every model, to check how a plan scales out. Prints per gear the
latency percentiles, throughput, utilisation and predicted accuracy. With the
plan's runners shared by every model (runner_pool "shared", the default), the
utilisation column gives each stage's part of the pool and, after "=", the
pool's; per model, each model's own runners. --json prints the same as JSON,
with every simulation's full result.

LOADS (unscaled requests/s) is a comma-separated list (100,500,900) or a
range MIN:MAX:N of N evenly spaced loads.`

// maxSimRequests bounds one simulation (about a second of CPU).
const maxSimRequests = 2_000_000

// simulateFlags is the parsed command line of cascadeserve simulate.
type simulateFlags struct {
	planFile string
	scale    float64
	duration time.Duration
	loads    string
	seed     uint64
	maxQueue int
	asJSON   bool
}

// register defines simulate's flags on fs, stored in f.
func (f *simulateFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.planFile, "plan", "", "plan file (required)")
	fs.Float64Var(&f.scale, "scale", 1, "multiply load and runners by this factor")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "simulated time per load (sets the number of requests)")
	fs.StringVar(&f.loads, "qps", "", "loads to simulate, unscaled: a list or MIN:MAX:N (default: every gear's max qps)")
	fs.Uint64Var(&f.seed, "seed", 1, "simulation seed")
	fs.IntVar(&f.maxQueue, "max-queue", 0, "stream bound per model (0: unbounded)")
	fs.BoolVar(&f.asJSON, "json", false, "print the results as JSON (every simulation's full result)")
}

// check reports every problem of the flags together and returns the loads
// of --qps (nil: every gear's max qps).
func (f *simulateFlags) check() ([]float64, error) {
	var errs []error
	if f.planFile == "" {
		errs = append(errs, errors.New("--plan is required"))
	}
	if !(f.scale > 0) {
		errs = append(errs, fmt.Errorf("--scale %v must be > 0", f.scale))
	}
	if f.duration <= 0 {
		errs = append(errs, fmt.Errorf("--duration %v must be > 0", f.duration))
	}
	qps, err := parseLoads(f.loads)
	if err != nil {
		errs = append(errs, err)
	}
	return qps, errors.Join(errs...)
}

func runSimulate(ctx context.Context, env Env, args []string) error {
	var f simulateFlags
	if _, err := parseCommandFlags(env, "simulate", simulateUsage, f.register, args); err != nil {
		return err
	}
	qps, err := f.check()
	if err != nil {
		return fmt.Errorf("%w: simulate: %w", ErrUsage, err)
	}
	p, err := plan.LoadFile(f.planFile)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	loads := simulateLoads(p, qps)
	report := simulateReport{
		Plan: f.planFile, SLOP95Ms: p.SLO.P95Ms, Capacity: p.Capacity, Scale: f.scale,
		DurationMs: float64(f.duration) / float64(time.Millisecond), Runs: []simulateRun{},
	}
	var tw *tabwriter.Writer
	if !f.asJSON {
		fmt.Fprintf(env.Stdout, "plan %s: SLO p95 %gms, %d runners × %g, %v per load\n", f.planFile, p.SLO.P95Ms, p.Capacity, f.scale, f.duration)
		tw = tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "gear\tqps\trunners\tp50 ms\tp95 ms\tp99 ms\tthroughput/s\tutilisation %\tmean batch\tdropped\taccuracy %\tSLO")
	}
	start := time.Now()
	for _, l := range loads {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("simulate: %w", err)
		}
		run, err := f.simulate(p, l)
		if err != nil {
			return err
		}
		if f.asJSON {
			report.Runs = append(report.Runs, run)
			continue
		}
		fmt.Fprintln(tw, simulateRow(p.Gears[l.gear], run.QPS, run.Result, run.MeetsSLO))
	}
	if f.asJSON {
		if err := writeJSON(env.Stdout, report); err != nil {
			return fmt.Errorf("simulate: %w", err)
		}
	} else {
		tw.Flush()
	}
	fmt.Fprintf(env.Stderr, "simulated %d loads in %v\n", len(loads), time.Since(start).Round(time.Millisecond))
	return nil
}

// simulateLoad is one simulation to run: a gear (its index in the plan)
// at an unscaled load.
type simulateLoad struct {
	gear int
	qps  float64
}

// simulateLoads is every gear of p at its max qps when qps is empty, else
// each load of qps with the gear p assigns to it.
func simulateLoads(p *plan.Plan, qps []float64) []simulateLoad {
	var loads []simulateLoad
	if len(qps) == 0 {
		for i, g := range p.Gears {
			loads = append(loads, simulateLoad{i, g.MaxQPS})
		}
		return loads
	}
	for _, q := range qps {
		loads = append(loads, simulateLoad{p.GearFor(q), q})
	}
	return loads
}

// simulate runs the simulation of l, load and runners scaled by --scale,
// with --duration's worth of requests (at least 1000, at most
// maxSimRequests).
func (f *simulateFlags) simulate(p *plan.Plan, l simulateLoad) (simulateRun, error) {
	load := l.qps * f.scale
	requests := int(math.Min(math.Max(load*f.duration.Seconds(), 1000), maxSimRequests))
	res, err := simulate.Gear(p, l.gear, load, simulate.GearOptions{Requests: requests, Seed: f.seed, RunnerScale: f.scale, MaxQueue: f.maxQueue})
	if err != nil {
		return simulateRun{}, fmt.Errorf("simulate gear %s at %v qps: %w", p.Gears[l.gear].ID, load, err)
	}
	g := p.Gears[l.gear]
	return simulateRun{
		Gear: g.ID, QPS: load, PoolUtilisation: res.MaxUtilisation(), Accuracy: g.Predicted.Accuracy,
		MeetsSLO: res.P95Ms <= p.SLO.P95Ms && res.Dropped == 0, Result: res,
	}, nil
}

// simulateRow is the text output's row of a simulation of gear g at load.
func simulateRow(g plan.Gear, load float64, res simulate.Result, meets bool) string {
	var runners, utils, batches []string
	for _, s := range res.Stages {
		runners = append(runners, strconv.Itoa(s.Runners))
		utils = append(utils, fmt.Sprintf("%.0f", 100*s.Utilisation))
		batches = append(batches, fmt.Sprintf("%.1f", s.MeanBatch))
	}
	util := strings.Join(utils, "/")
	if res.SharedRunners && len(res.Stages) > 1 {
		// Shared runners: each stage's part of the pool, and the pool's.
		util = fmt.Sprintf("%s=%.0f", util, 100*res.MaxUtilisation())
	}
	verdict := "ok"
	if !meets {
		verdict = "MISS"
	}
	return fmt.Sprintf("%s\t%.6g\t%s\t%.3g\t%.3g\t%.3g\t%.6g\t%s\t%s\t%d\t%.2f\t%s",
		g.ID, load, strings.Join(runners, "/"), res.P50Ms, res.P95Ms, res.P99Ms, res.ThroughputQPS,
		util, strings.Join(batches, "/"), res.Dropped, 100*g.Predicted.Accuracy, verdict)
}

// simulateReport is what 'simulate --json' prints.
type simulateReport struct {
	Plan       string  `json:"plan"`
	SLOP95Ms   float64 `json:"slo_p95_ms"`
	Capacity   int     `json:"capacity"`
	Scale      float64 `json:"scale"`
	DurationMs float64 `json:"duration_ms"`
	// Runs are the simulations, one per load, in the text output's order.
	Runs []simulateRun `json:"runs"`
}

// simulateRun is one row of the text output, with the simulator's whole
// result (per stage: runners, utilisation, mean batch, queueing, ...).
type simulateRun struct {
	Gear string `json:"gear"`
	// QPS is the simulated load, scaled.
	QPS float64 `json:"qps"`
	// PoolUtilisation is the busiest runner pool's utilisation (with shared
	// runners, the pool's; per model, the busiest model's).
	PoolUtilisation float64 `json:"pool_utilisation"`
	// Accuracy is the gear's predicted accuracy (0..1).
	Accuracy float64 `json:"accuracy"`
	// MeetsSLO: p95 within the plan's SLO and nothing dropped.
	MeetsSLO bool            `json:"meets_slo"`
	Result   simulate.Result `json:"result"`
}

// parseLoads parses "a,b,c" or "MIN:MAX:N".
func parseLoads(s string) ([]float64, error) {
	if s == "" {
		return nil, nil
	}
	if parts := strings.Split(s, ":"); len(parts) == 3 {
		lo, err1 := strconv.ParseFloat(parts[0], 64)
		hi, err2 := strconv.ParseFloat(parts[1], 64)
		n, err3 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil || err3 != nil || !(lo > 0) || hi < lo || n < 1 || n > 10000 {
			return nil, fmt.Errorf("--qps %q: want MIN:MAX:N with 0 < MIN <= MAX and 1 <= N <= 10000", s)
		}
		if n == 1 {
			return []float64{hi}, nil
		}
		out := make([]float64, n)
		for i := range out {
			out[i] = lo + float64(i)*(hi-lo)/float64(n-1)
		}
		return out, nil
	}
	var out []float64
	for _, part := range splitList(s) {
		v, err := strconv.ParseFloat(part, 64)
		if err != nil || !(v > 0) {
			return nil, fmt.Errorf("--qps: %q is not a load > 0", part)
		}
		out = append(out, v)
	}
	return out, nil
}
