package simulate

import (
	"fmt"
	"math"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// GearOptions tune a simulation made from a plan's gear.
type GearOptions struct {
	// Requests per simulation (default DefaultRequests(qps)) and Seed
	// (default 1), as in Config.
	Requests int
	Seed     uint64
	// RunnerScale multiplies every model's runner count (default 1):
	// simulating k× the load on k× the runners shows how a plan scales out.
	RunnerScale float64
	// MaxQueue bounds every stream (0: unbounded).
	MaxQueue int
	// WarmupFraction as in Config.
	WarmupFraction float64
}

// GearConfig builds the simulation of gear i of plan p at the given load: the
// gear's cascade, batching and runners, the plan's profiles and hop
// overhead, and escalations drawn from the gear's predicted reach (which the
// planner took from the validation replay).
func GearConfig(p *plan.Plan, i int, qps float64, opts GearOptions) (Config, error) {
	if i < 0 || i >= len(p.Gears) {
		return Config{}, fmt.Errorf("%w: gear %d of %d", ErrBadConfig, i, len(p.Gears))
	}
	g := p.Gears[i]
	if len(g.Predicted.Reach) != len(g.Cascade) {
		return Config{}, fmt.Errorf("%w: gear %q predicts reach for %d of %d stages", ErrBadConfig, g.ID, len(g.Predicted.Reach), len(g.Cascade))
	}
	if opts.RunnerScale == 0 {
		opts.RunnerScale = 1
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	if opts.Requests == 0 {
		opts.Requests = DefaultRequests(qps)
	}
	sc := Config{
		QPS:            qps,
		Requests:       opts.Requests,
		Seed:           opts.Seed,
		Overheads:      p.Overheads,
		SharedRunners:  p.SharedRunners(),
		WarmupFraction: opts.WarmupFraction,
	}
	for j, s := range g.Cascade {
		m, ok := p.Model(s.Model)
		if !ok {
			return Config{}, fmt.Errorf("%w: gear %q uses unknown model %q", ErrBadConfig, g.ID, s.Model)
		}
		batch := g.Batching.MaxBatch
		if s.MaxBatch > 0 {
			batch = s.MaxBatch
		}
		sc.Stages = append(sc.Stages, Stage{
			Model:      s.Model,
			Profile:    m.Profile,
			Runners:    max(1, int(math.Round(g.Runners[s.Model]*float64(p.Capacity)*opts.RunnerScale))),
			MaxBatch:   batch,
			MaxDelayMs: g.Batching.MaxDelayMs,
			MaxQueue:   opts.MaxQueue,
		})
		answered := g.Predicted.Reach[j]
		if j+1 < len(g.Cascade) {
			answered -= g.Predicted.Reach[j+1]
		}
		sc.AnsweredBy = append(sc.AnsweredBy, max(answered, 0))
	}
	return sc, nil
}

// Gear simulates gear i of plan p at the given load.
func Gear(p *plan.Plan, i int, qps float64, opts GearOptions) (Result, error) {
	sc, err := GearConfig(p, i, qps, opts)
	if err != nil {
		return Result{}, err
	}
	return Run(sc)
}

// MaxRequests bounds DefaultRequests and the requests of each of the
// planner's simulations.
const MaxRequests = 50_000

// DefaultRequests is the number of requests the planner simulates at a
// load with its default settings: 3000, or half a second of arrivals, at
// most MaxRequests.
func DefaultRequests(qps float64) int {
	return max(3000, min(int(qps*0.5), MaxRequests))
}

// PredictP95 returns the simulator's p95 latency in ms for gear i of plan p
// at the given load, with the planner's default simulation settings: what
// the "predictions vs reality" check compares measurements with.
func PredictP95(p *plan.Plan, i int, qps float64) (float64, error) {
	r, err := Gear(p, i, qps, GearOptions{})
	if err != nil {
		return 0, err
	}
	return r.P95Ms, nil
}
