package plan

import (
	"context"
	"testing"
)

// mnistLikeConfig is the planning problem the performance target is stated
// for: a five-model ladder, 5000 replay items, 21-point threshold grids,
// every ordered subset of the ladder, 40 load buckets.
func mnistLikeConfig(b *testing.B) PlannerConfig {
	b.Helper()
	ladder := SyntheticLadder()
	r, err := SyntheticReplay(1, 5000, 10, ladder)
	if err != nil {
		b.Fatal(err)
	}
	return PlannerConfig{
		Pipeline: "mnist-like",
		Input:    Input{Name: "input", Shape: []int64{1, 28, 28}},
		Replay:   r,
		Profile:  SyntheticProfile(ladder, 0.3),
		SLOP95Ms: 20,
		Capacity: 8,
		Load:     LoadRange{MinQPS: 100, MaxQPS: 20000, Buckets: 40},
		Search:   SearchOptions{GridPoints: 21},
	}
}

// BenchmarkPlanMNISTLike measures a whole planner run: replay search,
// Pareto front, and the simulations of the gear search.
//
//	go test ./pkg/plan -run '^$' -bench PlanMNISTLike -benchtime 3x
func BenchmarkPlanMNISTLike(b *testing.B) {
	cfg := mnistLikeConfig(b)
	var res *PlanResult
	for b.Loop() {
		var err error
		res, err = MakePlan(context.Background(), cfg)
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

// BenchmarkSimulate measures one simulation of a three-stage cascade with
// 3000 requests, the unit of the planner's gear search.
func BenchmarkSimulate(b *testing.B) {
	cfg := SimConfig{
		QPS: 5000, Requests: 3000, Seed: 1, Overheads: Overheads{HopOverheadMs: 0.3},
		Stages: []SimStage{
			{Model: "a", Profile: linearProfile(0.1, 0.01), Runners: 2, MaxBatch: 32, MaxDelayMs: 1},
			{Model: "b", Profile: linearProfile(0.3, 0.08), Runners: 2, MaxBatch: 32, MaxDelayMs: 1},
			{Model: "c", Profile: linearProfile(1, 1), Runners: 4, MaxBatch: 32, MaxDelayMs: 1},
		},
		AnsweredBy: []float64{0.6, 0.3, 0.1},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Simulate(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
