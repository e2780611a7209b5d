package planner

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// buildPlan merges buckets into gears and writes the plan.
func (pl *walker) buildPlan(res *Result, ev *Evaluator, edges []float64) *plan.Plan {
	cfg := pl.cfg
	p := &plan.Plan{
		Version:     plan.FormatVersion,
		Pipeline:    cfg.Pipeline,
		Description: cfg.Description,
		SLO:         plan.SLO{P95Ms: cfg.SLOP95Ms},
		Capacity:    cfg.Capacity,
		RunnerPool:  cfg.RunnerPool,
		Confidence:  cfg.Metric,
		Input:       cfg.Input,
		Overheads:   cfg.Profile.Overheads,
		Hysteresis:  cfg.Hysteresis,
	}
	p.Models, p.Ladder = cfg.models(res.Temperatures, ev)
	gears, maxQPS := pl.mergeBuckets(res.Buckets)
	for i, g := range gears {
		p.Gears = append(p.Gears, pl.gear(i, g, maxQPS[i]))
	}
	p.Planner = pl.metadata(res, edges)
	return p
}

// models lists the ladder's models with their profiles, temperatures and
// accuracy alone, and their names.
func (cfg *Config) models(temps map[string]float64, ev *Evaluator) ([]plan.Model, []string) {
	var models []plan.Model
	var ladder []string
	for _, m := range cfg.Ladder {
		prof := cfg.Profile.Models[m.Name]
		if prof.Threads == 0 {
			prof.Threads = cfg.Profile.Threads
		}
		if prof.Provider == "" {
			prof.Provider = cfg.Profile.Provider
		}
		models = append(models, plan.Model{
			Name:        m.Name,
			File:        m.File,
			Temperature: temps[m.Name],
			Profile:     prof,
			Accuracy:    ev.ModelAccuracy(m.Name),
		})
		ladder = append(ladder, m.Name)
	}
	return models, ladder
}

// mergeBuckets rebuilds the gear choices of the feasible buckets and merges
// equal neighbours, returning each gear with the highest load it serves.
func (pl *walker) mergeBuckets(buckets []BucketChoice) (gears []*gearChoice, maxQPS []float64) {
	for _, b := range buckets {
		if !b.Feasible() {
			continue
		}
		g := pl.checked[checkKey{b.Candidate, b.QPS}]
		if n := len(gears); n > 0 && gears[n-1].sameGear(g) {
			gears[n-1] = &gearChoice{cand: g.cand, batching: g.batching, runners: g.runners, sim: g.sim, p95Max: max(gears[n-1].p95Max, g.p95Max)}
			maxQPS[n-1] = b.QPS
			continue
		}
		gears = append(gears, g)
		maxQPS = append(maxQPS, b.QPS)
	}
	return gears, maxQPS
}

// gear writes the i-th gear of the plan.
func (pl *walker) gear(i int, g *gearChoice, maxQPS float64) plan.Gear {
	c := pl.cands[g.cand]
	stages := slices.Clone(c.Stages)
	stages[len(stages)-1].Threshold = 0
	for j := range stages {
		if b := pl.cfg.stageBatch(stages[j].Model, g.batching.MaxBatch); b < g.batching.MaxBatch {
			stages[j].MaxBatch = b
		}
	}
	return plan.Gear{
		ID:       fmt.Sprintf("g%d", i+1),
		MaxQPS:   maxQPS,
		Cascade:  stages,
		Batching: g.batching,
		Runners:  pl.shares(g),
		Predicted: plan.Prediction{
			Accuracy:      c.Accuracy,
			P95Ms:         roundSig(g.p95Max, 6),
			CostMsPerItem: c.CostMsPerItem,
			Reach:         slices.Clone(c.Reach),
		},
	}
}

// metadata records how the plan was made (Plan.Planner).
func (pl *walker) metadata(res *Result, edges []float64) map[string]any {
	cfg := pl.cfg
	lastFeasible := 0.0
	for _, b := range res.Buckets {
		if b.Feasible() {
			lastFeasible = b.QPS
		}
	}
	meta := map[string]any{
		"mode":                 cfg.Mode,
		"grid_points":          cfg.Search.withDefaults().GridPoints,
		"grid_spacing":         cfg.Search.withDefaults().GridSpacing,
		"max_stages":           cfg.Search.MaxStages,
		"cost_batch":           cfg.CostBatch,
		"stage_batch_share":    cfg.StageBatchShare,
		"headroom":             cfg.Headroom,
		"cpu_headroom":         cmp.Or(cfg.CPUHeadroom, cfg.Headroom),
		"latency_slack":        cfg.LatencySlack,
		"batch_sizes":          cfg.BatchSizes,
		"delays_ms":            cfg.DelaysMs,
		"sim_requests":         cfg.SimRequests,
		"sim_seconds":          cfg.SimSeconds,
		"seed":                 cfg.Seed,
		"load_min_qps":         edges[0],
		"load_max_qps":         edges[len(edges)-1],
		"load_buckets":         len(edges),
		"candidates_evaluated": res.Evaluated,
		"pareto_size":          len(res.Front),
		"candidates_walked":    len(res.Candidates),
		"simulations":          pl.sims,
		"calibrated":           cfg.Calibrate,
		"max_feasible_qps":     lastFeasible,
		"pareto":               frontSummary(res.Front, 200),
	}
	if cfg.Mode == ModeMinCost {
		meta["target_accuracy"] = cfg.TargetAccuracy
		met := 0.0
		for _, b := range res.Buckets {
			if b.Feasible() && pl.cands[b.Candidate].Accuracy >= cfg.TargetAccuracy {
				met = b.QPS
			}
		}
		meta["target_met_up_to_qps"] = met
	}
	return meta
}

// FrontPoint is one Pareto point as the plan file's planner metadata keeps
// it (for `plan show`).
type FrontPoint struct {
	Accuracy      float64 `json:"accuracy"`
	CostMsPerItem float64 `json:"cost_ms_per_item"`
	Cascade       string  `json:"cascade"`
}

// frontSummary keeps at most n points of the front, evenly spread.
func frontSummary(front []Candidate, n int) []FrontPoint {
	var out []FrontPoint
	step := max(1, (len(front)+n-1)/n)
	for i := 0; i < len(front); i += step {
		c := front[i]
		out = append(out, FrontPoint{Accuracy: c.Accuracy, CostMsPerItem: roundSig(c.CostMsPerItem, 6), Cascade: c.String()})
	}
	if last := len(front) - 1; last >= 0 && (len(front)-1)%step != 0 {
		c := front[last]
		out = append(out, FrontPoint{Accuracy: c.Accuracy, CostMsPerItem: roundSig(c.CostMsPerItem, 6), Cascade: c.String()})
	}
	return out
}

// predictHoldout replaces each gear's predicted accuracy by its accuracy on
// the holdout replay, keeping the planning replay's as
// ValidationAccuracy, and records the holdout's size in the metadata.
// Nothing changes without a holdout.
func (cfg *Config) predictHoldout(p *plan.Plan, ladder []string, temps map[string]float64) error {
	if cfg.Holdout == nil {
		return nil
	}
	ev, err := NewEvaluator(cfg.Holdout, EvaluatorConfig{Ladder: ladder, Metric: cfg.Metric, Temperatures: temps})
	if err != nil {
		return fmt.Errorf("holdout replay: %w", err)
	}
	for i := range p.Gears {
		g := &p.Gears[i]
		e, err := ev.Evaluate(g.Cascade)
		if err != nil {
			return fmt.Errorf("holdout replay, gear %s: %w", g.ID, err)
		}
		g.Predicted.ValidationAccuracy = g.Predicted.Accuracy
		g.Predicted.Accuracy = e.Accuracy
	}
	p.Planner["accuracy_from"] = plan.AccuracyFromHoldout
	p.Planner["holdout_items"] = cfg.Holdout.Len()
	p.Planner["validation_items"] = cfg.Replay.Len()
	return nil
}
