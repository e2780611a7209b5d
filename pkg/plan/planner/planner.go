package planner

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"
)

// Result is a plan with what the planner found on the way.
type Result struct {
	Plan *plan.Plan
	// Front is the accuracy-versus-cost Pareto front, most accurate first.
	Front []Candidate
	// Candidates are the cascades the planner walked: the fronts of every
	// cascade length up to the capacity, most accurate first.
	Candidates []Candidate
	// Buckets has one entry per load bucket.
	Buckets []BucketChoice
	// Evaluated counts the cascades replayed, Simulations the simulator runs.
	Evaluated, Simulations int
	// Temperatures are the calibration temperatures (nil without Calibrate).
	Temperatures map[string]float64
	Elapsed      time.Duration
}

// BucketChoice is what the planner chose for one load bucket.
type BucketChoice struct {
	QPS float64 `json:"qps"`
	// Candidate indexes Result.Candidates; -1 when no gear is feasible.
	Candidate int                `json:"candidate"`
	Batching  plan.Batching      `json:"batching"`
	Runners   map[string]float64 `json:"runners"`
	Sim       simulate.Result    `json:"sim"`
}

// Feasible reports whether a gear meets the SLO in this bucket.
func (b BucketChoice) Feasible() bool { return b.Candidate >= 0 }

// Make runs the offline planner: it replays every cascade of the ladder,
// keeps the accuracy-versus-cost Pareto front, and for every load bucket
// picks the gear the mode asks for among those whose simulated p95 meets the
// SLO with every model's utilisation within the headroom, searching batch
// size, max delay, and splitting runners among the cascade's models in
// proportion to their demand (reach × cost). More load never gets a more
// expensive gear. Adjacent buckets with the same gear are merged.
func Make(ctx context.Context, cfg Config) (*Result, error) {
	res, err := makePlan(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	return res, nil
}

func makePlan(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	start := cfg.Now()
	res := &Result{}
	ev, err := cfg.evaluator(res)
	if err != nil {
		return nil, err
	}
	order, err := cfg.candidates(ctx, ev, res)
	if err != nil {
		return nil, err
	}
	edges, _ := cfg.Load.Edges()
	pl := &walker{cfg: &cfg, ctx: ctx, cands: res.Candidates, edges: edges, checked: map[checkKey]*gearChoice{}, simCache: map[simKey]simulate.Result{}}
	if res.Buckets, err = pl.walk(order); err != nil {
		return nil, err
	}
	res.Simulations = pl.sims
	if len(res.Buckets) == 0 || !res.Buckets[0].Feasible() {
		cheapest := res.Front[len(res.Front)-1]
		return nil, fmt.Errorf("%w: at %v qps on %d runners, not even %s (%.3g ms/item) has a simulated p95 within %v ms and utilisation within %.0f%%",
			ErrInfeasible, edges[0], cfg.Capacity, cheapest, cheapest.CostMsPerItem, cfg.SLOP95Ms, cfg.Headroom*100)
	}
	if err := pl.checkAccuracyGap(res, ev); err != nil {
		return nil, err
	}
	p := pl.buildPlan(res, ev, edges)
	if err := cfg.predictHoldout(p, ev.Ladder(), res.Temperatures); err != nil {
		return nil, err
	}
	res.Elapsed = cfg.Now().Sub(start)
	p.Planner["elapsed_ms"] = math.Round(float64(res.Elapsed.Microseconds())/100) / 10
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("internal error: %w", err)
	}
	res.Plan = p
	return res, nil
}

// evaluator fits the temperatures (with Calibrate, into res) and builds
// the evaluator of the ladder, charging each model its cost at CostBatch.
func (cfg *Config) evaluator(res *Result) (*Evaluator, error) {
	names := make([]string, len(cfg.Ladder))
	costs := map[string]float64{}
	for i, m := range cfg.Ladder {
		names[i] = m.Name
		costs[m.Name] = cfg.itemCost(m.Name, cfg.CostBatch)
	}
	if cfg.Calibrate {
		res.Temperatures = map[string]float64{}
		for _, m := range names {
			t, err := FitTemperature(cfg.Replay, m)
			if err != nil {
				return nil, err
			}
			res.Temperatures[m] = t
		}
	}
	return NewEvaluator(cfg.Replay, EvaluatorConfig{Ladder: names, Metric: cfg.Metric, Temperatures: res.Temperatures, CostMs: costs})
}

// candidates searches the replay, records the Pareto front and the
// candidates to walk in res, and returns the order to walk them in.
func (cfg *Config) candidates(ctx context.Context, ev *Evaluator, res *Result) ([]int, error) {
	sr, err := ev.Search(ctx, cfg.Search)
	if err != nil {
		return nil, err
	}
	res.Evaluated = sr.Evaluated()
	if res.Front, err = sr.Front(0); err != nil {
		return nil, err
	}
	// Every stage needs a runner, so longer cascades than the capacity are
	// out. The walk goes over the fronts of every length, so a shorter
	// cascade is there when a longer one fails on latency or runners.
	maxStages := min(len(cfg.Ladder), cfg.Capacity)
	if cfg.Search.MaxStages > 0 {
		maxStages = min(maxStages, cfg.Search.MaxStages)
	}
	if res.Candidates, err = sr.FrontByDepth(maxStages); err != nil {
		return nil, err
	}
	return walkOrder(*cfg, res.Candidates)
}

// walk walks the loads upwards and chooses each bucket's gear. Each bucket
// takes the first feasible candidate in walk order at or after the
// previous bucket's, no more expensive than it: more load never gets a
// more expensive (or, in max-accuracy mode, a more accurate) gear.
func (pl *walker) walk(order []int) ([]BucketChoice, error) {
	var buckets []BucketChoice
	pos, prevCost := 0, math.Inf(1)
	var prev *gearChoice
	for b, q := range pl.edges {
		var chosen *gearChoice
		for ; pos < len(order); pos++ {
			idx := order[pos]
			if pl.cands[idx].CostMsPerItem > prevCost {
				continue
			}
			var sticky *gearChoice
			if prev != nil && prev.cand == idx {
				sticky = prev
			}
			g, err := pl.feasible(idx, b, sticky)
			if err != nil {
				return nil, err
			}
			if g != nil {
				chosen = g
				break
			}
		}
		if chosen == nil {
			buckets = append(buckets, BucketChoice{QPS: q, Candidate: -1})
			continue
		}
		buckets = append(buckets, BucketChoice{QPS: q, Candidate: chosen.cand, Batching: chosen.batching, Runners: pl.shares(chosen), Sim: chosen.sim})
		prev, prevCost = chosen, pl.cands[chosen.cand].CostMsPerItem
	}
	return buckets, nil
}

// checkAccuracyGap refuses a max-accuracy plan whose most accurate gear is
// more than MaxAccuracyGap below the ladder's most accurate model alone,
// naming why that model is out of every gear.
func (pl *walker) checkAccuracyGap(res *Result, ev *Evaluator) error {
	cfg := pl.cfg
	if cfg.Mode != ModeMaxAccuracy || cfg.MaxAccuracyGap < 0 {
		return nil
	}
	bestModel, bestAcc := "", -1.0
	for _, m := range ev.Ladder() {
		if a := ev.ModelAccuracy(m); a > bestAcc {
			bestModel, bestAcc = m, a
		}
	}
	gear, gearAcc := -1, -1.0
	for _, b := range res.Buckets {
		if b.Feasible() && pl.cands[b.Candidate].Accuracy > gearAcc {
			gear, gearAcc = b.Candidate, pl.cands[b.Candidate].Accuracy
		}
	}
	if gear < 0 || bestAcc-gearAcc <= cfg.MaxAccuracyGap {
		return nil
	}
	prof := cfg.Profile
	q := pl.edges[0]
	lat := prof.Models[bestModel].LatencyMs(1) + prof.ItemOverheadMs + prof.BatchOverheadMs + 2*prof.HopOverheadMs
	var cause string
	switch largest := slices.Max(cfg.BatchSizes); {
	case lat > cfg.SLOP95Ms:
		cause = fmt.Sprintf("model %q alone takes %.3g ms for one item (batch of 1 with the hops), beyond the SLO's p95 of %v ms: "+
			"loosen --slo, or profile it on faster hardware", bestModel, lat, cfg.SLOP95Ms)
	case q*cfg.itemCost(bestModel, largest)/1000 > float64(cfg.Capacity)*cfg.Headroom:
		cause = fmt.Sprintf("at the lowest load, %.6g qps, model %q alone needs %.3g runners even at batch %d (%.3g ms/item), "+
			"more than %d runners × headroom %.2g: plan for more --capacity or a lower minimum --qps",
			q, bestModel, q*cfg.itemCost(bestModel, largest)/1000, largest, cfg.itemCost(bestModel, largest), cfg.Capacity, cfg.Headroom)
	default:
		cause = fmt.Sprintf("no gear with model %q has a simulated p95 within %v ms and utilisation within %.0f%% at %.6g qps on %d runners: "+
			"plan for more --capacity, a looser --slo or a lower minimum --qps", bestModel, cfg.SLOP95Ms, cfg.Headroom*100, q, cfg.Capacity)
	}
	return fmt.Errorf("%w: the most accurate gear, %s, reaches %.2f%% on the replay, %.2f points below model %q alone (%.2f%%; at most %.2g allowed): %s",
		ErrAccuracyGap, pl.cands[gear], 100*gearAcc, 100*(bestAcc-gearAcc), bestModel, 100*bestAcc, 100*cfg.MaxAccuracyGap, cause)
}

// walkOrder returns the order in which the planner tries candidates at
// each load. Max-accuracy: most accurate first. Min-cost: the cascades that
// reach the target, cheapest first, then the others, most accurate first
// (the fallback at loads where no cascade reaching the target fits).
func walkOrder(cfg Config, cands []Candidate) ([]int, error) {
	var order, below []int
	for i, c := range cands {
		if cfg.Mode == ModeMinCost && c.Accuracy < cfg.TargetAccuracy {
			below = append(below, i)
			continue
		}
		order = append(order, i)
	}
	if cfg.Mode != ModeMinCost {
		return order, nil
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("%w: target %.4f, the best cascade %s reaches %.4f", ErrAccuracyUnreachable, cfg.TargetAccuracy, cands[0], cands[0].Accuracy)
	}
	slices.SortStableFunc(order, func(a, b int) int {
		if c := cmp.Compare(cands[a].CostMsPerItem, cands[b].CostMsPerItem); c != 0 {
			return c
		}
		return cmp.Compare(cands[b].Correct, cands[a].Correct)
	})
	return append(order, below...), nil
}
