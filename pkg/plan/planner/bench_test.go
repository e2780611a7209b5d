package planner

import (
	"context"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

// mnistLikeConfig is the planning problem the performance target is stated
// for: a five-model ladder, 5000 replay items, 21-point threshold grids,
// every ordered subset of the ladder, 40 load buckets.
func mnistLikeConfig(b *testing.B) Config {
	b.Helper()
	ladder := plantest.Ladder()
	r := plantest.Replay(b, 1, 5000, 10, ladder)
	return Config{
		Pipeline: "mnist-like",
		Input:    plan.Input{Name: "input", Shape: []int64{1, 28, 28}},
		Replay:   r,
		Profile:  plantest.ProfileFile(ladder, 0.3),
		SLOP95Ms: 20,
		Capacity: 8,
		Load:     LoadRange{MinQPS: 100, MaxQPS: 20000, Buckets: 40},
		Search:   SearchOptions{GridPoints: 21},
	}
}

// BenchmarkPlanMNISTLike measures a whole planner run: replay search,
// Pareto front, and the simulations of the gear search.
//
//	go test ./pkg/plan/planner -run '^$' -bench PlanMNISTLike -benchtime 3x
func BenchmarkPlanMNISTLike(b *testing.B) {
	cfg := mnistLikeConfig(b)
	var res *Result
	for b.Loop() {
		var err error
		res, err = Make(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(res.Evaluated), "cascades")
	b.ReportMetric(float64(res.Simulations), "sims")
	b.ReportMetric(float64(len(res.Plan.Gears)), "gears")
}

// BenchmarkParetoFront measures the replay search alone.
func BenchmarkParetoFront(b *testing.B) {
	cfg := mnistLikeConfig(b)
	costs := map[string]float64{}
	for name, p := range cfg.Profile.Models {
		costs[name] = p.ItemCostMs(8)
	}
	ev, err := NewEvaluator(cfg.Replay, EvaluatorConfig{CostMs: costs})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ev.ParetoFront(context.Background(), SearchOptions{GridPoints: 21}); err != nil {
			b.Fatal(err)
		}
	}
}
