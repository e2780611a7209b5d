package planner

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
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
	// Holdout, when set, has every ladder model's probabilities on items
	// the planner does not choose on (the MNIST test set): each gear's
	// predicted accuracy is then its accuracy there, and its accuracy on
	// Replay is kept as Prediction.ValidationAccuracy. Thresholds chosen on
	// Replay fit Replay's items best, and Replay may be drawn unlike the
	// traffic (MNIST's validation split is 0.4–1.6 points easier than its
	// test set for the cheap models); a held-out estimate is what the
	// served accuracy should be held to.
	Holdout *plan.Replay
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
	// CPUHeadroom, when > 0, replaces Headroom in the second check: the
	// highest share of the cores that the overhead curve and the models'
	// compute may keep busy together. The overhead curve (Overheads.CPULoad)
	// is measured up to the loads where the live p95 leaves the SLO, so it
	// already holds the CPU that queueing near saturation costs; a gear
	// bound by it alone (a cheap cascade) reaches its knee where that sum
	// nears 1, while Headroom keeps its margin for the runners'
	// utilisation, which binds the gears of a costly model.
	CPUHeadroom float64
	// LatencySlack is the share of a gear's load range that its batching
	// may give up for a lower latency (default 0.1; negative: none): of the
	// batchings that fit, those that fit up to (1 − LatencySlack) of the
	// widest one's top load compete on p95 at the gear's lowest load, so a
	// long max delay that buys a few percent of capacity does not cost
	// every load below it its wait. The top of the range gets a gear of
	// its own, the same cascade with the longer delay.
	LatencySlack float64
	// StageBatchShare caps each stage's max batch (plan.Stage.MaxBatch) at
	// the largest batch, halving from the gear's, whose profiled compute
	// takes at most this share of the SLO (0: no cap; at least batch 1).
	// A costly last model in batches of the gear's size holds one runner
	// for longer than the SLO (the MNIST ladder's resnet: ~156 ms for 64
	// items on one thread), so the few items that reach it wait that long
	// and every other model's queue loses that runner meanwhile; in
	// smaller batches its per-item cost barely rises.
	StageBatchShare float64
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

func (cfg *Config) defaults() {
	cfg.Mode = cmp.Or(cfg.Mode, ModeMaxAccuracy)
	cfg.MaxAccuracyGap = cmp.Or(cfg.MaxAccuracyGap, DefaultMaxAccuracyGap)
	cfg.RunnerPool = cmp.Or(cfg.RunnerPool, plan.RunnerPoolShared)
	cfg.Metric = cmp.Or(cfg.Metric, plan.MetricMargin)
	cfg.CostBatch = cmp.Or(cfg.CostBatch, 8)
	cfg.Headroom = cmp.Or(cfg.Headroom, 0.8)
	cfg.LatencySlack = cmp.Or(cfg.LatencySlack, 0.1)
	if len(cfg.BatchSizes) == 0 {
		cfg.BatchSizes = []int{1, 2, 4, 8, 16, 32, 64, 128}
	}
	if len(cfg.DelaysMs) == 0 && cfg.SLOP95Ms > 0 {
		for _, f := range []float64{0, 0.02, 0.05, 0.1, 0.2} {
			cfg.DelaysMs = append(cfg.DelaysMs, roundSig(f*cfg.SLOP95Ms, 3))
		}
	}
	cfg.SimRequests = cmp.Or(cfg.SimRequests, 3000)
	cfg.SimSeconds = cmp.Or(cfg.SimSeconds, 0.5)
	cfg.Seed = cmp.Or(cfg.Seed, 1)
	if cfg.Hysteresis == (plan.Hysteresis{}) {
		cfg.Hysteresis = plan.DefaultHysteresis()
	}
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = runtime.GOMAXPROCS(0)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Input.Datatype = cmp.Or(cfg.Input.Datatype, "FP32")
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
	var ps problems
	cfg.checkInputs(&ps)
	cfg.checkSettings(&ps)
	cfg.checkGrids(&ps)
	cfg.checkLadder(&ps)
	return errors.Join(ps...)
}

// problems collects what validate finds, in order.
type problems []error

// add records a configuration problem, wrapped in ErrConfig.
func (ps *problems) add(format string, args ...any) {
	*ps = append(*ps, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
}

// checkInputs checks the replay and the profile.
func (cfg *Config) checkInputs(ps *problems) {
	if cfg.Replay == nil {
		*ps = append(*ps, fmt.Errorf("%w: no replay", plan.ErrBadReplay))
	} else if err := cfg.Replay.Validate(); err != nil {
		*ps = append(*ps, err)
	}
	if cfg.Holdout != nil {
		if err := cfg.Holdout.Validate(); err != nil {
			*ps = append(*ps, fmt.Errorf("holdout replay: %w", err))
		} else if cfg.Replay != nil && cfg.Holdout.Classes != cfg.Replay.Classes {
			*ps = append(*ps, fmt.Errorf("%w: the holdout replay has %d classes, the replay %d", plan.ErrBadReplay, cfg.Holdout.Classes, cfg.Replay.Classes))
		}
	}
	if cfg.Profile == nil {
		*ps = append(*ps, fmt.Errorf("%w: no profile", plan.ErrBadProfile))
	} else if err := cfg.Profile.Validate(); err != nil {
		*ps = append(*ps, err)
	}
}

// checkSettings checks what goes into the plan and the mode.
func (cfg *Config) checkSettings(ps *problems) {
	if !wire.ValidName(cfg.Pipeline) {
		ps.add("pipeline %q must be 1-32 characters of a-z, 0-9, '-' or '_'", cfg.Pipeline)
	}
	if !(cfg.SLOP95Ms > 0) || math.IsInf(cfg.SLOP95Ms, 0) {
		ps.add("slo p95 must be > 0 ms, got %v", cfg.SLOP95Ms)
	}
	if !slices.Contains(plan.RunnerPools(), cfg.RunnerPool) {
		ps.add("runner pool %q is not one of %v", cfg.RunnerPool, plan.RunnerPools())
	}
	if cfg.Capacity < 1 {
		ps.add("capacity must be >= 1 runner, got %d", cfg.Capacity)
	}
	if _, err := cfg.Load.Edges(); err != nil {
		*ps = append(*ps, err)
	}
	switch cfg.Mode {
	case ModeMaxAccuracy:
	case ModeMinCost:
		if !(cfg.TargetAccuracy > 0 && cfg.TargetAccuracy <= 1) {
			ps.add("mode %s needs a target accuracy in (0,1], got %v", ModeMinCost, cfg.TargetAccuracy)
		}
	default:
		ps.add("mode %q is not %q or %q", cfg.Mode, ModeMaxAccuracy, ModeMinCost)
	}
	if !slices.Contains(plan.Metrics(), cfg.Metric) {
		ps.add("confidence metric %q is not one of %v", cfg.Metric, plan.Metrics())
	}
}

// checkGrids checks the batching grid and the simulations' settings.
func (cfg *Config) checkGrids(ps *problems) {
	if cfg.CostBatch < 1 {
		ps.add("cost batch must be >= 1, got %d", cfg.CostBatch)
	}
	if !(cfg.StageBatchShare >= 0 && cfg.StageBatchShare <= 1) {
		ps.add("stage batch share must be in [0,1] (0: no cap), got %v", cfg.StageBatchShare)
	}
	if !(cfg.Headroom > 0 && cfg.Headroom <= 1) {
		ps.add("headroom must be in (0,1], got %v", cfg.Headroom)
	}
	if !(cfg.CPUHeadroom >= 0 && cfg.CPUHeadroom <= 1) {
		ps.add("cpu headroom must be in [0,1] (0: the headroom), got %v", cfg.CPUHeadroom)
	}
	for _, b := range cfg.BatchSizes {
		if b < 1 || b > 4096 {
			ps.add("batch size %d outside [1,4096]", b)
		}
	}
	for _, d := range cfg.DelaysMs {
		if d < 0 || d > 60000 || math.IsNaN(d) {
			ps.add("max delay %vms outside [0,60000]", d)
		}
	}
	if cfg.SimRequests < 100 {
		ps.add("sim requests must be >= 100, got %d", cfg.SimRequests)
	}
	if cfg.MaxQueue < 0 {
		ps.add("max queue must be >= 0")
	}
}

// checkLadder checks the input shape and the ladder against the replay and
// the profile.
func (cfg *Config) checkLadder(ps *problems) {
	if len(cfg.Input.Shape) == 0 {
		ps.add("input shape is empty")
	}
	if len(cfg.Ladder) == 0 {
		ps.add("ladder is empty")
	}
	seen := map[string]bool{}
	for _, m := range cfg.Ladder {
		if !wire.ValidName(m.Name) {
			ps.add("model name %q must be 1-32 characters of a-z, 0-9, '-' or '_'", m.Name)
		}
		if seen[m.Name] {
			ps.add("ladder lists %q twice", m.Name)
		}
		seen[m.Name] = true
		if cfg.Replay != nil {
			if _, ok := cfg.Replay.Probs[m.Name]; !ok {
				*ps = append(*ps, fmt.Errorf("%w: model %q not in replay (have %v)", plan.ErrBadReplay, m.Name, cfg.Replay.Models))
			}
		}
		if cfg.Profile != nil {
			if _, ok := cfg.Profile.Models[m.Name]; !ok {
				*ps = append(*ps, fmt.Errorf("%w: %q (profiled: %v)", ErrModelNotProfiled, m.Name, slices.Sorted(maps.Keys(cfg.Profile.Models))))
			}
		}
	}
}

// itemCost is the runner time per item of a model in batches of b: its
// share of the batch latency and of the per-batch messaging overhead, plus
// the per-item messaging overhead.
func (cfg *Config) itemCost(model string, b int) float64 {
	b = max(b, 1)
	return cfg.computeCost(model, b) + cfg.Profile.ItemOverheadMs + cfg.Profile.BatchOverheadMs/float64(b)
}

// stageBatch is the max batch of model in a gear whose max batch is b:
// b halved until the model's profiled batch latency is within
// StageBatchShare of the SLO (b itself without a cap).
func (cfg *Config) stageBatch(model string, b int) int {
	if cfg.StageBatchShare <= 0 {
		return b
	}
	limit := cfg.StageBatchShare * cfg.SLOP95Ms
	prof := cfg.Profile.Models[model]
	for b > 1 && prof.LatencyMs(b) > limit {
		b /= 2
	}
	return max(b, 1)
}

// computeCost is the CPU time per item of a model's own compute in batches
// of b: its share of the batch latency, without the messaging overheads.
func (cfg *Config) computeCost(model string, b int) float64 {
	return cfg.Profile.Models[model].ItemCostMs(max(b, 1))
}

// requestShare is the share of the capacity's cores that the profile's
// per-request overhead takes at load q (see simulate.Config.RequestOverheadMs).
func (cfg *Config) requestShare(q float64) float64 {
	return cfg.Profile.OverheadCPUMsPerS(q) / 1000 / float64(cfg.Capacity)
}
