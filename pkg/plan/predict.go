package plan

import (
	"fmt"
	"math"
)

// RunnerCount returns how many runners of the plan's capacity a model gets
// in the gear: its share × capacity, rounded, at least 1 for a model of the
// cascade and 0 for any other.
func (g Gear) RunnerCount(model string, capacity int) int {
	if _, ok := g.StageOf(model); !ok {
		return 0
	}
	return max(1, int(math.Round(g.Runners[model]*float64(capacity))))
}

// GearSimOptions tune a simulation made from a plan's gear.
type GearSimOptions struct {
	// Requests per simulation (default DefaultSimRequests(qps)) and Seed
	// (default 1), as in SimConfig.
	Requests int
	Seed     uint64
	// RunnerScale multiplies every model's runner count (default 1):
	// simulating k× the load on k× the runners shows how a plan scales out.
	RunnerScale float64
	// MaxQueue bounds every stream (0: unbounded).
	MaxQueue int
	// WarmupFraction as in SimConfig.
	WarmupFraction float64
}

// GearSimConfig builds the simulation of gear i at the given load: the
// gear's cascade, batching and runners, the plan's profiles and hop
// overhead, and escalations drawn from the gear's predicted reach (which the
// planner took from the validation replay).
func (p *Plan) GearSimConfig(i int, qps float64, opts GearSimOptions) (SimConfig, error) {
	if i < 0 || i >= len(p.Gears) {
		return SimConfig{}, fmt.Errorf("%w: gear %d of %d", ErrBadSimulation, i, len(p.Gears))
	}
	g := p.Gears[i]
	if len(g.Predicted.Reach) != len(g.Cascade) {
		return SimConfig{}, fmt.Errorf("%w: gear %q predicts reach for %d of %d stages", ErrBadSimulation, g.ID, len(g.Predicted.Reach), len(g.Cascade))
	}
	if opts.RunnerScale == 0 {
		opts.RunnerScale = 1
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	if opts.Requests == 0 {
		opts.Requests = DefaultSimRequests(qps)
	}
	sc := SimConfig{
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
			return SimConfig{}, fmt.Errorf("%w: gear %q uses unknown model %q", ErrBadSimulation, g.ID, s.Model)
		}
		batch := g.Batching.MaxBatch
		if s.MaxBatch > 0 {
			batch = s.MaxBatch
		}
		sc.Stages = append(sc.Stages, SimStage{
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

// SimulateGear simulates gear i of the plan at the given load.
func (p *Plan) SimulateGear(i int, qps float64, opts GearSimOptions) (SimResult, error) {
	sc, err := p.GearSimConfig(i, qps, opts)
	if err != nil {
		return SimResult{}, err
	}
	return Simulate(sc)
}

// DefaultSimRequests is the number of requests the planner simulates at a
// load with its default settings: 3000, or half a second of arrivals, at
// most 50000.
func DefaultSimRequests(qps float64) int {
	return max(3000, min(int(qps*0.5), maxSimRequests))
}

// PredictP95 returns the simulator's p95 latency in ms for gear i at the
// given load, with the planner's default simulation settings: what the
// "predictions vs reality" check compares measurements with.
func (p *Plan) PredictP95(i int, qps float64) (float64, error) {
	r, err := p.SimulateGear(i, qps, GearSimOptions{})
	if err != nil {
		return 0, err
	}
	return r.P95Ms, nil
}
