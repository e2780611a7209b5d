package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
)

// SwitchingPlan plans model switching (MS+, INFaaS): a plan whose gears
// are single models, switched by load. It runs the planner as p was made —
// its mode, SLO, capacity, runner pool, confidence metric, input, load
// range, headroom, batch sizes, delays, simulation settings and hysteresis,
// from p's fields and its planner metadata — with cascades restricted to
// one stage (`cascadeserve plan --max-stages 1`). prof is the profile p was
// made from (nil: the one p carries, profileOf); replay its validation
// replay.
func SwitchingPlan(ctx context.Context, p *plan.Plan, prof *plan.ProfileFile, replay *plan.Replay) (*plan.Plan, error) {
	cfg, err := plannerConfigOf(p)
	if err != nil {
		return nil, err
	}
	if prof == nil {
		prof = profileOf(p)
	}
	cfg.Profile, cfg.Replay = prof, replay
	if p.HoldoutAccuracy() && p.Pipeline == "mnist" {
		// Predict the one-model gears' accuracy on the same held-out items
		// as p's.
		if cfg.Holdout, err = mnist.TestReplay(); err != nil {
			return nil, err
		}
	}
	cfg.Search.MaxStages = 1
	cfg.Description = "Model switching (one-model gears switched by load), planned by bench --compare with the settings of the plan " +
		p.Pipeline + " was made with, cascades restricted to one stage."
	res, err := planner.Make(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("model-switching plan: %w", err)
	}
	return res.Plan, nil
}

// plannerConfigOf rebuilds the planner's configuration of p from its fields
// and the metadata the planner recorded in it (Plan.Planner).
func plannerConfigOf(p *plan.Plan) (planner.Config, error) {
	meta := p.Planner
	if len(meta) == 0 {
		return planner.Config{}, fmt.Errorf("plan %s has no planner metadata: it was not made by cascadeserve plan", p.Pipeline)
	}
	cfg := planner.Config{
		Pipeline:   p.Pipeline,
		Input:      p.Input,
		SLOP95Ms:   p.SLO.P95Ms,
		Capacity:   p.Capacity,
		RunnerPool: p.RunnerPool,
		Metric:     p.Confidence,
		Hysteresis: p.Hysteresis,
	}
	for _, m := range p.Ladder {
		cfg.Ladder = append(cfg.Ladder, planner.LadderModel{Name: m})
	}
	cfg.Mode, _ = meta["mode"].(string)
	cfg.Calibrate, _ = meta["calibrated"].(bool)
	cfg.Search.GridSpacing, _ = meta["grid_spacing"].(string)
	cfg.Search.GridPoints = int(metaFloat(meta, "grid_points"))
	cfg.CostBatch = int(metaFloat(meta, "cost_batch"))
	cfg.Headroom = metaFloat(meta, "headroom")
	cfg.CPUHeadroom = metaFloat(meta, "cpu_headroom")
	cfg.SimRequests = int(metaFloat(meta, "sim_requests"))
	cfg.SimSeconds = metaFloat(meta, "sim_seconds")
	cfg.Seed = uint64(metaFloat(meta, "seed"))
	cfg.TargetAccuracy = metaFloat(meta, "target_accuracy")
	for _, v := range metaList(meta, "batch_sizes") {
		cfg.BatchSizes = append(cfg.BatchSizes, int(v))
	}
	cfg.DelaysMs = metaList(meta, "delays_ms")
	lo, hi, n := metaFloat(meta, "load_min_qps"), metaFloat(meta, "load_max_qps"), int(metaFloat(meta, "load_buckets"))
	if !(lo > 0) || !(hi >= lo) || n < 1 {
		return planner.Config{}, fmt.Errorf("plan %s: planner metadata has no load range", p.Pipeline)
	}
	cfg.Load = loadRangeOf(lo, hi, n)
	return cfg, nil
}

// loadRangeOf is the load range with n bucket edges from lo to hi: the
// round step (`plan --step`) that gives n edges when there is one, else n
// evenly spaced edges.
func loadRangeOf(lo, hi float64, n int) planner.LoadRange {
	if n > 1 {
		raw := (hi - lo) / float64(n-1)
		step, _ := strconv.ParseFloat(strconv.FormatFloat(raw, 'g', 2, 64), 64)
		if step > 0 && int(math.Ceil((hi-lo)/step-1e-9))+1 == n {
			return planner.LoadRange{MinQPS: lo, MaxQPS: hi, StepQPS: step}
		}
	}
	return planner.LoadRange{MinQPS: lo, MaxQPS: hi, Buckets: n}
}

func metaFloat(meta map[string]any, key string) float64 {
	switch v := meta[key].(type) {
	case float64:
		return v
	case int:
		return float64(v)
	}
	return 0
}

func metaList(meta map[string]any, key string) []float64 {
	var out []float64
	switch v := meta[key].(type) {
	case []any:
		for _, x := range v {
			if f, ok := x.(float64); ok {
				out = append(out, f)
			}
		}
	case []float64:
		out = slices.Clone(v)
	case []int:
		for _, x := range v {
			out = append(out, float64(x))
		}
	}
	return out
}

// profileOf is the profile p was planned from, as p carries it: every
// model's latency profile and the overheads (`cascadeserve plan` copies
// both from the profile file).
func profileOf(p *plan.Plan) *plan.ProfileFile {
	f := &plan.ProfileFile{Version: plan.ProfileFormatVersion, Overheads: p.Overheads, Models: map[string]plan.Profile{}}
	for _, m := range p.Models {
		f.Models[m.Name] = m.Profile
		if f.Threads == 0 {
			f.Threads = m.Profile.Threads
		}
		if f.Provider == "" {
			f.Provider = m.Profile.Provider
		}
	}
	return f
}

// validationReplay is the replay pipeline's plans are made from: the
// embedded MNIST validation replay for mnist.
func validationReplay(pipeline string) (*plan.Replay, error) {
	if pipeline != "mnist" {
		return nil, fmt.Errorf("no validation replay known for pipeline %s: pass one", pipeline)
	}
	return mnist.ValidationReplay()
}

// testReference says, for each item of items, whether model alone answers
// it right, from the embedded MNIST test replay (every model's
// probabilities on the 10,000 test images). nil when the pipeline is not
// mnist or items are not a prefix of the test images.
func testReference(pipeline string, labels []int32, model string) []bool {
	if pipeline != "mnist" {
		return nil
	}
	r, err := mnist.TestReplay()
	if err != nil || len(labels) > r.Len() || r.Probs[model] == nil {
		return nil
	}
	ref := make([]bool, len(labels))
	for i, l := range labels {
		if r.Labels[i] != l {
			return nil
		}
		row := r.Row(model, i)
		best := 0
		for c, v := range row {
			if v > row[best] {
				best = c
			}
		}
		ref[i] = int32(best) == l
	}
	return ref
}
