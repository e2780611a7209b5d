package planner

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"
)

type walker struct {
	cfg   *Config
	ctx   context.Context
	cands []Candidate
	edges []float64
	// checked keeps each feasibility answer: the gear, or nil.
	checked map[checkKey]*gearChoice
	// simCache keeps every simulation, so look-ahead runs are reused.
	simCache map[simKey]simulate.Result
	// runners[cand] caches the runner split of a candidate.
	runners map[int][]int
	sims    int
}

type checkKey struct {
	cand int
	qps  float64
}

// gearChoice is a cascade with batching and runners that met the SLO at a
// load, with the simulation that showed it.
type gearChoice struct {
	cand     int
	batching plan.Batching
	runners  []int // per stage
	sim      simulate.Result
	p95Max   float64
}

func (g *gearChoice) sameGear(o *gearChoice) bool {
	return g.cand == o.cand && g.batching == o.batching && slices.Equal(g.runners, o.runners)
}

// split divides the capacity among a cascade's stages: every stage gets one
// runner, then each further runner goes to the stage with the highest
// demand per runner (reach × cost / runners), the highest-averages method.
// It is house-monotone: more capacity never takes a runner from a stage.
func (pl *walker) split(cand int) []int {
	if r, ok := pl.runners[cand]; ok {
		return r
	}
	c := pl.cands[cand]
	k := len(c.Stages)
	if k > pl.cfg.Capacity {
		return nil
	}
	demand := make([]float64, k)
	for j, s := range c.Stages {
		demand[j] = c.Reach[j] * pl.cfg.itemCost(s.Model, pl.cfg.CostBatch)
	}
	r := make([]int, k)
	for j := range r {
		r[j] = 1
	}
	for range pl.cfg.Capacity - k {
		best := 0
		for j := 1; j < k; j++ {
			if demand[j]/float64(r[j]) > demand[best]/float64(r[best]) {
				best = j
			}
		}
		r[best]++
	}
	if pl.runners == nil {
		pl.runners = map[int][]int{}
	}
	pl.runners[cand] = r
	return r
}

func (pl *walker) shares(g *gearChoice) map[string]float64 {
	out := map[string]float64{}
	for j, s := range pl.cands[g.cand].Stages {
		out[s.Model] = float64(g.runners[j]) / float64(pl.cfg.Capacity)
	}
	return out
}

// simConfig builds the simulation of candidate cand at load q.
func (pl *walker) simConfig(cand int, q float64, b plan.Batching, runners []int) simulate.Config {
	c := pl.cands[cand]
	sc := simulate.Config{
		QPS:             q,
		Requests:        pl.simRequests(q),
		Seed:            pl.cfg.Seed,
		Overheads:       pl.cfg.Profile.Overheads,
		SharedRunners:   pl.cfg.RunnerPool == plan.RunnerPoolShared,
		AnsweredBy:      c.AnsweredBy,
		AbortAboveP95Ms: pl.cfg.SLOP95Ms,
	}
	for j, s := range c.Stages {
		sc.Stages = append(sc.Stages, simulate.Stage{
			Model:      s.Model,
			Profile:    pl.cfg.Profile.Models[s.Model],
			Runners:    runners[j],
			MaxBatch:   pl.cfg.stageBatch(s.Model, b.MaxBatch),
			MaxDelayMs: b.MaxDelayMs,
			MaxQueue:   pl.cfg.MaxQueue,
		})
	}
	return sc
}

// simRequests is the number of requests simulated at load q.
func (pl *walker) simRequests(q float64) int {
	n := pl.cfg.SimRequests
	if pl.cfg.SimSeconds > 0 {
		n = max(n, min(int(q*pl.cfg.SimSeconds), simulate.MaxRequests))
	}
	return n
}

// ok reports whether a simulation meets the SLO within the headroom.
func (pl *walker) ok(r simulate.Result) bool {
	if r.Aborted || r.Dropped > 0 || r.Completed < r.Requests || r.P95Ms > pl.cfg.SLOP95Ms {
		return false
	}
	return r.MaxUtilisation() <= pl.cfg.Headroom
}

// minLatencyMs is a lower bound of a candidate's p95 at any load: at least
// 5% of items pass every stage up to the deepest one that more than 5%
// reach, each at batch size 1, plus the hops.
func (pl *walker) minLatencyMs(cand int) float64 {
	c := pl.cands[cand]
	hop := pl.cfg.Profile.HopOverheadMs
	lat := hop
	bound := 0.0
	for j, s := range c.Stages {
		lat += pl.cfg.Profile.Models[s.Model].LatencyMs(1) + pl.cfg.Profile.ItemOverheadMs + pl.cfg.Profile.BatchOverheadMs + hop
		if c.Reach[j] > 0.05 {
			bound = lat
		}
	}
	return bound
}

// feasible returns a gear for candidate cand that meets the SLO at the
// load of bucket b, or nil. It tries the sticky gear first (the previous
// bucket's, so that a gear that still fits is kept and buckets merge), then
// every batching of the grid. Among the batchings that fit, it keeps those
// that also fit the highest following bucket, so one gear covers as wide a
// load range as it can, and of these the one with the lowest p95.
func (pl *walker) feasible(cand, b int, sticky *gearChoice) (*gearChoice, error) {
	if err := pl.ctx.Err(); err != nil {
		return nil, err
	}
	q := pl.edges[b]
	key := checkKey{cand, q}
	if g, ok := pl.checked[key]; ok {
		return g, nil
	}
	runners := pl.split(cand)
	if runners == nil || pl.minLatencyMs(cand) > pl.cfg.SLOP95Ms {
		pl.checked[key] = nil
		return nil, nil
	}
	if sticky != nil && pl.canKeepUp(cand, q, sticky.batching.MaxBatch, runners) {
		rs, err := pl.simulate(cand, q, []plan.Batching{sticky.batching}, runners)
		if err != nil {
			return nil, err
		}
		if pl.ok(rs[0]) {
			g := *sticky
			g.sim = rs[0]
			g.p95Max = max(sticky.p95Max, rs[0].P95Ms)
			pl.checked[key] = &g
			return &g, nil
		}
	}
	configs := pl.batchings(cand, q, runners)
	results, err := pl.simulate(cand, q, configs, runners)
	if err != nil {
		return nil, err
	}
	alive := pl.passing(results)
	if len(alive) == 0 {
		pl.checked[key] = nil
		return nil, nil
	}
	alive, err = pl.widest(cand, b, configs, alive, runners)
	if err != nil {
		return nil, err
	}
	// Lowest p95 here; ties keep the earlier: among the widest the smaller
	// batch and shorter delay, and a latency-slack alternative (listed
	// after them) only with a strictly lower p95.
	best := alive[0]
	for _, i := range alive[1:] {
		if results[i].P95Ms < results[best].P95Ms {
			best = i
		}
	}
	g := &gearChoice{cand: cand, batching: configs[best], runners: runners, sim: results[best], p95Max: results[best].P95Ms}
	pl.checked[key] = g
	return g, nil
}

// widest returns those of configs[alive], all fitting candidate cand at
// bucket b, that cover the widest load range from b, within the latency
// slack: those that still fit the highest bucket at which any of them
// fits, or, with LatencySlack s, also those with the same max batch and a
// shorter max delay that fit the highest bucket at or below (1 − s) × that
// bucket's load (unless b is already above it). Which of them serves is
// then a matter of latency: a batching that waits longer to fill its
// batches may carry a little more load, and the slack keeps it from
// winning when that little costs every lower load its wait (the walk gives
// the top of the range a gear of its own, with the longer wait, where the
// shorter one stops fitting). The slack never trades the max batch: it
// also sets how many items the ingress packs in one envelope, so a smaller
// one means more messages on the live path, which the simulator does not
// see (measured: mlp_small@0.97>cnn at batch 16 carried 0.76 of its
// simulated capacity, at batch 64 1.29).
func (pl *walker) widest(cand, b int, configs []plan.Batching, alive []int, runners []int) ([]int, error) {
	// The highest bucket at which some still fit, by binary search (a
	// batching that fits a load is taken to fit lower loads too; the walk
	// re-checks every bucket anyway).
	all := alive
	lo, hi := b, len(pl.edges)-1
	for lo < hi && (len(alive) > 1 || pl.cfg.LatencySlack > 0) {
		mid := (lo + hi + 1) / 2
		survivors, err := pl.fitting(cand, mid, configs, alive, runners)
		if err != nil {
			return nil, err
		}
		if len(survivors) == 0 {
			hi = mid - 1
			continue
		}
		lo, alive = mid, survivors
	}
	if pl.cfg.LatencySlack <= 0 {
		return alive, nil
	}
	target := b
	for target < lo && pl.edges[target+1] <= (1-pl.cfg.LatencySlack)*pl.edges[lo] {
		target++
	}
	if target == b {
		// Already within the slack of the top: the widest, so the range
		// splits once, not at every batching that stops fitting.
		return alive, nil
	}
	shorter := slices.Clone(alive)
	for _, i := range all {
		if slices.Contains(alive, i) {
			continue
		}
		for _, w := range alive {
			if configs[i].MaxBatch == configs[w].MaxBatch && configs[i].MaxDelayMs < configs[w].MaxDelayMs {
				shorter = append(shorter, i)
				break
			}
		}
	}
	if len(shorter) == len(alive) {
		return alive, nil
	}
	fit, err := pl.fitting(cand, target, configs, shorter, runners)
	if err != nil || len(fit) == 0 {
		// A simulation is not monotone in the load to the last request:
		// none fitting at target (not even the widest) keeps the widest.
		return alive, err
	}
	return fit, nil
}

// fitting returns those of configs[alive] that fit candidate cand at the
// load of bucket b.
func (pl *walker) fitting(cand, b int, configs []plan.Batching, alive []int, runners []int) ([]int, error) {
	q := pl.edges[b]
	var try []plan.Batching
	var idx []int
	for _, i := range alive {
		if pl.canKeepUp(cand, q, configs[i].MaxBatch, runners) {
			try = append(try, configs[i])
			idx = append(idx, i)
		}
	}
	rs, err := pl.simulate(cand, q, try, runners)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, k := range pl.passing(rs) {
		out = append(out, idx[k])
	}
	return out, nil
}

// passing returns the indexes of the results that are ok.
func (pl *walker) passing(results []simulate.Result) []int {
	var out []int
	for i, r := range results {
		if pl.ok(r) {
			out = append(out, i)
		}
	}
	return out
}

// batchings lists the batch settings of the grid that pass the compute
// check for candidate cand at load q.
func (pl *walker) batchings(cand int, q float64, runners []int) []plan.Batching {
	var out []plan.Batching
	for _, b := range pl.cfg.BatchSizes {
		for _, d := range pl.cfg.DelaysMs {
			if b == 1 && d > 0 {
				continue // a batch of one never waits
			}
			if pl.canKeepUp(cand, q, b, runners) {
				out = append(out, plan.Batching{MaxBatch: b, MaxDelayMs: d})
			}
		}
	}
	return out
}

type simKey struct {
	cand     int
	qps      float64
	batching plan.Batching
}

// simulate runs (or recalls) the simulations of candidate cand at load q
// with each batching, in parallel.
func (pl *walker) simulate(cand int, q float64, configs []plan.Batching, runners []int) ([]simulate.Result, error) {
	results := make([]simulate.Result, len(configs))
	var todo []int
	for i, c := range configs {
		if r, ok := pl.simCache[simKey{cand, q, c}]; ok {
			results[i] = r
		} else {
			todo = append(todo, i)
		}
	}
	errs := make([]error, len(configs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(pl.cfg.Parallelism, len(todo)) {
		wg.Go(func() {
			for i := range next {
				results[i], errs[i] = simulate.Run(pl.simConfig(cand, q, configs[i], runners))
			}
		})
	}
	for _, i := range todo {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, i := range todo {
		pl.simCache[simKey{cand, q, configs[i]}] = results[i]
	}
	pl.sims += len(todo)
	return results, nil
}

// canKeepUp is the compute check: even if every batch were full, would
// each stage's utilisation, slowed down by the per-request overhead's share
// of the cores, stay within the headroom, and would the whole CPU demand
// (per-request overhead plus every stage's work) stay within the CPU
// headroom's share of the capacity's cores (Config.CPUHeadroom)? Without a per-request overhead the second
// check follows from the first.
func (pl *walker) canKeepUp(cand int, q float64, b int, runners []int) bool {
	c := pl.cands[cand]
	rho := pl.cfg.requestShare(q)
	if rho >= 1 {
		return false
	}
	total := rho
	for j, s := range c.Stages {
		// The cores count the model's compute only: the CPU that moving
		// messages costs is part of the overhead measured as rho.
		sb := pl.cfg.stageBatch(s.Model, b)
		total += q / 1000 * c.Reach[j] * pl.cfg.computeCost(s.Model, sb) / float64(pl.cfg.Capacity)
		// Shared runners lend each other their time: only the total counts.
		work := q / 1000 * c.Reach[j] * pl.cfg.itemCost(s.Model, sb)
		if pl.cfg.RunnerPool == plan.RunnerPoolPerModel && work/float64(runners[j])/(1-rho) > pl.cfg.Headroom {
			return false
		}
	}
	return total <= cmp.Or(pl.cfg.CPUHeadroom, pl.cfg.Headroom)
}
