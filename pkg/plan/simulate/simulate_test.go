package simulate

import (
	"errors"
	"math"
	"reflect"
	"slices"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

func oneStage(qps float64, prof plan.Profile, runners, batch int, delay float64) Config {
	return Config{
		QPS:        qps,
		Seed:       7,
		Overheads:  plan.Overheads{HopOverheadMs: 0.25},
		Stages:     []Stage{{Model: "m", Profile: prof, Runners: runners, MaxBatch: batch, MaxDelayMs: delay}},
		AnsweredBy: []float64{1},
	}
}

func mustRun(t *testing.T, cfg Config) Result {
	t.Helper()
	r, err := Run(cfg)
	if err != nil {
		t.Fatalf("Simulate: %v", err)
	}
	return r
}

func TestSimulateTinyLoad(t *testing.T) {
	prof := plantest.LinearProfile(1, 0.5) // 1.5 ms at batch 1
	base := prof.LatencyMs(1) + 2*0.25
	// Batch of one: no queueing at 1 qps, every request takes exactly the
	// service time plus two hops.
	r := mustRun(t, oneStage(1, prof, 1, 1, 0))
	if math.Abs(r.P95Ms-base) > 1e-9 || math.Abs(r.P50Ms-base) > 1e-9 {
		t.Errorf("batch 1: p50 %v p95 %v, want %v", r.P50Ms, r.P95Ms, base)
	}
	// Max batch 8 with a 10 ms delay: a lone item wakes the idle runner,
	// which then waits the whole delay for more, as the stage worker does.
	const delay = 10
	r = mustRun(t, oneStage(1, prof, 1, 8, delay))
	if math.Abs(r.P50Ms-(base+delay)) > 1e-9 || math.Abs(r.P95Ms-(base+delay)) > 1e-9 {
		t.Errorf("batch 8, delay %v: p50 %v p95 %v, want %v", delay, r.P50Ms, r.P95Ms, base+delay)
	}
	if r.Stages[0].MeanBatch > 1.02 {
		t.Errorf("mean batch %v at 1 qps", r.Stages[0].MeanBatch)
	}
	// Messaging overhead is runner time per item.
	cfg := oneStage(1, prof, 1, 1, 0)
	cfg.ItemOverheadMs = 0.7
	r = mustRun(t, cfg)
	if math.Abs(r.P95Ms-(base+0.7)) > 1e-9 {
		t.Errorf("with item overhead: p95 %v, want %v", r.P95Ms, base+0.7)
	}
	// Delay 0 takes what is there: no waiting.
	r = mustRun(t, oneStage(1, prof, 1, 8, 0))
	if math.Abs(r.P95Ms-base) > 1e-9 {
		t.Errorf("batch 8, delay 0: p95 %v, want %v", r.P95Ms, base)
	}
}

func TestSimulateChargesBatchAndRequestOverhead(t *testing.T) {
	prof := plantest.LinearProfile(1, 0.5) // 1.5 ms at batch 1
	const hops = 2 * 0.25
	tests := []struct {
		name           string
		qps            float64
		runners        int
		item, batch, r float64
		want           float64 // exact latency of every request
	}{
		{"none", 1, 1, 0, 0, 0, 1.5 + hops},
		{"per batch", 1, 1, 0, 0.4, 0, 1.5 + 0.4 + hops},
		{"per item and batch", 1, 1, 0.7, 0.4, 0, 1.5 + 0.7 + 0.4 + hops},
		// 1 qps × 500 ms = half of one runner's core: service takes twice
		// as long; hops are not slowed down.
		{"per request, one runner", 1, 1, 0, 0, 500, 2*1.5 + hops},
		// The same overhead over four runners' cores takes an eighth. It
		// stretches the model's compute, not the per-batch messaging wait:
		// the CPU that messaging costs is part of the measured overhead.
		{"per request, four runners", 1, 4, 0, 0.4, 500, 1.5/(1-0.125) + 0.4 + hops},
	}
	// Idle CPU of 250 ms/s takes a quarter of one runner's core on top.
	t.Run("idle CPU", func(t *testing.T) {
		cfg := oneStage(1, prof, 1, 1, 0)
		cfg.Requests = 200
		cfg.RequestOverheadMs, cfg.IdleCPUMsPerS = 250, 250
		r := mustRun(t, cfg)
		if want := 2*1.5 + hops; math.Abs(r.P50Ms-want) > 1e-9 || math.Abs(r.MaxMs-want) > 1e-9 {
			t.Errorf("p50 %v max %v, want %v", r.P50Ms, r.MaxMs, want)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := oneStage(tt.qps, prof, tt.runners, 1, 0)
			cfg.Requests = 200
			cfg.ItemOverheadMs, cfg.BatchOverheadMs, cfg.RequestOverheadMs = tt.item, tt.batch, tt.r
			r := mustRun(t, cfg)
			if math.Abs(r.P50Ms-tt.want) > 1e-9 || math.Abs(r.MaxMs-tt.want) > 1e-9 {
				t.Errorf("p50 %v max %v, want %v", r.P50Ms, r.MaxMs, tt.want)
			}
		})
	}
	// Under load the per-batch overhead makes batching pay: at 3000 qps one
	// runner spends 0.4 ms per fetch, which batches of one cannot afford
	// (1.26 runner-s/s).
	cheap := plantest.LinearProfile(0.01, 0.01)
	cfg := oneStage(3000, cheap, 1, 1, 0)
	cfg.BatchOverheadMs = 0.4
	if r := mustRun(t, cfg); r.P95Ms < 100 {
		t.Errorf("batch 1 with 0.4 ms per batch at 3000 qps: p95 %v, want an overloaded queue", r.P95Ms)
	}
	cfg.Stages[0].MaxBatch = 16
	if r := mustRun(t, cfg); r.P95Ms > 10 || r.Stages[0].MeanBatch < 1.3 {
		t.Errorf("batch 16 with 0.4 ms per batch at 3000 qps: p95 %v, mean batch %v, want it to keep up", r.P95Ms, r.Stages[0].MeanBatch)
	}
}

func TestSimulateMD1(t *testing.T) {
	// One runner, batch 1: an M/D/1 queue. Mean sojourn = s + ρs/(2(1−ρ)).
	const s = 2.0
	prof := plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: s}, {Batch: 2, LatencyMs: 2 * s}}}
	for _, rho := range []float64{0.3, 0.6, 0.8} {
		cfg := oneStage(rho/s*1000, prof, 1, 1, 0)
		cfg.Requests = 40000
		r := mustRun(t, cfg)
		want := s + rho*s/(2*(1-rho)) + 2*cfg.HopOverheadMs
		if math.Abs(r.MeanMs-want)/want > 0.1 {
			t.Errorf("ρ=%v: mean latency %v, M/D/1 predicts %v", rho, r.MeanMs, want)
		}
		if u := r.Stages[0].Utilisation; math.Abs(u-rho) > 0.05 {
			t.Errorf("ρ=%v: utilisation %v", rho, u)
		}
		if math.Abs(r.ThroughputQPS-cfg.QPS)/cfg.QPS > 0.05 {
			t.Errorf("ρ=%v: throughput %v, offered %v", rho, r.ThroughputQPS, cfg.QPS)
		}
	}
}

func TestSimulateDeterministic(t *testing.T) {
	cfg := Config{
		QPS: 800, Seed: 42, Overheads: plan.Overheads{HopOverheadMs: 0.3},
		Stages: []Stage{
			{Model: "a", Profile: plantest.LinearProfile(0.3, 0.05), Runners: 1, MaxBatch: 16, MaxDelayMs: 1},
			{Model: "b", Profile: plantest.LinearProfile(1, 0.5), Runners: 2, MaxBatch: 8, MaxDelayMs: 2},
		},
		AnsweredBy: []float64{0.7, 0.3},
	}
	a, b := mustRun(t, cfg), mustRun(t, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two runs with one seed differ")
	}
	cfg.Seed = 43
	if c := mustRun(t, cfg); reflect.DeepEqual(a, c) {
		t.Error("another seed gave the very same run")
	}
	// Escalations follow the answered-by distribution.
	if a.Stages[0].Items != a.Requests {
		t.Errorf("first stage ran %d items of %d", a.Stages[0].Items, a.Requests)
	}
	if f := float64(a.Stages[1].Items) / float64(a.Requests); math.Abs(f-0.3) > 0.03 {
		t.Errorf("second stage reached by %v, want about 0.3", f)
	}
}

func TestSimulateBatchesUnderLoad(t *testing.T) {
	prof := plantest.LinearProfile(1, 0.1) // batching pays: 1.1 ms for one, 1.8 for 8
	// 1500 qps: 1.65 runner-s/s at batch 1, so one runner needs batches.
	r := mustRun(t, oneStage(1500, prof, 1, 8, 0))
	st := r.Stages[0]
	if st.MeanBatch <= 1.5 || st.MeanBatch > 8 {
		t.Errorf("mean batch %v", st.MeanBatch)
	}
	if r.Dropped != 0 || r.Completed != r.Requests || r.P95Ms > 20 {
		t.Errorf("batching should keep up: %+v", r)
	}
	// Without batching the queue grows without bound.
	r1 := mustRun(t, oneStage(1500, prof, 1, 1, 0))
	if r1.P95Ms < 10*r.P95Ms {
		t.Errorf("batch 1 p95 %v, batch 8 p95 %v: expected an overloaded queue", r1.P95Ms, r.P95Ms)
	}
	// More runners, less waiting.
	r2 := mustRun(t, oneStage(1500, prof, 2, 1, 0))
	if r2.P95Ms >= r1.P95Ms {
		t.Errorf("two runners p95 %v, one runner %v", r2.P95Ms, r1.P95Ms)
	}
}

func TestSimulateFetchWaitsAtMostDelay(t *testing.T) {
	prof := plantest.LinearProfile(0.5, 0.1)
	const delay, batch = 3.0, 4
	bound := prof.LatencyMs(batch) + delay + 2*0.25
	// Enough runners that nothing queues: every item waits at most the
	// delay. Idle runners' pulls are older than any batch being filled, so
	// each item wakes a runner of its own and batches stay single.
	r := mustRun(t, oneStage(300, prof, 16, batch, delay))
	if r.MaxMs > bound+1e-9 {
		t.Errorf("max latency %v above service + delay + hops %v", r.MaxMs, bound)
	}
	if r.Stages[0].MeanWaitMs > delay {
		t.Errorf("mean wait %v > delay %v", r.Stages[0].MeanWaitMs, delay)
	}
	if r.Stages[0].MeanBatch < 1 || r.Stages[0].MeanBatch > 1.05 {
		t.Errorf("16 idle runners at 300/s: mean batch %v, want about 1", r.Stages[0].MeanBatch)
	}
	// One runner fills its batches, up to MaxBatch.
	r = mustRun(t, oneStage(1000, prof, 1, batch, delay))
	if mb := r.Stages[0].MeanBatch; mb <= 2 || mb > batch {
		t.Errorf("one runner at 1000/s: mean batch %v, want in (2, %d]", mb, batch)
	}
}

func TestSimulateSharedRunnersServeEveryStage(t *testing.T) {
	// Two stages, one runner each. Dedicated, the second stage's runner
	// idles while the first stage queues; shared, both runners serve the
	// first stage's load.
	prof := plantest.LinearProfile(1, 0.2)
	cfg := Config{
		QPS: 2500, Seed: 3, Requests: 20000,
		Stages: []Stage{
			{Model: "a", Profile: prof, Runners: 1, MaxBatch: 4, MaxDelayMs: 1},
			{Model: "b", Profile: prof, Runners: 1, MaxBatch: 4, MaxDelayMs: 1},
		},
		AnsweredBy: []float64{0.95, 0.05},
	}
	dedicated := mustRun(t, cfg)
	cfg.SharedRunners = true
	shared := mustRun(t, cfg)
	if shared.P95Ms >= dedicated.P95Ms {
		t.Errorf("shared p95 %v, dedicated %v: sharing should help an unbalanced load", shared.P95Ms, dedicated.P95Ms)
	}
	if !shared.SharedRunners || dedicated.SharedRunners {
		t.Errorf("results do not say how runners were pooled")
	}
	// Shared, a stage's utilisation is its part of the pool: they add up.
	sum := shared.Stages[0].Utilisation + shared.Stages[1].Utilisation
	if math.Abs(shared.MaxUtilisation()-sum) > 1e-12 || dedicated.MaxUtilisation() != max(dedicated.Stages[0].Utilisation, dedicated.Stages[1].Utilisation) {
		t.Errorf("max utilisation shared %v (stages sum %v), dedicated %v", shared.MaxUtilisation(), sum, dedicated.MaxUtilisation())
	}
	// Every request is answered by the stage its draw says, in both.
	for _, r := range []Result{dedicated, shared} {
		if r.Completed != r.Requests || r.Stages[0].Answered+r.Stages[1].Answered != r.Measured {
			t.Errorf("completed %d of %d; answered %d + %d of %d measured", r.Completed, r.Requests, r.Stages[0].Answered, r.Stages[1].Answered, r.Measured)
		}
	}
	// Dedicated, stage a's runner cannot keep up (2.2 items/ms at batch
	// 4); shared, the escalated answers are the slow ones.
	if shared.Stages[1].AnsweredP50Ms <= shared.Stages[0].AnsweredP50Ms {
		t.Errorf("escalated answers (p50 %v) should take longer than first-stage ones (%v)", shared.Stages[1].AnsweredP50Ms, shared.Stages[0].AnsweredP50Ms)
	}
}

func TestSimulateOverload(t *testing.T) {
	prof := plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 1}}}
	cfg := oneStage(3000, prof, 1, 1, 0) // three times what one runner does
	cfg.Stages[0].MaxQueue = 50
	r := mustRun(t, cfg)
	if r.Dropped == 0 || r.Stages[0].Dropped != r.Dropped || r.Completed+r.Dropped != r.Requests {
		t.Errorf("dropped %d, completed %d of %d", r.Dropped, r.Completed, r.Requests)
	}
	if r.Stages[0].MaxQueue != 50 {
		t.Errorf("max queue %d, bound 50", r.Stages[0].MaxQueue)
	}
	if math.Abs(r.ThroughputQPS-1000) > 100 {
		t.Errorf("throughput %v, one runner does 1000/s", r.ThroughputQPS)
	}
	cfg = oneStage(3000, prof, 1, 1, 0)
	cfg.AbortAboveP95Ms = 20
	if r := mustRun(t, cfg); !r.Aborted || r.Completed >= r.Requests {
		t.Errorf("overloaded run with an abort bound: aborted %v, completed %d", r.Aborted, r.Completed)
	}
}

func TestSimulateAddsLatencyFloor(t *testing.T) {
	prof := plantest.LinearProfile(1, 0.5) // 1.5 ms at batch 1
	const base = 1.5 + 2*0.25
	tests := []struct {
		name        string
		qps         float64
		median, p95 float64
		wantP50     float64
		wantP95     float64
		tolerance   float64
	}{
		{"none", 1, 0, 0, base, base, 1e-9},
		{"constant", 1, 3, 0, base + 3, base + 3, 1e-9},
		{"constant, p95 equal", 1, 3, 3, base + 3, base + 3, 1e-9},
		// Log-normal with median 3 and p95 9: every request takes exactly
		// base plus its draw, so the quantiles shift by the floor's.
		{"log-normal", 1, 3, 9, base + 3, base + 9, 0.3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := oneStage(tt.qps, prof, 1, 1, 0)
			cfg.Requests = 20000
			plain := mustRun(t, cfg)
			cfg.LatencyFloorMs, cfg.LatencyFloorP95Ms = tt.median, tt.p95
			r := mustRun(t, cfg)
			if math.Abs(r.P50Ms-tt.wantP50) > tt.tolerance || math.Abs(r.P95Ms-tt.wantP95) > tt.tolerance {
				t.Errorf("p50 %v p95 %v, want %v and %v (±%v)", r.P50Ms, r.P95Ms, tt.wantP50, tt.wantP95, tt.tolerance)
			}
			// The floor occupies no runner: the stages do what they did
			// (only the latency of their answers grows).
			strip := func(stages []StageResult) []StageResult {
				out := slices.Clone(stages)
				for i := range out {
					out[i].AnsweredP50Ms, out[i].AnsweredP95Ms = 0, 0
				}
				return out
			}
			if !reflect.DeepEqual(strip(r.Stages), strip(plain.Stages)) {
				t.Errorf("stages with the floor %+v, without %+v", r.Stages, plain.Stages)
			}
		})
	}
}

func TestSimulateRejectsBadConfig(t *testing.T) {
	good := oneStage(10, plantest.LinearProfile(1, 1), 1, 1, 0)
	tests := []struct {
		name   string
		mutate func(c *Config)
	}{
		{"qps", func(c *Config) { c.QPS = 0 }},
		{"stages", func(c *Config) { c.Stages = nil }},
		{"answered-by", func(c *Config) { c.AnsweredBy = []float64{0.5, 0.5} }},
		{"runners", func(c *Config) { c.Stages[0].Runners = 0 }},
		{"batch", func(c *Config) { c.Stages[0].MaxBatch = 0 }},
		{"profile", func(c *Config) { c.Stages[0].Profile = plan.Profile{} }},
		{"batch overhead", func(c *Config) { c.BatchOverheadMs = -1 }},
		// 10 qps × 100 ms is all of one runner's core.
		{"request overhead", func(c *Config) { c.RequestOverheadMs = 100 }},
		{"latency floor", func(c *Config) { c.LatencyFloorMs = -1 }},
		{"idle CPU", func(c *Config) { c.IdleCPUMsPerS = 1000 }},
		{"latency floor p95 below median", func(c *Config) { c.LatencyFloorMs, c.LatencyFloorP95Ms = 2, 1 }},
		{"latency floor p95", func(c *Config) { c.LatencyFloorP95Ms = math.NaN() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			c.Stages = append([]Stage(nil), good.Stages...)
			tt.mutate(&c)
			if _, err := Run(c); !errors.Is(err, ErrBadConfig) {
				t.Errorf("Simulate = %v, want ErrBadConfig", err)
			}
		})
	}
}

func TestGearConfig(t *testing.T) {
	p := plantest.SmallPlan()
	sc, err := GearConfig(p, 0, 100, GearOptions{RunnerScale: 10})
	if err != nil {
		t.Fatal(err)
	}
	if sc.Stages[0].Runners != 10 || sc.Stages[1].Runners != 30 {
		t.Errorf("runners %d, %d; want 10, 30", sc.Stages[0].Runners, sc.Stages[1].Runners)
	}
	if math.Abs(sc.AnsweredBy[0]-0.8) > 1e-12 || math.Abs(sc.AnsweredBy[1]-0.2) > 1e-12 {
		t.Errorf("answered-by %v, want [0.8 0.2]", sc.AnsweredBy)
	}
	if sc.Stages[1].MaxBatch != 8 || sc.Stages[1].MaxDelayMs != 2 {
		t.Errorf("batching %+v", sc.Stages[1])
	}
	p95, err := PredictP95(p, 0, 100)
	if err != nil || !(p95 > 0) {
		t.Errorf("PredictP95 = %v, %v", p95, err)
	}
	// The plan's runner pool decides how the simulation pools runners.
	for pool, shared := range map[string]bool{"": true, plan.RunnerPoolShared: true, plan.RunnerPoolPerModel: false} {
		p.RunnerPool = pool
		if sc, err := GearConfig(p, 0, 100, GearOptions{}); err != nil || sc.SharedRunners != shared {
			t.Errorf("runner pool %q: shared runners %v (%v), want %v", pool, sc.SharedRunners, err, shared)
		}
	}
	p.Gears[0].Predicted.Reach = nil
	if _, err := GearConfig(p, 0, 100, GearOptions{}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("gear without reach: %v", err)
	}
	if _, err := GearConfig(p, 5, 100, GearOptions{}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("gear out of range: %v", err)
	}
}

// BenchmarkSimulate measures one simulation of a three-stage cascade with
// 3000 requests, the unit of the planner's gear search.
func BenchmarkSimulate(b *testing.B) {
	cfg := Config{
		QPS: 5000, Requests: 3000, Seed: 1, Overheads: plan.Overheads{HopOverheadMs: 0.3},
		Stages: []Stage{
			{Model: "a", Profile: plantest.LinearProfile(0.1, 0.01), Runners: 2, MaxBatch: 32, MaxDelayMs: 1},
			{Model: "b", Profile: plantest.LinearProfile(0.3, 0.08), Runners: 2, MaxBatch: 32, MaxDelayMs: 1},
			{Model: "c", Profile: plantest.LinearProfile(1, 1), Runners: 4, MaxBatch: 32, MaxDelayMs: 1},
		},
		AnsweredBy: []float64{0.6, 0.3, 0.1},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Run(cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSimulateReadsTheFloorWhereItsCoresAreBusy: with floors on the CPU
// curve, a config's floor is the one measured where the cores were as busy
// as the config keeps them, its overhead plus its models' compute.
func TestSimulateReadsTheFloorWhereItsCoresAreBusy(t *testing.T) {
	prof := plantest.LinearProfile(0.1, 0.4) // 0.4 ms per item at any batch
	cfg := oneStage(1000, prof, 2, 8, 1)
	cfg.Requests = 20000
	cfg.CPULoad = []plan.CPUPoint{
		{QPS: 1000, CPUMsPerS: 200, FloorMs: 1, FloorP95Ms: 2},   // busy 0.1 of the 2 runners' cores
		{QPS: 8000, CPUMsPerS: 1000, FloorMs: 3, FloorP95Ms: 20}, // 0.5
	}
	// 1000/s: overhead 200 ms/s + compute 1000 × 0.4125 ms = 612.5 ms/s of
	// 2000: busy 0.30625, halfway between the points by share.
	r := mustRun(t, cfg)
	if want := (200 + 1000*(0.1/8+0.4)) / 2000; math.Abs(r.Busy-want) > 1e-9 {
		t.Fatalf("busy %v, want %v", r.Busy, want)
	}
	f := (r.Busy - 0.1) / 0.4
	if wantMedian, wantP95 := 1+2*f, 2+18*f; math.Abs(r.FloorMs-wantMedian) > 1e-9 || math.Abs(r.FloorP95Ms-wantP95) > 1e-9 {
		t.Fatalf("floor %v / %v, want %v / %v", r.FloorMs, r.FloorP95Ms, wantMedian, wantP95)
	}
	// A busier config (three times the load) is charged a higher floor,
	// and its p95 shows it.
	busier := cfg
	busier.QPS = 3000
	b := mustRun(t, busier)
	if !(b.FloorP95Ms > r.FloorP95Ms+5) || !(b.P95Ms > r.P95Ms+5) {
		t.Errorf("at 3000/s floor p95 %v, p95 %v; at 1000/s %v, %v: want both well higher", b.FloorP95Ms, b.P95Ms, r.FloorP95Ms, r.P95Ms)
	}
}
