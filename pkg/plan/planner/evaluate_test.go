package planner

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

// workerAnswer decides one item the way a stage worker does: calibrate the
// model's probabilities, compute the confidence, answer or escalate.
func workerAnswer(r *plan.Replay, stages []plan.Stage, metric string, temps map[string]float64, i int) (stage, label int) {
	for j, s := range stages {
		probs := append([]float32(nil), r.Row(s.Model, i)...)
		plan.Calibrate(probs, temps[s.Model])
		conf, l := plan.Confidence(metric, probs)
		if plan.Answers(conf, s.Threshold, j == len(stages)-1) {
			return j, l
		}
	}
	panic("unreachable: the last stage answers")
}

func costsFor(models []plantest.Model, batch int) map[string]float64 {
	prof := plantest.ProfileFile(models, 0)
	out := map[string]float64{}
	for _, m := range models {
		out[m.Name] = prof.Models[m.Name].ItemCostMs(batch)
	}
	return out
}

func TestEvaluatorMatchesWorkerDecisions(t *testing.T) {
	ladder := plantest.Ladder()
	r := plantest.Replay(t, 5, 600, 10, ladder)
	temps := map[string]float64{"tiny": 0.7, "medium": 2.5}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, metric := range plan.Metrics() {
		ev := mustEvaluator(t, r, EvaluatorConfig{Metric: metric, Temperatures: temps, CostMs: costsFor(ladder, 8)})
		for trial := range 30 {
			// A random ordered subset with random thresholds.
			var stages []plan.Stage
			for _, m := range ladder {
				if rng.IntN(2) == 0 {
					stages = append(stages, plan.Stage{Model: m.Name, Threshold: rng.Float64()})
				}
			}
			if len(stages) == 0 {
				stages = []plan.Stage{{Model: "xlarge"}}
			}
			t.Run(fmt.Sprintf("%s/%d", metric, trial), func(t *testing.T) {
				got, err := ev.Evaluate(stages)
				if err != nil {
					t.Fatal(err)
				}
				at, err := ev.AnsweredAt(stages)
				if err != nil {
					t.Fatal(err)
				}
				correct := 0
				reached := make([]int, len(stages))
				for i := range r.Len() {
					stage, label := workerAnswer(r, stages, metric, temps, i)
					if at[i] != stage {
						t.Fatalf("item %d: evaluator answers at stage %d, worker at %d", i, at[i], stage)
					}
					for j := 0; j <= stage; j++ {
						reached[j]++
					}
					if label == int(r.Labels[i]) {
						correct++
					}
				}
				if got.Correct != correct || got.Accuracy != float64(correct)/float64(r.Len()) {
					t.Errorf("correct %d (accuracy %v), worker path %d", got.Correct, got.Accuracy, correct)
				}
				wantCost, sum := 0.0, 0.0
				for j, s := range stages {
					if want := float64(reached[j]) / float64(r.Len()); got.Reach[j] != want {
						t.Errorf("reach[%d] = %v, want %v", j, got.Reach[j], want)
					}
					wantCost += got.Reach[j] * ev.CostMs(s.Model)
					sum += got.AnsweredBy[j]
				}
				if math.Abs(got.CostMsPerItem-wantCost) > 1e-12 || math.Abs(sum-1) > 1e-12 {
					t.Errorf("cost %v want %v; answered-by sums to %v", got.CostMsPerItem, wantCost, sum)
				}
			})
		}
	}
}

func TestEvaluatorRejectsBadCascades(t *testing.T) {
	r := plantest.SmallReplay(t)
	ev := mustEvaluator(t, r, EvaluatorConfig{})
	for _, stages := range [][]plan.Stage{
		nil,
		{{Model: "ghost"}},
		{{Model: "small", Threshold: 0.5}, {Model: "tiny"}},
		{{Model: "tiny", Threshold: 0.5}, {Model: "tiny"}},
	} {
		if _, err := ev.Evaluate(stages); !errors.Is(err, ErrBadCascade) {
			t.Errorf("Evaluate(%v) = %v, want ErrBadCascade", stages, err)
		}
	}
	if _, err := NewEvaluator(r, EvaluatorConfig{Ladder: []string{"tiny", "ghost"}}); !errors.Is(err, plan.ErrBadReplay) {
		t.Errorf("NewEvaluator with a model missing from the replay = %v, want ErrBadReplay", err)
	}
	if _, err := NewEvaluator(r, EvaluatorConfig{Metric: "vibes"}); err == nil {
		t.Error("NewEvaluator accepted an unknown metric")
	}
	if _, err := NewEvaluator(&plan.Replay{Classes: 3}, EvaluatorConfig{}); !errors.Is(err, plan.ErrBadReplay) {
		t.Errorf("NewEvaluator of an empty replay = %v, want ErrBadReplay", err)
	}
}

// bruteForceFront evaluates every cascade with Evaluate and returns the
// (correct, cost) points of its Pareto front, most accurate first.
func bruteForceFront(t *testing.T, ev *Evaluator, opts SearchOptions) [][2]float64 {
	t.Helper()
	ladder := ev.Ladder()
	var points [][2]float64
	var rec func(stages []plan.Stage, next int)
	rec = func(stages []plan.Stage, next int) {
		for m := next; m < len(ladder); m++ {
			last := append(slices.Clone(stages), plan.Stage{Model: ladder[m]})
			e, err := ev.Evaluate(last)
			if err != nil {
				t.Fatal(err)
			}
			points = append(points, [2]float64{float64(e.Correct), e.CostMsPerItem})
			grid, err := ev.Thresholds(ladder[m], opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, thr := range grid {
				rec(append(slices.Clone(stages), plan.Stage{Model: ladder[m], Threshold: thr}), m+1)
			}
		}
	}
	rec(nil, 0)
	slices.SortFunc(points, func(a, b [2]float64) int {
		if a[1] != b[1] {
			return cmpFloat(a[1], b[1])
		}
		return cmpFloat(b[0], a[0])
	})
	var front [][2]float64
	best := -1.0
	for _, p := range points {
		if p[0] > best {
			best = p[0]
			front = append(front, p)
		}
	}
	slices.Reverse(front)
	return front
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestParetoFrontMatchesBruteForce(t *testing.T) {
	ladder := plantest.Ladder()[:4]
	r := plantest.Replay(t, 9, 400, 10, ladder)
	for _, opts := range []SearchOptions{
		{GridPoints: 6},
		{GridPoints: 5, GridSpacing: GridUniform},
		{GridPoints: 9},
	} {
		t.Run(fmt.Sprintf("%d-%s", opts.GridPoints, opts.GridSpacing), func(t *testing.T) {
			ev := mustEvaluator(t, r, EvaluatorConfig{CostMs: costsFor(ladder, 8)})
			front, evaluated, err := ev.ParetoFront(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			want := bruteForceFront(t, ev, opts)
			if len(front) != len(want) {
				t.Fatalf("front has %d points, brute force %d", len(front), len(want))
			}
			for i, c := range front {
				if float64(c.Correct) != want[i][0] || math.Abs(c.CostMsPerItem-want[i][1]) > 1e-12 {
					t.Errorf("point %d: %s = (%d, %v), brute force (%v, %v)", i, c, c.Correct, c.CostMsPerItem, want[i][0], want[i][1])
				}
			}
			if evaluated <= len(front) {
				t.Errorf("evaluated %d cascades for a front of %d", evaluated, len(front))
			}
		})
	}
}

func TestParetoFrontHasNoDeadStages(t *testing.T) {
	ladder := plantest.Ladder()
	r := plantest.Replay(t, 4, 1500, 10, ladder)
	ev := mustEvaluator(t, r, EvaluatorConfig{CostMs: costsFor(ladder, 8)})
	front, _, err := ev.ParetoFront(context.Background(), SearchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(front) < 10 {
		t.Fatalf("front of %d points", len(front))
	}
	for i, c := range front {
		if i > 0 && !(c.Correct < front[i-1].Correct && c.CostMsPerItem < front[i-1].CostMsPerItem) {
			t.Errorf("point %d (%s) does not trade accuracy for cost against point %d", i, c, i-1)
		}
		for j := range c.Stages {
			if c.Reach[j] == 0 {
				t.Errorf("%s: stage %d is reached by no item", c, j)
			}
			if j < len(c.Stages)-1 && (c.AnsweredBy[j] == 0 || c.Reach[j+1] == 0) {
				t.Errorf("%s: stage %d answers nothing or sends nothing on", c, j)
			}
		}
		if c.Stages[len(c.Stages)-1].Threshold != 0 {
			t.Errorf("%s: last stage has threshold %v", c, c.Stages[len(c.Stages)-1].Threshold)
		}
	}
	// The most accurate cascade beats the best single model here: cascades
	// are worth it on this ladder.
	if best := ev.ModelAccuracy("xlarge"); front[0].Accuracy <= best {
		t.Errorf("best cascade %v, best model alone %v", front[0].Accuracy, best)
	}
}

func TestThresholdGrid(t *testing.T) {
	r := plantest.SmallReplay(t)
	ev := mustEvaluator(t, r, EvaluatorConfig{})
	uni, err := ev.Thresholds("tiny", SearchOptions{GridPoints: 4, GridSpacing: GridUniform})
	if err != nil || !slices.Equal(uni, []float64{0.2, 0.4, 0.6, 0.8}) {
		t.Errorf("uniform grid = %v, %v", uni, err)
	}
	q, err := ev.Thresholds("tiny", SearchOptions{GridPoints: 21})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSorted(q) || len(q) < 10 {
		t.Errorf("quantile grid = %v", q)
	}
	conf := ev.Confidences("tiny")
	// The lowest grid point escalates about (1/22)² of the items.
	below := 0
	for _, c := range conf {
		if c < q[0] {
			below++
		}
	}
	if below > 2 {
		t.Errorf("lowest threshold escalates %d of %d items", below, len(conf))
	}
	if _, err := ev.Thresholds("tiny", SearchOptions{GridSpacing: "fancy"}); err == nil {
		t.Error("unknown spacing accepted")
	}
	if _, err := ev.Thresholds("ghost", SearchOptions{}); !errors.Is(err, ErrBadCascade) {
		t.Errorf("Thresholds(ghost) = %v", err)
	}
}

func TestSearchTooLarge(t *testing.T) {
	r := plantest.SmallReplay(t)
	ev := mustEvaluator(t, r, EvaluatorConfig{})
	_, _, err := ev.ParetoFront(context.Background(), SearchOptions{GridPoints: 50, MaxCandidates: 20})
	if !errors.Is(err, ErrSearchTooLarge) {
		t.Errorf("ParetoFront = %v, want ErrSearchTooLarge", err)
	}
}

func TestSearchHonoursCancellation(t *testing.T) {
	ladder := plantest.Ladder()
	r := plantest.Replay(t, 4, 2000, 10, ladder)
	ev := mustEvaluator(t, r, EvaluatorConfig{CostMs: costsFor(ladder, 8)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := ev.ParetoFront(ctx, SearchOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("ParetoFront on a cancelled context = %v", err)
	}
}

// mustEvaluator builds an evaluator of r, failing the test if it cannot.
func mustEvaluator(t *testing.T, r *plan.Replay, cfg EvaluatorConfig) *Evaluator {
	t.Helper()
	ev, err := NewEvaluator(r, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}
