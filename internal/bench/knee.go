package bench

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Probing is how a capacity search probes: each probe is open-loop
// Poisson at its load for Warmup (discarded; < 0: none), then Duration
// measured, and it passes with at most MaxErrorRate of its items answered
// with a typed error (none may be lost). Budget bounds one search; Factor
// and Resolution are its step and resolution (see KneeSearch). The
// configurations that embed it give the defaults of its zero values.
type Probing struct {
	Warmup       time.Duration
	Duration     time.Duration
	Budget       time.Duration
	Factor       float64
	Resolution   float64
	MaxErrorRate float64
	// Retries is how often a probe that misses without being cut short
	// (overloaded) is run again at the same load; the load passes if one
	// run does (default 0). A slow spell of the machine then spoils one run
	// of a probe, not the knee, as profile's rounds keep one from spoiling
	// the plan's costs.
	Retries int
}

// defaults sets p's zero values to def's (MaxErrorRate: 0.001).
func (p *Probing) defaults(def Probing) {
	p.Warmup = warmupOr(p.Warmup, def.Warmup)
	orDefault(&p.Duration, def.Duration)
	orDefault(&p.Budget, def.Budget)
	if !(p.Factor > 1) {
		p.Factor = def.Factor
	}
	orDefault(&p.Resolution, def.Resolution)
	orDefault(&p.MaxErrorRate, 0.001)
}

// KneeSearch configures SearchKnee: the search for the highest load a
// system serves within its objective, by probes at chosen loads. Zero
// values take the defaults in the comments.
type KneeSearch struct {
	// Start is the first load probed (required, > 0): the planned capacity
	// or a guess.
	Start float64
	// Factor is the geometric step: up from Start while probes pass, down
	// while they miss (default 1.5).
	Factor float64
	// Resolution ends the search once the lowest missed load is within
	// (1 + Resolution) of the highest passed one (default 0.05).
	Resolution float64
	// Budget bounds the search's time (default 90s): a probe starts only
	// if the time spent plus its expected length (ProbeTime, or the mean
	// of the probes so far when longer) fits. The first probe always runs.
	Budget    time.Duration
	ProbeTime time.Duration
	// MaxProbes bounds the number of probes (default 30). MinLoad is the
	// lowest load probed on the way down (default Start / Factor^8);
	// MaxLoad the highest on the way up (default Start × Factor^10).
	MaxProbes int
	MinLoad   float64
	MaxLoad   float64
	// Now is the clock (default time.Now); tests drive a fake one.
	Now func() time.Time
}

// KneeProbe is one probe's outcome: whether the load was served within the
// objective, the p95 seen, and why it missed.
type KneeProbe struct {
	Load   float64 `json:"load"`
	OK     bool    `json:"ok"`
	P95Ms  float64 `json:"p95_ms"`
	Reason string  `json:"reason,omitempty"`
	// Seconds is how long the probe took.
	Seconds float64 `json:"seconds"`
}

// Why a knee search stopped.
const (
	KneeResolved  = "resolved"   // passed and missed loads within the resolution
	KneeBudget    = "budget"     // the next probe would not fit the budget
	KneeMaxProbes = "max probes" // MaxProbes probes made
	KneeMaxLoad   = "max load"   // every probe up to MaxLoad passed
	KneeMinLoad   = "min load"   // every probe down to MinLoad missed
)

// KneeResult is what a knee search found.
type KneeResult struct {
	// Knee is the highest load that passed (0: none did); Miss the lowest
	// load above it that missed (0: none did, the knee is only a lower
	// bound).
	Knee float64 `json:"knee"`
	Miss float64 `json:"miss,omitempty"`
	// Stopped says why the search ended (KneeResolved, ...).
	Stopped string      `json:"stopped"`
	Probes  []KneeProbe `json:"probes"`
	Seconds float64     `json:"seconds"`
}

// Resolved reports whether the knee is bracketed within the resolution.
func (r KneeResult) Resolved() bool { return r.Stopped == KneeResolved }

// SearchKnee finds the highest load at which probe passes. It probes Start,
// then steps geometrically by Factor — up while probes pass, down while
// they miss — until a passed and a missed load bracket the knee, then
// bisects the bracket (geometric midpoint) until it is within Resolution.
// Probes are never repeated and every probe after the bracket lies inside
// it, so a noisy, non-monotone probe cannot make the search wander: the
// result's Knee is always a load that passed, its Miss one that missed.
// The search is bounded by Budget, MaxProbes and the load limits; an error
// from probe (or ctx) ends it with that error and the probes so far.
func SearchKnee(ctx context.Context, s KneeSearch, probe func(ctx context.Context, load float64) (KneeProbe, error)) (KneeResult, error) {
	if !(s.Start > 0) || math.IsInf(s.Start, 0) {
		return KneeResult{}, fmt.Errorf("knee search: start load %v must be positive", s.Start)
	}
	if !(s.Factor > 1) {
		s.Factor = 1.5
	}
	orDefault(&s.Resolution, 0.05)
	orDefault(&s.Budget, 90*time.Second)
	orDefault(&s.MaxProbes, 30)
	orDefault(&s.MinLoad, s.Start/math.Pow(s.Factor, 8))
	orDefault(&s.MaxLoad, s.Start*math.Pow(s.Factor, 10))
	if s.Now == nil {
		s.Now = time.Now
	}
	start := s.Now()
	var res KneeResult
	done := func(why string) (KneeResult, error) {
		res.Stopped = why
		res.Seconds = s.Now().Sub(start).Seconds()
		return res, nil
	}
	load := s.Start
	for {
		if len(res.Probes) >= s.MaxProbes {
			return done(KneeMaxProbes)
		}
		if n := len(res.Probes); n > 0 {
			spent := s.Now().Sub(start)
			expect := max(s.ProbeTime, spent/time.Duration(n))
			if spent+expect > s.Budget {
				return done(KneeBudget)
			}
		}
		if err := ctx.Err(); err != nil {
			res.Seconds = s.Now().Sub(start).Seconds()
			return res, err
		}
		t0 := s.Now()
		p, err := probe(ctx, load)
		p.Load = load
		p.Seconds = s.Now().Sub(t0).Seconds()
		if err != nil {
			res.Seconds = s.Now().Sub(start).Seconds()
			return res, err
		}
		res.Probes = append(res.Probes, p)
		if p.OK {
			res.Knee = load
		} else {
			res.Miss = load
		}
		switch {
		case res.Knee > 0 && res.Miss > 0:
			// Bracketed: Knee < Miss holds, every probe since the bracket
			// being inside it.
			if res.Miss <= res.Knee*(1+s.Resolution) {
				return done(KneeResolved)
			}
			load = math.Sqrt(res.Knee * res.Miss)
		case res.Knee > 0:
			if load >= s.MaxLoad*(1-1e-9) {
				return done(KneeMaxLoad)
			}
			load = min(load*s.Factor, s.MaxLoad)
		default:
			if load <= s.MinLoad*(1+1e-9) {
				return done(KneeMinLoad)
			}
			load = max(load/s.Factor, s.MinLoad)
		}
	}
}
