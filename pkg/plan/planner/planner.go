package planner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Planner modes.
const (
	// ModeMaxAccuracy picks, for every load, the most accurate cascade
	// whose simulated p95 meets the SLO on the capacity.
	ModeMaxAccuracy = "max-accuracy"
	// ModeMinCost picks, for every load, the cheapest cascade that reaches
	// the accuracy target and meets the SLO; at loads where none does, it
	// falls back to the most accurate feasible one.
	ModeMinCost = "min-cost"
)

// Load bucket spacings.
const (
	SpacingLinear = "linear"
	SpacingLog    = "log"
)

// Errors of Make that callers branch on.
var (
	// ErrConfig marks an invalid planner configuration.
	ErrConfig = errors.New("invalid planner config")
	// ErrModelNotProfiled marks a ladder model missing from the profile.
	ErrModelNotProfiled = errors.New("model not in profile")
	// ErrInfeasible marks a plan that cannot exist: not even the cheapest
	// cascade meets the SLO at the lowest load on the capacity.
	ErrInfeasible = errors.New("no gear meets the SLO")
	// ErrAccuracyUnreachable marks a min-cost target no cascade reaches.
	ErrAccuracyUnreachable = errors.New("accuracy target unreachable")
	// ErrAccuracyGap marks a max-accuracy plan whose most accurate gear
	// falls far below the ladder's most accurate model alone (see
	// Config.MaxAccuracyGap).
	ErrAccuracyGap = errors.New("best gear far below the best model")
)

// DefaultMaxAccuracyGap is Config.MaxAccuracyGap's default: 5 points.
const DefaultMaxAccuracyGap = 0.05

// LoadRange is the range of intake rates the plan covers, cut into buckets.
// A gear is planned at each bucket's upper edge and serves loads up to it.
type LoadRange struct {
	MinQPS, MaxQPS float64
	// Buckets is the number of bucket edges from MinQPS to MaxQPS, both
	// included (default 40).
	Buckets int
	// StepQPS, when > 0, replaces Buckets: edges MinQPS, MinQPS+StepQPS, …
	// up to MaxQPS (included).
	StepQPS float64
	// Spacing of the Buckets edges: SpacingLinear (default) or SpacingLog.
	Spacing string
}

// Edges returns the bucket upper edges, ascending.
func (l LoadRange) Edges() ([]float64, error) {
	if !(l.MinQPS > 0) || !(l.MaxQPS >= l.MinQPS) || math.IsInf(l.MaxQPS, 0) {
		return nil, fmt.Errorf("%w: load range %v:%v must have 0 < min <= max", ErrConfig, l.MinQPS, l.MaxQPS)
	}
	if l.StepQPS > 0 {
		n := math.Ceil((l.MaxQPS-l.MinQPS)/l.StepQPS) + 1
		if n > 100_000 {
			return nil, fmt.Errorf("%w: step %v gives %.0f buckets (at most 100000)", ErrConfig, l.StepQPS, n)
		}
		var out []float64
		for q := l.MinQPS; q < l.MaxQPS; q += l.StepQPS {
			out = append(out, roundSig(q, 6))
		}
		return append(out, l.MaxQPS), nil
	}
	n := l.Buckets
	if n == 0 {
		n = 40
	}
	if n < 1 || n > 100_000 {
		return nil, fmt.Errorf("%w: buckets must be in [1,100000], got %d", ErrConfig, n)
	}
	if n == 1 || l.MinQPS == l.MaxQPS {
		return []float64{l.MaxQPS}, nil
	}
	out := make([]float64, n)
	for i := range n {
		f := float64(i) / float64(n-1)
		switch l.Spacing {
		case SpacingLinear, "":
			out[i] = l.MinQPS + f*(l.MaxQPS-l.MinQPS)
		case SpacingLog:
			out[i] = l.MinQPS * math.Pow(l.MaxQPS/l.MinQPS, f)
		default:
			return nil, fmt.Errorf("%w: load spacing %q is not %q or %q", ErrConfig, l.Spacing, SpacingLinear, SpacingLog)
		}
		out[i] = roundSig(out[i], 6)
	}
	out[n-1] = l.MaxQPS
	return slices.Compact(out), nil
}

// LadderModel names a ladder model and its ONNX file.
type LadderModel struct {
	Name string
	// File is the ONNX file relative to the plan file's folder (default
	// "<name>.onnx").
	File string
}

// Config is everything Make needs. Zero values take the
// documented defaults.
type Config struct {
	Pipeline    string
	Description string
	// Input describes one item; Classes defaults to the replay's.
	Input plan.Input
	// Ladder lists the models cheapest first (default: the replay's order).
	Ladder []LadderModel
	// Replay has every ladder model's probabilities on the validation set.
	Replay *plan.Replay
	// Profile has every ladder model's latency per batch size.
	Profile *plan.ProfileFile
	// SLOP95Ms is the p95 latency objective in ms.
	SLOP95Ms float64
	// Capacity is the number of runners.
	Capacity int
	// RunnerPool is how the runners are deployed (Plan.RunnerPool; default
	// RunnerPoolShared): it goes into the plan and decides how the
	// simulations schedule the runners.
	RunnerPool string
	// Load is the range of loads to plan for.
	Load LoadRange
	// Mode is ModeMaxAccuracy (default) or ModeMinCost.
	Mode string
	// TargetAccuracy is ModeMinCost's target in [0,1].
	TargetAccuracy float64
	// MaxAccuracyGap is how far (a fraction of the items: 0.05 is 5
	// points) the most accurate gear of a max-accuracy plan may fall below
	// the ladder's most accurate model alone; beyond it Make refuses
	// the plan with ErrAccuracyGap and the cause (that model too slow for
	// the SLO, or too costly for the capacity at the lowest load). 0 means
	// DefaultMaxAccuracyGap; negative: no check.
	MaxAccuracyGap float64
	// Metric is the confidence metric (default MetricMargin).
	Metric string
	// Calibrate fits every model's temperature on the replay (FitTemperature)
	// and evaluates cascades on calibrated probabilities.
	Calibrate bool
	// Search configures the threshold grid and cascade length.
	Search SearchOptions
	// CostBatch is the reference batch size of the expected cost per item:
	// a model's per-item cost is Profile.ItemCostMs(CostBatch) plus the
	// profile's ItemOverheadMs and BatchOverheadMs/CostBatch (default 8). It
	// orders the Pareto front and splits runners among models.
	CostBatch int
	// Headroom is the highest utilisation a model's runners may have in a
	// feasible gear (default 0.8), counting the slowdown that the profile's
	// RequestOverheadMs causes, and the highest share of the capacity's
	// cores (one per runner) that the per-request overhead and the runners'
	// work may keep busy together. Lower it on a machine that other work
	// shares.
	Headroom float64
	// BatchSizes are the max batch sizes searched (default 1, 2, 4, …, 128).
	BatchSizes []int
	// DelaysMs are the max delays searched (default 0 and 2%, 5%, 10%, 20%
	// of the SLO).
	DelaysMs []float64
	// SimRequests is the least number of requests per simulation (default
	// 3000).
	SimRequests int
	// SimSeconds is the least simulated time per simulation (default 0.5 s;
	// negative: none): at high loads a few thousand requests cover only
	// milliseconds, too short for queues to settle, and the p95 comes out
	// optimistic. Requests = max(SimRequests, QPS × SimSeconds), at most
	// 50000.
	SimSeconds float64
	// Seed seeds every simulation (default 1).
	Seed uint64
	// MaxQueue bounds every stream in the simulations (0: unbounded); a
	// gear that would drop requests is infeasible.
	MaxQueue int
	// Hysteresis goes into the plan (default DefaultHysteresis()).
	Hysteresis plan.Hysteresis
	// Parallelism bounds concurrent simulations (default GOMAXPROCS).
	Parallelism int
	// Now returns the current time for the planner's timing (default
	// time.Now).
	Now func() time.Time
}

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

func (cfg *Config) defaults() {
	if cfg.Mode == "" {
		cfg.Mode = ModeMaxAccuracy
	}
	if cfg.MaxAccuracyGap == 0 {
		cfg.MaxAccuracyGap = DefaultMaxAccuracyGap
	}
	if cfg.RunnerPool == "" {
		cfg.RunnerPool = plan.RunnerPoolShared
	}
	if cfg.Metric == "" {
		cfg.Metric = plan.MetricMargin
	}
	if cfg.CostBatch == 0 {
		cfg.CostBatch = 8
	}
	if cfg.Headroom == 0 {
		cfg.Headroom = 0.8
	}
	if len(cfg.BatchSizes) == 0 {
		cfg.BatchSizes = []int{1, 2, 4, 8, 16, 32, 64, 128}
	}
	if len(cfg.DelaysMs) == 0 && cfg.SLOP95Ms > 0 {
		for _, f := range []float64{0, 0.02, 0.05, 0.1, 0.2} {
			cfg.DelaysMs = append(cfg.DelaysMs, roundSig(f*cfg.SLOP95Ms, 3))
		}
	}
	if cfg.SimRequests == 0 {
		cfg.SimRequests = 3000
	}
	if cfg.SimSeconds == 0 {
		cfg.SimSeconds = 0.5
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.Hysteresis == (plan.Hysteresis{}) {
		cfg.Hysteresis = plan.DefaultHysteresis()
	}
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = runtime.GOMAXPROCS(0)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Input.Datatype == "" {
		cfg.Input.Datatype = "FP32"
	}
	if cfg.Replay != nil && cfg.Input.Classes == 0 {
		cfg.Input.Classes = cfg.Replay.Classes
	}
	if cfg.Replay != nil && len(cfg.Ladder) == 0 {
		for _, m := range cfg.Replay.Models {
			cfg.Ladder = append(cfg.Ladder, LadderModel{Name: m})
		}
	}
	for i := range cfg.Ladder {
		if cfg.Ladder[i].File == "" {
			cfg.Ladder[i].File = cfg.Ladder[i].Name + ".onnx"
		}
	}
}

// validate reports every configuration problem; replay and profile problems
// keep their own sentinels.
func (cfg *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if cfg.Replay == nil {
		errs = append(errs, fmt.Errorf("%w: no replay", plan.ErrBadReplay))
	} else if err := cfg.Replay.Validate(); err != nil {
		errs = append(errs, err)
	}
	if cfg.Profile == nil {
		errs = append(errs, fmt.Errorf("%w: no profile", plan.ErrBadProfile))
	} else if err := cfg.Profile.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !wire.ValidName(cfg.Pipeline) {
		bad("pipeline %q must be 1-32 characters of a-z, 0-9, '-' or '_'", cfg.Pipeline)
	}
	if !(cfg.SLOP95Ms > 0) || math.IsInf(cfg.SLOP95Ms, 0) {
		bad("slo p95 must be > 0 ms, got %v", cfg.SLOP95Ms)
	}
	if !slices.Contains(plan.RunnerPools(), cfg.RunnerPool) {
		bad("runner pool %q is not one of %v", cfg.RunnerPool, plan.RunnerPools())
	}
	if cfg.Capacity < 1 {
		bad("capacity must be >= 1 runner, got %d", cfg.Capacity)
	}
	if _, err := cfg.Load.Edges(); err != nil {
		errs = append(errs, err)
	}
	switch cfg.Mode {
	case ModeMaxAccuracy:
	case ModeMinCost:
		if !(cfg.TargetAccuracy > 0 && cfg.TargetAccuracy <= 1) {
			bad("mode %s needs a target accuracy in (0,1], got %v", ModeMinCost, cfg.TargetAccuracy)
		}
	default:
		bad("mode %q is not %q or %q", cfg.Mode, ModeMaxAccuracy, ModeMinCost)
	}
	if !slices.Contains(plan.Metrics(), cfg.Metric) {
		bad("confidence metric %q is not one of %v", cfg.Metric, plan.Metrics())
	}
	if cfg.CostBatch < 1 {
		bad("cost batch must be >= 1, got %d", cfg.CostBatch)
	}
	if !(cfg.Headroom > 0 && cfg.Headroom <= 1) {
		bad("headroom must be in (0,1], got %v", cfg.Headroom)
	}
	for _, b := range cfg.BatchSizes {
		if b < 1 || b > 4096 {
			bad("batch size %d outside [1,4096]", b)
		}
	}
	for _, d := range cfg.DelaysMs {
		if d < 0 || d > 60000 || math.IsNaN(d) {
			bad("max delay %vms outside [0,60000]", d)
		}
	}
	if cfg.SimRequests < 100 {
		bad("sim requests must be >= 100, got %d", cfg.SimRequests)
	}
	if cfg.MaxQueue < 0 {
		bad("max queue must be >= 0")
	}
	if len(cfg.Input.Shape) == 0 {
		bad("input shape is empty")
	}
	if len(cfg.Ladder) == 0 {
		bad("ladder is empty")
	}
	seen := map[string]bool{}
	for _, m := range cfg.Ladder {
		if !wire.ValidName(m.Name) {
			bad("model name %q must be 1-32 characters of a-z, 0-9, '-' or '_'", m.Name)
		}
		if seen[m.Name] {
			bad("ladder lists %q twice", m.Name)
		}
		seen[m.Name] = true
		if cfg.Replay != nil {
			if _, ok := cfg.Replay.Probs[m.Name]; !ok {
				errs = append(errs, fmt.Errorf("%w: model %q not in replay (have %v)", plan.ErrBadReplay, m.Name, cfg.Replay.Models))
			}
		}
		if cfg.Profile != nil {
			if _, ok := cfg.Profile.Models[m.Name]; !ok {
				errs = append(errs, fmt.Errorf("%w: %q (profiled: %v)", ErrModelNotProfiled, m.Name, sortedKeys(cfg.Profile.Models)))
			}
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Make runs the offline planner: it replays every cascade of the ladder,
// keeps the accuracy-versus-cost Pareto front, and for every load bucket
// picks the gear the mode asks for among those whose simulated p95 meets the
// SLO with every model's utilisation within the headroom, searching batch
// size, max delay, and splitting runners among the cascade's models in
// proportion to their demand (reach × cost). More load never gets a more
// expensive gear. Adjacent buckets with the same gear are merged.
func Make(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	start := cfg.Now()
	res := &Result{}

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
				return nil, fmt.Errorf("make plan: %w", err)
			}
			res.Temperatures[m] = t
		}
	}
	ev, err := NewEvaluator(cfg.Replay, EvaluatorConfig{Ladder: names, Metric: cfg.Metric, Temperatures: res.Temperatures, CostMs: costs})
	if err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	sr, err := ev.Search(ctx, cfg.Search)
	if err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	res.Evaluated = sr.Evaluated()
	if res.Front, err = sr.Front(0); err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	// Every stage needs a runner, so longer cascades than the capacity are
	// out. The walk goes over the fronts of every length, so a shorter
	// cascade is there when a longer one fails on latency or runners.
	maxStages := min(len(names), cfg.Capacity)
	if cfg.Search.MaxStages > 0 {
		maxStages = min(maxStages, cfg.Search.MaxStages)
	}
	cands, err := sr.FrontByDepth(maxStages)
	if err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	res.Candidates = cands
	order, err := walkOrder(cfg, cands)
	if err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}

	edges, _ := cfg.Load.Edges()
	pl := &walker{cfg: &cfg, ctx: ctx, cands: cands, edges: edges, checked: map[checkKey]*gearChoice{}, simCache: map[simKey]simulate.Result{}}
	// Walk the loads upwards. Each bucket takes the first feasible candidate
	// in walk order at or after the previous bucket's, no more expensive
	// than it: more load never gets a more expensive (or, in max-accuracy
	// mode, a more accurate) gear.
	pos, prevCost := 0, math.Inf(1)
	var prev *gearChoice
	for b, q := range edges {
		var chosen *gearChoice
		for ; pos < len(order); pos++ {
			idx := order[pos]
			if cands[idx].CostMsPerItem > prevCost {
				continue
			}
			var sticky *gearChoice
			if prev != nil && prev.cand == idx {
				sticky = prev
			}
			g, err := pl.feasible(idx, b, sticky)
			if err != nil {
				return nil, fmt.Errorf("make plan: %w", err)
			}
			if g != nil {
				chosen = g
				break
			}
		}
		if chosen == nil {
			res.Buckets = append(res.Buckets, BucketChoice{QPS: q, Candidate: -1})
			continue
		}
		res.Buckets = append(res.Buckets, BucketChoice{QPS: q, Candidate: chosen.cand, Batching: chosen.batching, Runners: pl.shares(chosen), Sim: chosen.sim})
		prev, prevCost = chosen, cands[chosen.cand].CostMsPerItem
	}
	res.Simulations = pl.sims
	if len(res.Buckets) == 0 || !res.Buckets[0].Feasible() {
		cheapest := res.Front[len(res.Front)-1]
		return nil, fmt.Errorf("make plan: %w: at %v qps on %d runners, not even %s (%.3g ms/item) has a simulated p95 within %v ms and utilisation within %.0f%%",
			ErrInfeasible, edges[0], cfg.Capacity, cheapest, cheapest.CostMsPerItem, cfg.SLOP95Ms, cfg.Headroom*100)
	}
	if err := pl.checkAccuracyGap(res, ev, names); err != nil {
		return nil, fmt.Errorf("make plan: %w", err)
	}
	p := pl.buildPlan(res, ev, edges)
	res.Elapsed = cfg.Now().Sub(start)
	p.Planner["elapsed_ms"] = math.Round(float64(res.Elapsed.Microseconds())/100) / 10
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("make plan: internal error: %w", err)
	}
	res.Plan = p
	return res, nil
}

// checkAccuracyGap refuses a max-accuracy plan whose most accurate gear is
// more than MaxAccuracyGap below the ladder's most accurate model alone,
// naming why that model is out of every gear.
func (pl *walker) checkAccuracyGap(res *Result, ev *Evaluator, ladder []string) error {
	cfg := pl.cfg
	if cfg.Mode != ModeMaxAccuracy || cfg.MaxAccuracyGap < 0 {
		return nil
	}
	bestModel, bestAcc := "", -1.0
	for _, m := range ladder {
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
			MaxBatch:   b.MaxBatch,
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
	var alive []int
	for i, r := range results {
		if pl.ok(r) {
			alive = append(alive, i)
		}
	}
	if len(alive) == 0 {
		pl.checked[key] = nil
		return nil, nil
	}
	// Find the highest bucket at which some of them still fit, by binary
	// search (a batching that fits a load is taken to fit lower loads too;
	// the walk re-checks every bucket anyway), and keep those.
	lo, hi := b, len(pl.edges)-1
	for lo < hi && len(alive) > 1 {
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
	// Lowest p95 here; ties keep the earlier (smaller batch, shorter delay).
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
	for k, r := range rs {
		if pl.ok(r) {
			out = append(out, idx[k])
		}
	}
	return out, nil
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

// itemCost is the runner time per item of a model in batches of b: its
// share of the batch latency and of the per-batch messaging overhead, plus
// the per-item messaging overhead.
func (cfg *Config) itemCost(model string, b int) float64 {
	b = max(b, 1)
	return cfg.Profile.Models[model].ItemCostMs(b) + cfg.Profile.ItemOverheadMs + cfg.Profile.BatchOverheadMs/float64(b)
}

// requestShare is the share of the capacity's cores that the profile's
// per-request overhead takes at load q (see simulate.Config.RequestOverheadMs).
func (cfg *Config) requestShare(q float64) float64 {
	return (q*cfg.Profile.RequestOverheadMs + cfg.Profile.IdleCPUMsPerS) / 1000 / float64(cfg.Capacity)
}

// canKeepUp is the compute check: even if every batch were full, would
// each stage's utilisation, slowed down by the per-request overhead's share
// of the cores, stay within the headroom, and would the whole CPU demand
// (per-request overhead plus every stage's work) stay within the headroom's
// share of the capacity's cores? Without a per-request overhead the second
// check follows from the first.
func (pl *walker) canKeepUp(cand int, q float64, b int, runners []int) bool {
	c := pl.cands[cand]
	rho := pl.cfg.requestShare(q)
	if rho >= 1 {
		return false
	}
	total := rho
	for j, s := range c.Stages {
		work := q / 1000 * c.Reach[j] * pl.cfg.itemCost(s.Model, b)
		total += work / float64(pl.cfg.Capacity)
		// Shared runners lend each other their time: only the total counts.
		if pl.cfg.RunnerPool == plan.RunnerPoolPerModel && work/float64(runners[j])/(1-rho) > pl.cfg.Headroom {
			return false
		}
	}
	return total <= pl.cfg.Headroom
}

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
	for _, m := range cfg.Ladder {
		prof := cfg.Profile.Models[m.Name]
		if prof.Threads == 0 {
			prof.Threads = cfg.Profile.Threads
		}
		if prof.Provider == "" {
			prof.Provider = cfg.Profile.Provider
		}
		p.Models = append(p.Models, plan.Model{
			Name:        m.Name,
			File:        m.File,
			Temperature: res.Temperatures[m.Name],
			Profile:     prof,
			Accuracy:    ev.ModelAccuracy(m.Name),
		})
		p.Ladder = append(p.Ladder, m.Name)
	}
	// Rebuild the gear choices bucket by bucket and merge equal neighbours.
	var gears []*gearChoice
	var maxQPS []float64
	lastFeasible := 0.0
	for _, b := range res.Buckets {
		if !b.Feasible() {
			continue
		}
		g := pl.checked[checkKey{b.Candidate, b.QPS}]
		lastFeasible = b.QPS
		if n := len(gears); n > 0 && gears[n-1].sameGear(g) {
			gears[n-1] = &gearChoice{cand: g.cand, batching: g.batching, runners: g.runners, sim: g.sim, p95Max: max(gears[n-1].p95Max, g.p95Max)}
			maxQPS[n-1] = b.QPS
			continue
		}
		gears = append(gears, g)
		maxQPS = append(maxQPS, b.QPS)
	}
	for i, g := range gears {
		c := pl.cands[g.cand]
		stages := slices.Clone(c.Stages)
		stages[len(stages)-1].Threshold = 0
		p.Gears = append(p.Gears, plan.Gear{
			ID:       fmt.Sprintf("g%d", i+1),
			MaxQPS:   maxQPS[i],
			Cascade:  stages,
			Batching: g.batching,
			Runners:  pl.shares(g),
			Predicted: plan.Prediction{
				Accuracy:      c.Accuracy,
				P95Ms:         roundSig(g.p95Max, 6),
				CostMsPerItem: c.CostMsPerItem,
				Reach:         slices.Clone(c.Reach),
			},
		})
	}

	meta := map[string]any{
		"mode":                 cfg.Mode,
		"grid_points":          cfg.Search.withDefaults().GridPoints,
		"grid_spacing":         cfg.Search.withDefaults().GridSpacing,
		"max_stages":           cfg.Search.MaxStages,
		"cost_batch":           cfg.CostBatch,
		"headroom":             cfg.Headroom,
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
	p.Planner = meta
	return p
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
