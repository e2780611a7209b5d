package bench

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"
)

// CheckConfig configures CheckPlan. Zero values take the defaults in the
// comments.
type CheckConfig struct {
	// Live is the plan checked and the system serving it.
	Live
	// Gear is the id of the gear checked; empty: the most accurate (first)
	// gear.
	Gear string
	// Live.Items are served for the accuracy check, each exactly once,
	// Concurrency in flight (default 2 × the gear's max batch × Runners).
	Concurrency int
	// Capacity is the gear's capacity in requests/s (default: its MaxQPS in
	// the plan); the latency check runs at Fractions of it (default 0.5
	// and 0.8), each with Poisson arrivals for Warmup (default 2s,
	// discarded) and then Duration (default 10s).
	Capacity  float64
	Fractions []float64
	Warmup    time.Duration
	Duration  time.Duration
	// AccuracyTolerance is the largest acceptable |measured − predicted|
	// accuracy (default 0.003, i.e. 0.3 points); P95Tolerance the largest
	// acceptable |measured − predicted| / predicted p95 (default 0.25).
	AccuracyTolerance float64
	P95Tolerance      float64
}

func (c *CheckConfig) defaults() error {
	if len(c.Fractions) == 0 {
		c.Fractions = []float64{0.5, 0.8}
	}
	c.Warmup = warmupOr(c.Warmup, 2*time.Second)
	orDefault(&c.Duration, 10*time.Second)
	orDefault(&c.AccuracyTolerance, 0.003)
	orDefault(&c.P95Tolerance, 0.25)
	return c.Live.defaults()
}

// CheckPlan serves a gear of the plan on a fresh all-in-one system with
// the gear pinned and compares the plan's predictions with what the
// pipeline does:
//
//   - accuracy: every item (by default the 10,000 MNIST test images) served
//     once; the measured accuracy against the gear's predicted accuracy,
//     which the planner made on the validation replay. For the MNIST
//     pipeline the report also gives the cascade's exact accuracy on the
//     validation and test replays, which separates what the pipeline does
//     (live vs test replay) from how well validation predicts the test set
//     (test replay vs validation replay).
//   - latency: Poisson arrivals at fractions of the gear's capacity; the
//     measured p95 against the simulator's p95 for the gear at that rate
//     (simulate.PredictP95: the plan's profiles, runner shares, hop overhead
//     and the gear's predicted reach).
//
// Misses are reported, not returned as errors.
func CheckPlan(ctx context.Context, cfg CheckConfig) (*PlanCheck, error) {
	p, err := configured(cfg.defaults, &cfg.Live)
	if err != nil {
		return nil, err
	}
	gi := 0
	if cfg.Gear != "" {
		idx, err := pickGears(p, []string{cfg.Gear})
		if err != nil {
			return nil, err
		}
		gi = idx[0]
	}
	g := p.Gears[gi]
	capacity := cfg.Capacity
	if capacity <= 0 {
		capacity = g.MaxQPS
	}
	out := &PlanCheck{
		Environment: cfg.environmentOf(p),
		Gear:        g.ID,
		Cascade:     plan.CascadeString(g.Cascade),
		Capacity:    capacity,
	}
	out.Accuracy = AccuracyCheck{
		Predicted: g.Predicted.Accuracy, Tolerance: cfg.AccuracyTolerance, Items: cfg.Items.Len(),
	}
	if p.Pipeline == "mnist" {
		out.Accuracy.ValidationReplay = replayAccuracy(p, g, mnist.ValidationReplay)
		out.Accuracy.TestReplay = replayAccuracy(p, g, mnist.TestReplay)
	}
	// The predictions are made before anything runs.
	if out.Latency, err = predictLatency(p, gi, capacity, cfg); err != nil {
		return nil, err
	}
	_, err = withSystem(ctx, cfg.TempDir, cfg.systemConfig(g.ID), func(sys *system.System) (struct{}, error) {
		if err := out.checkAccuracy(ctx, cfg, sys, p, g); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, out.checkLatency(ctx, cfg, sys, p, g)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// predictLatency is the simulator's prediction for gear gi of p at each of
// cfg.Fractions of capacity (requests/s), with the planner's default
// simulation settings (simulate.PredictP95): the latency checks before
// their runs.
func predictLatency(p *plan.Plan, gi int, capacity float64, cfg CheckConfig) ([]LatencyCheck, error) {
	var out []LatencyCheck
	for _, f := range cfg.Fractions {
		qps := f * capacity
		sim, err := simulate.Gear(p, gi, qps, simulate.GearOptions{})
		if err != nil {
			return nil, fmt.Errorf("predict p95 of gear %s at %.0f/s: %w", p.Gears[gi].ID, qps, err)
		}
		by := map[string]Percentiles{}
		for _, st := range sim.Stages {
			by[st.Model] = Percentiles{Count: st.Answered, P50Ms: st.AnsweredP50Ms, P95Ms: st.AnsweredP95Ms}
		}
		out = append(out, LatencyCheck{Fraction: f, QPS: qps, PredictedP95Ms: sim.P95Ms,
			PredictedP50Ms: sim.P50Ms, PredictedBy: by, Tolerance: cfg.P95Tolerance})
	}
	return out, nil
}

// checkAccuracy serves every item once through gear g on sys,
// Concurrency in flight (default 2 × the gear's max batch × Runners), and
// judges the accuracy served against the prediction.
func (c *PlanCheck) checkAccuracy(ctx context.Context, cfg CheckConfig, sys *system.System, p *plan.Plan, g plan.Gear) error {
	conc := cfg.Concurrency
	if conc <= 0 {
		conc = 2 * maxBatch(g) * cfg.Runners
	}
	cfg.progressf("accuracy: %d items through gear %s (%s), %d in flight...", cfg.Items.Len(), g.ID, c.Cascade, conc)
	run, err := Load(ctx, sys.Conn, LoadConfig{
		Pipeline: p.Pipeline, Items: cfg.Items, Concurrency: conc, MaxRequests: cfg.Items.Len(), Stages: StageIndex(g),
	})
	if err != nil {
		return fmt.Errorf("accuracy run: %w", err)
	}
	a := &c.Accuracy
	a.Run = run
	a.Measured = run.Accuracy
	a.Diff = a.Measured - a.Predicted
	a.Pass = run.Answered == cfg.Items.Len() && math.Abs(a.Diff) <= a.Tolerance
	return nil
}

// checkLatency runs gear g on sys at each latency check's rate, Poisson
// arrivals, and judges the measured p95 against the predicted one.
func (c *PlanCheck) checkLatency(ctx context.Context, cfg CheckConfig, sys *system.System, p *plan.Plan, g plan.Gear) error {
	for i := range c.Latency {
		l := &c.Latency[i]
		cfg.progressf("latency: Poisson %.0f/s (%.0f%% of %.0f/s), %v warm-up + %v...", l.QPS, 100*l.Fraction, c.Capacity, cfg.Warmup, cfg.Duration)
		run, err := Load(ctx, sys.Conn, LoadConfig{
			Pipeline: p.Pipeline, Items: cfg.Items, QPS: l.QPS, Warmup: cfg.Warmup, Duration: cfg.Duration,
			Seed: uint64(i + 1), Stages: StageIndex(g),
		})
		if err != nil {
			return fmt.Errorf("latency run at %.0f/s: %w", l.QPS, err)
		}
		l.Run = run
		l.MeasuredP95Ms = run.P95Ms
		if l.PredictedP95Ms > 0 {
			l.RelErr = (l.MeasuredP95Ms - l.PredictedP95Ms) / l.PredictedP95Ms
		}
		l.Pass = run.ErrorCount() == 0 && run.Lost == 0 && l.PredictedP95Ms > 0 && math.Abs(l.RelErr) <= l.Tolerance
	}
	return nil
}

// replayAccuracy is the exact accuracy of the gear's cascade on a replay,
// or nil when the replay is not available.
func replayAccuracy(p *plan.Plan, g plan.Gear, load func() (*plan.Replay, error)) *float64 {
	r, err := load()
	if err != nil {
		return nil
	}
	temps := map[string]float64{}
	for _, m := range p.Models {
		temps[m.Name] = m.Temperature
	}
	ev, err := planner.NewEvaluator(r, planner.EvaluatorConfig{Ladder: p.Ladder, Metric: p.Confidence, Temperatures: temps})
	if err != nil {
		return nil
	}
	e, err := ev.Evaluate(g.Cascade)
	if err != nil {
		return nil
	}
	return &e.Accuracy
}
