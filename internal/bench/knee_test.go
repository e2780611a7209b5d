package bench

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// fakeClock is a clock that only probes advance.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// curve is a queue's p95 against load: base / (1 − load/capacity), infinite
// at and above capacity.
func curve(base, capacity float64) func(float64) float64 {
	return func(load float64) float64 {
		if load >= capacity {
			return math.Inf(1)
		}
		return base / (1 - load/capacity)
	}
}

// kneeOf is the load where the curve's p95 reaches slo.
func kneeOf(base, capacity, slo float64) float64 { return capacity * (1 - base/slo) }

func TestSearchKnee(t *testing.T) {
	const slo = 50.0
	type tc struct {
		name   string
		s      KneeSearch
		p95    func(load float64) float64
		knee   float64 // the true knee, for the bracket checks
		noisy  float64 // probability that a probe's verdict is flipped
		probe  time.Duration
		stop   string // "": any
		checks func(t *testing.T, r KneeResult)
	}
	tests := []tc{
		{name: "knee near the plan", s: KneeSearch{Start: 1000}, p95: curve(5, 1100), knee: kneeOf(5, 1100, slo),
			probe: 8 * time.Second, stop: KneeResolved},
		{name: "knee 3x the plan: the search goes above", s: KneeSearch{Start: 1000}, p95: curve(5, 3000/(1-0.1)), knee: 3000,
			probe: 8 * time.Second, stop: KneeResolved,
			checks: func(t *testing.T, r KneeResult) {
				if r.Probes[1].Load != 1500 || r.Probes[2].Load != 2250 || r.Probes[3].Load != 3375 {
					t.Errorf("probes %+v, want steps of ×1.5 from 1000", r.Probes)
				}
			}},
		{name: "knee below the plan: the search goes down", s: KneeSearch{Start: 1000}, p95: curve(5, 400), knee: kneeOf(5, 400, slo),
			probe: 8 * time.Second, stop: KneeResolved,
			checks: func(t *testing.T, r KneeResult) {
				if r.Probes[0].OK || r.Probes[1].Load != 1000/1.5 {
					t.Errorf("probes %+v, want a miss at 1000 then a step down", r.Probes)
				}
			}},
		{name: "steep curve, knee just above the start", s: KneeSearch{Start: 1000, Resolution: 0.02}, p95: curve(49, 1.1e6), knee: kneeOf(49, 1.1e6, slo),
			probe: time.Second, stop: KneeResolved},
		{name: "budget exhausted while climbing", s: KneeSearch{Start: 100, Budget: 30 * time.Second}, p95: curve(5, 1e6),
			probe: 7 * time.Second, stop: KneeBudget,
			checks: func(t *testing.T, r KneeResult) {
				// 7s probes in 30s: 4 fit (28s), the 5th would not.
				if len(r.Probes) != 4 || r.Miss != 0 || r.Knee != 100*1.5*1.5*1.5 || r.Seconds != 28 {
					t.Errorf("result %+v, want 4 passed probes in 28s and no miss", r)
				}
			}},
		{name: "budget exhausted while bisecting", s: KneeSearch{Start: 1000, Budget: 40 * time.Second}, p95: curve(5, 3000/(1-0.1)), knee: 3000,
			probe: 8 * time.Second, stop: KneeBudget,
			checks: func(t *testing.T, r KneeResult) {
				if len(r.Probes) != 5 || !(r.Knee > 0) || !(r.Miss > r.Knee) {
					t.Errorf("result %+v, want 5 probes bracketing the knee", r)
				}
			}},
		{name: "probes longer than expected count against the budget", s: KneeSearch{Start: 1000, Budget: 60 * time.Second, ProbeTime: time.Second},
			p95: curve(5, 1e9), probe: 25 * time.Second, stop: KneeBudget,
			checks: func(t *testing.T, r KneeResult) {
				if len(r.Probes) != 2 {
					t.Errorf("%d probes of 25s in a 60s budget, want 2", len(r.Probes))
				}
			}},
		{name: "first probe runs whatever the budget", s: KneeSearch{Start: 1000, Budget: time.Second}, p95: curve(5, 1e9),
			probe: 5 * time.Second, stop: KneeBudget,
			checks: func(t *testing.T, r KneeResult) {
				if len(r.Probes) != 1 || r.Knee != 1000 {
					t.Errorf("result %+v", r)
				}
			}},
		{name: "never within the SLO", s: KneeSearch{Start: 1000, Budget: time.Hour}, p95: func(float64) float64 { return 100 },
			probe: time.Second, stop: KneeMinLoad,
			checks: func(t *testing.T, r KneeResult) {
				if r.Knee != 0 || r.Miss != r.Probes[len(r.Probes)-1].Load || len(r.Probes) != 9 {
					t.Errorf("result %+v, want 9 misses down to Start/1.5^8", r)
				}
			}},
		{name: "always within the SLO", s: KneeSearch{Start: 1000, Budget: time.Hour}, p95: func(float64) float64 { return 1 },
			probe: time.Second, stop: KneeMaxLoad,
			checks: func(t *testing.T, r KneeResult) {
				if r.Miss != 0 || math.Abs(r.Knee-1000*math.Pow(1.5, 10)) > 1e-6 || len(r.Probes) != 11 {
					t.Errorf("result %+v, want 11 passes up to Start×1.5^10", r)
				}
			}},
		{name: "max probes", s: KneeSearch{Start: 1000, Budget: time.Hour, MaxProbes: 3}, p95: curve(5, 1e9),
			probe: time.Second, stop: KneeMaxProbes},
	}
	// Noisy, non-monotone probes: each verdict flipped at random. The
	// search stays bounded and consistent whatever the noise says.
	for seed := range uint64(20) {
		tests = append(tests, tc{name: "noisy", s: KneeSearch{Start: 1000}, p95: curve(5, 3000), noisy: 0.3 + 0.02*float64(seed),
			probe: 7 * time.Second})
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(0, 0)}
			s := tt.s
			s.Now = clock.now
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			var loads []float64
			r, err := SearchKnee(context.Background(), s, func(_ context.Context, load float64) (KneeProbe, error) {
				loads = append(loads, load)
				clock.t = clock.t.Add(tt.probe)
				p95 := tt.p95(load)
				ok := p95 <= slo
				if tt.noisy > 0 && rng.Float64() < tt.noisy {
					ok = !ok
				}
				return KneeProbe{OK: ok, P95Ms: p95}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if tt.stop != "" && r.Stopped != tt.stop {
				t.Errorf("stopped: %s, want %s (result %+v)", r.Stopped, tt.stop, r)
			}
			// Bounded: the budget (90s by default) plus at most the first
			// probe, and never more than MaxProbes.
			budget := s.Budget
			if budget == 0 {
				budget = 90 * time.Second
			}
			if r.Seconds > max(budget, tt.probe).Seconds() || len(r.Probes) > 30 || len(loads) != len(r.Probes) {
				t.Errorf("%d probes in %vs (budget %v): %+v", len(r.Probes), r.Seconds, budget, r.Probes)
			}
			// Consistent: Knee is the highest passed load below Miss, Miss
			// the lowest missed load above Knee, and no load is probed twice.
			seen := map[float64]bool{}
			for _, p := range r.Probes {
				if seen[p.Load] {
					t.Errorf("load %v probed twice: %+v", p.Load, r.Probes)
				}
				seen[p.Load] = true
				if p.OK && p.Load > r.Knee && (r.Miss == 0 || p.Load < r.Miss) {
					t.Errorf("passed load %v above the knee %v below the miss %v", p.Load, r.Knee, r.Miss)
				}
				if !p.OK && p.Load < r.Miss && p.Load > r.Knee {
					t.Errorf("missed load %v between knee %v and miss %v", p.Load, r.Knee, r.Miss)
				}
			}
			if r.Knee > 0 && !passed(r, r.Knee) || r.Miss > 0 && passed(r, r.Miss) || r.Miss > 0 && r.Miss <= r.Knee {
				t.Errorf("knee %v, miss %v inconsistent with probes %+v", r.Knee, r.Miss, r.Probes)
			}
			if r.Resolved() {
				if r.Miss > r.Knee*1.05*(1+1e-12) {
					t.Errorf("resolved bracket [%v, %v) wider than 5%%", r.Knee, r.Miss)
				}
				if tt.noisy == 0 && tt.knee > 0 && (tt.knee < r.Knee || tt.knee >= r.Miss) {
					t.Errorf("true knee %v outside the bracket [%v, %v)", tt.knee, r.Knee, r.Miss)
				}
			}
			if tt.checks != nil {
				tt.checks(t, r)
			}
		})
	}
}

func passed(r KneeResult, load float64) bool {
	for _, p := range r.Probes {
		if p.Load == load {
			return p.OK
		}
	}
	return false
}

func TestSearchKneeErrors(t *testing.T) {
	if _, err := SearchKnee(context.Background(), KneeSearch{}, nil); err == nil {
		t.Error("no start load: want an error")
	}
	boom := errors.New("boom")
	n := 0
	r, err := SearchKnee(context.Background(), KneeSearch{Start: 10}, func(context.Context, float64) (KneeProbe, error) {
		if n++; n == 3 {
			return KneeProbe{}, boom
		}
		return KneeProbe{OK: true}, nil
	})
	if !errors.Is(err, boom) || len(r.Probes) != 2 {
		t.Errorf("got %v with %d probes, want the probe's error after 2", err, len(r.Probes))
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err = SearchKnee(ctx, KneeSearch{Start: 10}, func(context.Context, float64) (KneeProbe, error) {
		cancel()
		return KneeProbe{OK: true}, nil
	})
	if !errors.Is(err, context.Canceled) || len(r.Probes) != 1 {
		t.Errorf("got %v with %d probes, want the context's error after 1", err, len(r.Probes))
	}
}

func TestKneeVerdict(t *testing.T) {
	tests := []struct {
		r    KneeResult
		want string
	}{
		{KneeResult{Knee: 1000, Miss: 1040, Stopped: KneeResolved}, KneePass},
		{KneeResult{Knee: 1140, Miss: 1190, Stopped: KneeResolved}, KneePass},
		{KneeResult{Knee: 1160, Miss: 1200, Stopped: KneeResolved}, KneeMiss},
		{KneeResult{Knee: 800, Miss: 840, Stopped: KneeResolved}, KneeMiss},
		{KneeResult{Knee: 3000, Stopped: KneeBudget}, KneeMiss},            // a lower bound already too high
		{KneeResult{Knee: 1000, Stopped: KneeBudget}, KneeUnresolved},      // could be anything above
		{KneeResult{Knee: 900, Miss: 1100, Stopped: KneeBudget}, KneePass}, // the whole bracket within ±15%
		{KneeResult{Knee: 900, Miss: 1300, Stopped: KneeBudget}, KneeUnresolved},
		{KneeResult{Knee: 500, Miss: 800, Stopped: KneeBudget}, KneeMiss},
		{KneeResult{Miss: 2000, Stopped: KneeBudget}, KneeUnresolved},
		{KneeResult{Miss: 100, Stopped: KneeMinLoad}, KneeMiss},
	}
	for _, tt := range tests {
		if got := kneeVerdict(tt.r, 1000, 0.15); got != tt.want {
			t.Errorf("verdict of %+v against 1000 ± 15%%: %s, want %s", tt.r, got, tt.want)
		}
	}
}

func TestProbeVerdict(t *testing.T) {
	tests := []struct {
		run  LoadRun
		ok   bool
		want string
	}{
		{LoadRun{Sent: 10000, Answered: 10000, P95Ms: 49}, true, ""},
		{LoadRun{Sent: 10000, Answered: 9990, Errors: map[string]int{"overloaded": 10}, P95Ms: 10}, true, ""},
		{LoadRun{Sent: 10000, Answered: 9989, Errors: map[string]int{"overloaded": 11}, P95Ms: 10}, false, "errors 0.11% > 0.10%"},
		{LoadRun{Sent: 10000, Answered: 9999, Lost: 1, P95Ms: 10}, false, "1 lost"},
		{LoadRun{Sent: 10000, Answered: 10000, P95Ms: 51}, false, "p95 51.0 ms > 50 ms"},
		{LoadRun{Aborted: true}, false, "overloaded, cut short"},
		{LoadRun{}, false, "nothing answered"},
	}
	for _, tt := range tests {
		p := probeVerdict(tt.run, 50, 0.001)
		if p.OK != tt.ok || p.Reason != tt.want || p.P95Ms != tt.run.P95Ms {
			t.Errorf("probe of %+v: %+v, want ok %v, reason %q", tt.run, p, tt.ok, tt.want)
		}
	}
}
