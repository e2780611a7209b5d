package planner

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// smallConfig is a small, fast, deterministic planning problem: four
// synthetic models, 800 replay items, a 9-point grid.
func smallConfig(t testing.TB) Config {
	t.Helper()
	ladder := plantest.Ladder()[1:]
	r := plantest.Replay(t, 21, 800, 10, ladder)
	fixed := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	return Config{
		Pipeline:    "synthetic",
		Description: "golden plan of a synthetic four-model ladder",
		Input:       plan.Input{Name: "input", Shape: []int64{1, 28, 28}, UINT8Scale: 1.0 / 255},
		Replay:      r,
		Profile:     plantest.ProfileFile(ladder, 0.3),
		SLOP95Ms:    12,
		Capacity:    4,
		Load:        LoadRange{MinQPS: 200, MaxQPS: 40000, Buckets: 12},
		Search:      SearchOptions{GridPoints: 9},
		SimRequests: 1000,
		SimSeconds:  -1,
		Now:         func() time.Time { return fixed },
	}
}

func mustMake(t *testing.T, cfg Config) *Result {
	t.Helper()
	res, err := Make(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Make: %v", err)
	}
	return res
}

func TestPlanGolden(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(c *Config)
	}{
		{"max-accuracy", func(c *Config) {}},
		{"min-cost", func(c *Config) { c.Mode = ModeMinCost; c.TargetAccuracy = 0.97 }},
		{"calibrated", func(c *Config) { c.Calibrate = true; c.Load.Spacing = SpacingLog }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := smallConfig(t)
			tt.mutate(&cfg)
			res := mustMake(t, cfg)
			got := plantest.JSON(t, res.Plan)
			path := filepath.Join("testdata", "plan-"+tt.name+".golden.json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./pkg/plan/planner -run TestPlanGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("plan differs from %s (run with -update to accept):\n%s", path, firstDiff(string(want), string(got)))
			}
			if _, err := plan.Parse(want); err != nil {
				t.Errorf("golden plan does not parse: %v", err)
			}
		})
	}
}

// firstDiff shows the first differing line of two texts.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(w), len(g)) {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n want %s\n got  %s", i+1, a, b)
		}
	}
	return "(no line differs)"
}

// checkPlanInvariants checks what every plan must satisfy.
func checkPlanInvariants(t *testing.T, cfg Config, res *Result) {
	t.Helper()
	p := res.Plan
	if err := p.Validate(); err != nil {
		t.Fatalf("plan does not validate: %v", err)
	}
	b := plantest.JSON(t, p)
	back, err := plan.Parse(b)
	if err != nil {
		t.Fatalf("plan does not parse back: %v", err)
	}
	if !reflect.DeepEqual(back.Gears, p.Gears) {
		t.Error("gears change in a JSON round trip")
	}
	temps := map[string]float64{}
	for _, m := range p.Models {
		temps[m.Name] = m.Temperature
	}
	for i, g := range p.Gears {
		// The plan's thresholds reproduce the predicted accuracy exactly,
		// decided item by item the way workers decide.
		correct := 0
		reached := make([]int, len(g.Cascade))
		for item := range cfg.Replay.Len() {
			stage, label := workerAnswer(cfg.Replay, g.Cascade, p.Confidence, temps, item)
			if label == int(cfg.Replay.Labels[item]) {
				correct++
			}
			for j := 0; j <= stage; j++ {
				reached[j]++
			}
		}
		if acc := float64(correct) / float64(cfg.Replay.Len()); acc != g.Predicted.Accuracy {
			t.Errorf("gear %s: replayed accuracy %v, predicted %v", g.ID, acc, g.Predicted.Accuracy)
		}
		for j := range reached {
			if r := float64(reached[j]) / float64(cfg.Replay.Len()); r != g.Predicted.Reach[j] {
				t.Errorf("gear %s stage %d: replayed reach %v, predicted %v", g.ID, j, r, g.Predicted.Reach[j])
			}
		}
		if g.Predicted.P95Ms > p.SLO.P95Ms {
			t.Errorf("gear %s: predicted p95 %v above the SLO %v", g.ID, g.Predicted.P95Ms, p.SLO.P95Ms)
		}
		// More load never gets a more expensive or more accurate gear.
		if i > 0 {
			prev := p.Gears[i-1]
			if g.Predicted.CostMsPerItem > prev.Predicted.CostMsPerItem {
				t.Errorf("gear %s (up to %v qps) costs %v, more than gear %s for less load (%v)", g.ID, g.MaxQPS, g.Predicted.CostMsPerItem, prev.ID, prev.Predicted.CostMsPerItem)
			}
			if cfg.Mode != ModeMinCost && g.Predicted.Accuracy > prev.Predicted.Accuracy {
				t.Errorf("gear %s is more accurate than gear %s for less load", g.ID, prev.ID)
			}
		}
		// The plan's own simulation helper agrees the gear fits at its
		// highest load.
		if cfg.SimRequests == 0 && cfg.SimSeconds == 0 { // the defaults PredictP95 uses
			p95, err := simulate.PredictP95(p, i, g.MaxQPS)
			if err != nil {
				t.Fatal(err)
			}
			if p95 > p.SLO.P95Ms {
				t.Errorf("gear %s: PredictP95 at %v qps = %v, above the SLO", g.ID, g.MaxQPS, p95)
			}
		}
	}
	prevCost := res.Candidates[0].CostMsPerItem + 1
	for _, b := range res.Buckets {
		if !b.Feasible() {
			continue
		}
		c := res.Candidates[b.Candidate]
		if c.CostMsPerItem > prevCost {
			t.Errorf("bucket %v qps: cost %v after %v", b.QPS, c.CostMsPerItem, prevCost)
		}
		prevCost = c.CostMsPerItem
		if b.Sim.P95Ms > cfg.SLOP95Ms || b.Sim.MaxUtilisation() > 0.8 {
			t.Errorf("bucket %v qps: chosen gear has p95 %v, utilisation %v", b.QPS, b.Sim.P95Ms, b.Sim.MaxUtilisation())
		}
	}
}

func TestPlanInvariants(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(c *Config)
	}{
		{"default", func(c *Config) {}},
		{"default simulations", func(c *Config) {
			c.SimRequests, c.SimSeconds = 0, 0
			c.Capacity, c.Load = 2, LoadRange{MinQPS: 200, MaxQPS: 12000, Buckets: 6}
		}},
		{"calibrated", func(c *Config) { c.Calibrate = true }},
		{"max prob", func(c *Config) { c.Metric = plan.MetricMaxProb; c.Search.GridSpacing = GridUniform }},
		{"entropy, two stages", func(c *Config) { c.Metric = plan.MetricEntropy; c.Search.MaxStages = 2 }},
		{"min-cost", func(c *Config) { c.Mode = ModeMinCost; c.TargetAccuracy = 0.95 }},
		{"bounded queues", func(c *Config) { c.MaxQueue = 200 }},
		{"runners per model", func(c *Config) { c.RunnerPool = plan.RunnerPoolPerModel }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := smallConfig(t)
			tt.mutate(&cfg)
			res := mustMake(t, cfg)
			checkPlanInvariants(t, cfg, res)
			wantPool := cmp.Or(cfg.RunnerPool, plan.RunnerPoolShared)
			if res.Plan.RunnerPool != wantPool {
				t.Errorf("plan's runner pool %q, want %q", res.Plan.RunnerPool, wantPool)
			}
			// Every bucket was simulated with the pool the plan records.
			for _, b := range res.Buckets {
				if b.Feasible() && b.Sim.SharedRunners != (wantPool == plan.RunnerPoolShared) {
					t.Errorf("bucket %v qps simulated with shared runners %v, plan's pool %q", b.QPS, b.Sim.SharedRunners, wantPool)
				}
			}
			if cfg.Calibrate {
				for _, m := range res.Plan.Models {
					if m.Temperature < MinTemperature || m.Temperature > MaxTemperature {
						t.Errorf("model %s: temperature %v", m.Name, m.Temperature)
					}
				}
			}
			if cfg.Search.MaxStages == 2 {
				for _, g := range res.Plan.Gears {
					if len(g.Cascade) > 2 {
						t.Errorf("gear %s has %d stages", g.ID, len(g.Cascade))
					}
				}
			}
		})
	}
}

// bucketAccuracy returns the accuracy planned for each bucket (0 where no
// gear fits).
func bucketAccuracy(res *Result) []float64 {
	out := make([]float64, len(res.Buckets))
	for i, b := range res.Buckets {
		if b.Feasible() {
			out[i] = res.Candidates[b.Candidate].Accuracy
		}
	}
	return out
}

func TestPlanMonotoneInCapacityAndSLO(t *testing.T) {
	check := func(t *testing.T, what string, looser, tighter []float64, a, b any) {
		t.Helper()
		for i := range looser {
			if looser[i] < tighter[i] {
				t.Errorf("bucket %d: %s %v plans accuracy %v, less than %v with %v", i, what, b, looser[i], tighter[i], a)
			}
		}
	}
	t.Run("capacity", func(t *testing.T) {
		var prev []float64
		prevCap := 0
		for _, capacity := range []int{2, 3, 4, 6, 9} {
			cfg := smallConfig(t)
			cfg.Capacity = capacity
			acc := bucketAccuracy(mustMake(t, cfg))
			if prev != nil {
				check(t, "capacity", acc, prev, prevCap, capacity)
			}
			prev, prevCap = acc, capacity
		}
		if prev[len(prev)-1] == 0 {
			t.Error("even 9 runners do not serve the highest load: the test does not exercise capacity")
		}
	})
	t.Run("slo", func(t *testing.T) {
		var prev []float64
		prevSLO := 0.0
		for _, slo := range []float64{4, 6, 12, 30} {
			cfg := smallConfig(t)
			cfg.SLOP95Ms = slo
			cfg.DelaysMs = []float64{0, 0.5, 1, 2} // one grid for all SLOs
			acc := bucketAccuracy(mustMake(t, cfg))
			if prev != nil {
				check(t, "SLO", acc, prev, prevSLO, slo)
			}
			prev, prevSLO = acc, slo
		}
	})
}

func TestPlanUsesMoreAccurateGearsAtLowLoad(t *testing.T) {
	cfg := smallConfig(t)
	res := mustMake(t, cfg)
	p := res.Plan
	if len(p.Gears) < 2 {
		t.Fatalf("plan has %d gears; the load range should need several", len(p.Gears))
	}
	first, last := p.Gears[0], p.Gears[len(p.Gears)-1]
	if !(first.Predicted.Accuracy > last.Predicted.Accuracy) || !(first.Predicted.CostMsPerItem > last.Predicted.CostMsPerItem) {
		t.Errorf("first gear %v/%v, last %v/%v: expected accuracy traded for cost", first.Predicted.Accuracy, first.Predicted.CostMsPerItem, last.Predicted.Accuracy, last.Predicted.CostMsPerItem)
	}
	if first.Predicted.Accuracy != res.Front[0].Accuracy {
		t.Errorf("at the lowest load the plan uses accuracy %v, the best cascade has %v", first.Predicted.Accuracy, res.Front[0].Accuracy)
	}
	for _, key := range []string{"mode", "grid_points", "candidates_evaluated", "simulations", "elapsed_ms", "pareto"} {
		if _, ok := p.Planner[key]; !ok {
			t.Errorf("planner metadata lacks %q", key)
		}
	}
}

// TestPlanLatencySlackSplitsARangeByLatency: with LatencySlack the lower
// part of a cascade's range takes the batching with the same max batch and
// a shorter delay that has the lowest p95 there, the top keeps the batching
// that carries the most, and no load gets a less accurate cascade for it.
func TestPlanLatencySlackSplitsARangeByLatency(t *testing.T) {
	plans := map[float64]*Result{}
	for _, slack := range []float64{-1, 0.1} {
		cfg := smallConfig(t)
		cfg.LatencySlack = slack
		// Batches that cost enough to be worth a wait, and load steps
		// fine enough for 10% of a range to be a bucket or more.
		cfg.SLOP95Ms, cfg.Profile.BatchOverheadMs, cfg.Load.Buckets = 30, 0.5, 80
		res := mustMake(t, cfg)
		checkPlanInvariants(t, cfg, res)
		plans[slack] = res
	}
	widest, slack := plans[-1], plans[0.1]
	if len(slack.Plan.Gears) <= len(widest.Plan.Gears) {
		t.Fatalf("%d gears with the slack, %d without: no range was split", len(slack.Plan.Gears), len(widest.Plan.Gears))
	}
	changed, lower := 0, 0
	for i, b := range slack.Buckets {
		w := widest.Buckets[i]
		if b.Candidate != w.Candidate {
			t.Fatalf("at %.0f qps cascade %d with the slack, %d without: accuracy given up", b.QPS, b.Candidate, w.Candidate)
		}
		if b.Batching != w.Batching && b.Feasible() {
			changed++
			if b.Sim.P95Ms < w.Sim.P95Ms {
				lower++
			}
			if b.Batching.MaxBatch != w.Batching.MaxBatch || !(b.Batching.MaxDelayMs < w.Batching.MaxDelayMs) {
				t.Errorf("at %.0f qps the slack took %+v for %+v: it may only shorten the delay", b.QPS, b.Batching, w.Batching)
			}
			if b.Sim.P95Ms > w.Sim.P95Ms {
				t.Errorf("at %.0f qps the slack's batching %+v has p95 %.2f ms, the widest %+v %.2f ms", b.QPS, b.Batching, b.Sim.P95Ms, w.Batching, w.Sim.P95Ms)
			}
		}
	}
	if changed == 0 || lower == 0 {
		t.Errorf("%d buckets took another batching, %d of them with a lower p95", changed, lower)
	}
	for _, g := range widest.Plan.Gears {
		if !slices.ContainsFunc(slack.Plan.Gears, func(s plan.Gear) bool { return s.MaxQPS == g.MaxQPS && s.Batching == g.Batching }) {
			t.Errorf("gear %s (up to %.0f qps, %+v) has no twin at the top of its range with the slack", g.ID, g.MaxQPS, g.Batching)
		}
	}
}

func TestPlanChargesMessagingOverhead(t *testing.T) {
	plain := mustMake(t, smallConfig(t))
	cfg := smallConfig(t)
	prof := *cfg.Profile
	prof.ItemOverheadMs = 0.05
	cfg.Profile = &prof
	res := mustMake(t, cfg)
	checkPlanInvariants(t, cfg, res)
	if res.Plan.ItemOverheadMs != 0.05 {
		t.Errorf("plan item overhead %v", res.Plan.ItemOverheadMs)
	}
	// Every stage an item reaches costs the overhead.
	for _, c := range res.Front {
		want := 0.0
		for j, s := range c.Stages {
			want += c.Reach[j] * (prof.Models[s.Model].ItemCostMs(8) + 0.05)
		}
		if math.Abs(c.CostMsPerItem-want) > 1e-12 {
			t.Fatalf("%s: cost %v, want %v", c, c.CostMsPerItem, want)
		}
	}
	// Less capacity is left for models, so the top load gets a cheaper gear
	// (or none).
	top := func(r *Result) float64 {
		b := r.Buckets[len(r.Buckets)-1]
		if !b.Feasible() {
			return 0
		}
		return r.Candidates[b.Candidate].Accuracy
	}
	if top(res) > top(plain) {
		t.Errorf("with messaging overhead the top load gets accuracy %v, without %v", top(res), top(plain))
	}
}

func TestPlanChargesBatchAndRequestOverhead(t *testing.T) {
	plain := mustMake(t, smallConfig(t))
	cfg := smallConfig(t)
	prof := *cfg.Profile
	// At the top load (40000 qps) the request overhead takes half of the
	// four runners' cores.
	prof.BatchOverheadMs, prof.RequestOverheadMs = 0.2, 0.05
	cfg.Profile = &prof
	res := mustMake(t, cfg)
	checkPlanInvariants(t, cfg, res)
	if res.Plan.BatchOverheadMs != 0.2 || res.Plan.RequestOverheadMs != 0.05 {
		t.Errorf("plan overheads: batch %v, request %v", res.Plan.BatchOverheadMs, res.Plan.RequestOverheadMs)
	}
	// Every stage an item reaches costs its share of a batch of CostBatch.
	for _, c := range res.Front {
		want := 0.0
		for j, s := range c.Stages {
			want += c.Reach[j] * (prof.Models[s.Model].ItemCostMs(8) + 0.2/8)
		}
		if math.Abs(c.CostMsPerItem-want) > 1e-12 {
			t.Fatalf("%s: cost %v, want %v", c, c.CostMsPerItem, want)
		}
	}
	// Every gear meets the SLO in the simulation the plan file describes,
	// overheads included, at the top of its load range.
	for i, g := range res.Plan.Gears {
		r, err := simulate.Gear(res.Plan, i, g.MaxQPS, simulate.GearOptions{Requests: cfg.SimRequests, Seed: cfg.Seed})
		if err != nil {
			t.Fatalf("gear %s: %v", g.ID, err)
		}
		if r.P95Ms > cfg.SLOP95Ms {
			t.Errorf("gear %s at %v qps: simulated p95 %v above the SLO", g.ID, g.MaxQPS, r.P95Ms)
		}
	}
	// Less capacity is left for models: no load gets a more accurate gear,
	// and the planned loads end no later.
	acc := func(r *Result, i int) float64 {
		if b := r.Buckets[i]; b.Feasible() {
			return r.Candidates[b.Candidate].Accuracy
		}
		return 0
	}
	lower := 0
	for i := range res.Buckets {
		if acc(res, i) > acc(plain, i) {
			t.Errorf("at %v qps: accuracy %v with the overheads, %v without", res.Buckets[i].QPS, acc(res, i), acc(plain, i))
		}
		if acc(res, i) < acc(plain, i) {
			lower++
		}
	}
	if lower == 0 {
		t.Error("the overheads lowered the accuracy at no load")
	}
	last := func(r *Result) float64 { f, _ := r.Plan.Planner["max_feasible_qps"].(float64); return f }
	if last(res) > last(plain) {
		t.Errorf("feasible up to %v qps with the overheads, %v without", last(res), last(plain))
	}
}

// overheadBoundConfig is smallConfig with a request overhead of 0.1 ms on
// its 4 cores (half of them at 20000 qps) and a headroom of 0.5.
func overheadBoundConfig(t *testing.T) Config {
	t.Helper()
	cfg := smallConfig(t)
	prof := *cfg.Profile
	prof.RequestOverheadMs = 0.1
	cfg.Profile = &prof
	cfg.Headroom = 0.5
	return cfg
}

func TestPlanKeepsWholeCPUDemandWithinHeadroom(t *testing.T) {
	cfg := overheadBoundConfig(t)
	prof := *cfg.Profile
	res := mustMake(t, cfg)
	checkPlanInvariants(t, cfg, res)
	if f, _ := res.Plan.Planner["max_feasible_qps"].(float64); !(f > 0) || f >= 20000 {
		t.Errorf("feasible up to %v qps; the request overhead alone takes the headroom at 20000", f)
	}
	for _, g := range res.Plan.Gears {
		b := g.Batching.MaxBatch
		demand := prof.RequestOverheadMs
		for j, s := range g.Cascade {
			demand += g.Predicted.Reach[j] * (prof.Models[s.Model].ItemCostMs(b) + prof.ItemOverheadMs + prof.BatchOverheadMs/float64(b))
		}
		if share := g.MaxQPS / 1000 * demand / float64(cfg.Capacity); share > cfg.Headroom+1e-9 {
			t.Errorf("gear %s at %v qps keeps %.3f of the cores busy, headroom %v", g.ID, g.MaxQPS, share, cfg.Headroom)
		}
	}
}

func TestPlanMinCostMeetsTarget(t *testing.T) {
	const target = 0.96
	cfg := smallConfig(t)
	cfg.Mode, cfg.TargetAccuracy = ModeMinCost, target
	minCost := mustMake(t, cfg)
	maxAcc := mustMake(t, smallConfig(t))
	met := 0
	for i, b := range minCost.Buckets {
		if !b.Feasible() {
			continue
		}
		c := minCost.Candidates[b.Candidate]
		if c.Accuracy >= target {
			met++
		}
		if ma := maxAcc.Buckets[i]; ma.Feasible() {
			m := maxAcc.Candidates[ma.Candidate]
			if c.Accuracy >= target && c.CostMsPerItem > m.CostMsPerItem {
				t.Errorf("bucket %v qps: min-cost gear costs %v, max-accuracy %v", b.QPS, c.CostMsPerItem, m.CostMsPerItem)
			}
			if m.Accuracy >= target && c.Accuracy < target {
				t.Errorf("bucket %v qps: min-cost misses the target that max-accuracy reaches", b.QPS)
			}
		}
	}
	if met == 0 {
		t.Error("no bucket meets the target")
	}
}

func TestPlanErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   error
		text   string
	}{
		{"model missing from profile", func(c *Config) { delete(c.Profile.Models, "large") }, ErrModelNotProfiled, `"large"`},
		{"empty replay", func(c *Config) { c.Replay = &plan.Replay{Classes: 10} }, plan.ErrBadReplay, "no items"},
		{"no replay", func(c *Config) { c.Replay = nil }, plan.ErrBadReplay, "no replay"},
		{"ladder model not in replay", func(c *Config) { c.Ladder = []LadderModel{{Name: "small"}, {Name: "ghost"}} }, plan.ErrBadReplay, `"ghost"`},
		{"impossible SLO", func(c *Config) { c.SLOP95Ms = 0.5 }, ErrInfeasible, "not even"},
		{"unreachable target", func(c *Config) { c.Mode = ModeMinCost; c.TargetAccuracy = 1 }, ErrAccuracyUnreachable, "target"},
		{"bad profile", func(c *Config) { c.Profile.HopOverheadMs = -1 }, plan.ErrBadProfile, "hop_overhead_ms"},
		{"capacity", func(c *Config) { c.Capacity = 0 }, ErrConfig, "capacity"},
		{"load range", func(c *Config) { c.Load = LoadRange{MinQPS: 100, MaxQPS: 10} }, ErrConfig, "load range"},
		{"mode", func(c *Config) { c.Mode = "fastest" }, ErrConfig, `mode "fastest"`},
		{"runner pool", func(c *Config) { c.RunnerPool = "spare" }, ErrConfig, `runner pool "spare"`},
		{"several problems", func(c *Config) {
			c.Capacity = -2
			c.SLOP95Ms = -1
			c.Headroom = 3
		}, ErrConfig, "headroom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := smallConfig(t)
			cfg.Profile.Models = maps.Clone(cfg.Profile.Models)
			tt.mutate(&cfg)
			_, err := Make(context.Background(), cfg)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Make = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not mention %q", err, tt.text)
			}
		})
	}
	t.Run("several problems are reported together", func(t *testing.T) {
		cfg := smallConfig(t)
		cfg.Capacity, cfg.SLOP95Ms = 0, 0
		_, err := Make(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "capacity") || !strings.Contains(err.Error(), "slo") {
			t.Errorf("Make = %v, want both problems", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Make(ctx, smallConfig(t)); !errors.Is(err, context.Canceled) {
			t.Errorf("Make = %v, want context.Canceled", err)
		}
	})
}

func TestLoadRangeEdges(t *testing.T) {
	tests := []struct {
		l    LoadRange
		want []float64
	}{
		{LoadRange{MinQPS: 10, MaxQPS: 40, Buckets: 4}, []float64{10, 20, 30, 40}},
		{LoadRange{MinQPS: 10, MaxQPS: 1000, Buckets: 3, Spacing: SpacingLog}, []float64{10, 100, 1000}},
		{LoadRange{MinQPS: 10, MaxQPS: 35, StepQPS: 10}, []float64{10, 20, 30, 35}},
		{LoadRange{MinQPS: 5, MaxQPS: 5}, []float64{5}},
	}
	for _, tt := range tests {
		got, err := tt.l.Edges()
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%+v.Edges() = %v, %v; want %v", tt.l, got, err, tt.want)
		}
	}
	for _, l := range []LoadRange{{MinQPS: 0, MaxQPS: 10}, {MinQPS: 10, MaxQPS: 5}, {MinQPS: 1, MaxQPS: 2, Spacing: "cubic"}, {MinQPS: 1, MaxQPS: 1e9, StepQPS: 1}} {
		if _, err := l.Edges(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v.Edges() = %v, want ErrConfig", l, err)
		}
	}
}

// TestPlanRefusesGapToBestModel: when the most accurate model cannot be in
// any gear, a max-accuracy plan far below it is refused, naming the model
// and why; MaxAccuracyGap < 0 accepts it, and a reachable best model passes.
func TestPlanRefusesGapToBestModel(t *testing.T) {
	base := func() Config {
		cfg := smallConfig(t)
		cfg.Load = LoadRange{MinQPS: 2000, MaxQPS: 4000, Buckets: 2}
		cfg.Ladder = []LadderModel{{Name: "small"}, {Name: "medium"}, {Name: "xlarge"}}
		// One runner: single-model gears only (a cascade could still send
		// its few hardest items to a slow model within the p95).
		cfg.Capacity = 1
		// The last model is right on every item: far above the others
		// (medium: 93.9%).
		r := *cfg.Replay
		r.Probs = map[string][]float32{}
		for m, p := range cfg.Replay.Probs {
			r.Probs[m] = p
		}
		best := make([]float32, r.Len()*r.Classes)
		for i, l := range r.Labels {
			best[i*r.Classes+int(l)] = 1
		}
		r.Probs["xlarge"] = best
		cfg.Replay = &r
		prof := *cfg.Profile
		prof.Models = map[string]plan.Profile{}
		for m, p := range cfg.Profile.Models {
			prof.Models[m] = p
		}
		cfg.Profile = &prof
		return cfg
	}
	flat := func(ms float64) plan.Profile {
		return plan.Profile{Threads: 1, Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: ms}, {Batch: 128, LatencyMs: 128 * ms}}}
	}
	for _, tt := range []struct {
		name  string
		xlMs  float64 // xlarge's latency per item
		gap   float64
		cause string // "" when the plan is made
	}{
		{"too slow for the SLO", 20, 0, `model "xlarge" alone takes`},
		{"too costly for the capacity", 5, 0, `model "xlarge" alone needs`},
		{"check off", 20, -1, ""},
		{"reachable", 0.01, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			cfg.Profile.Models["xlarge"] = flat(tt.xlMs)
			cfg.MaxAccuracyGap = tt.gap
			res, err := Make(context.Background(), cfg)
			if tt.cause == "" {
				if err != nil {
					t.Fatalf("Make: %v", err)
				}
				return
			}

			if !errors.Is(err, ErrAccuracyGap) || !strings.Contains(err.Error(), tt.cause) || !strings.Contains(err.Error(), "100.00%") {
				t.Fatalf("Make: %v (plan %v), want ErrAccuracyGap naming %q", err, res != nil, tt.cause)
			}
			t.Log(err)
		})
	}
}

// TestPlanRecordsTheProfilesProvider: the plan's models carry the provider
// their profile was measured on, from the profile file when the model's
// profile does not say; a profile without one leaves it empty.
func TestPlanRecordsTheProfilesProvider(t *testing.T) {
	for _, provider := range []string{"", "cuda"} {
		cfg := smallConfig(t)
		cfg.Profile.Provider = provider
		res := mustMake(t, cfg)
		for _, m := range res.Plan.Models {
			if m.Profile.Provider != provider {
				t.Errorf("profile provider %q: model %q has provider %q", provider, m.Name, m.Profile.Provider)
			}
		}
		b := plantest.JSON(t, res.Plan)
		if got := bytes.Contains(b, []byte(`"provider"`)); got != (provider != "") {
			t.Errorf("profile provider %q: plan file mentions a provider: %v", provider, got)
		}
		if _, err := plan.Parse(b); err != nil {
			t.Fatalf("the plan does not parse back: %v", err)
		}
	}
}

func TestProfileFileProvider(t *testing.T) {
	f := plantest.ProfileFile(plantest.Ladder()[1:], 0.3)
	f.Provider = "cuda"
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, p := range f.Models {
		p.Provider = "cpu"
		f.Models[name] = p
		break
	}
	if err := f.Validate(); !errors.Is(err, plan.ErrBadProfile) || !strings.Contains(err.Error(), `provider "cpu" differs`) {
		t.Fatalf("Validate = %v, want a provider mismatch", err)
	}
	f.Provider = "Bad"
	if err := f.Validate(); !errors.Is(err, plan.ErrBadProfile) || !strings.Contains(err.Error(), `provider "Bad"`) {
		t.Fatalf("Validate = %v, want a bad provider name", err)
	}
}

// replayedAccuracy is the share of r's items gear g answers right, decided
// item by item the way workers decide.
func replayedAccuracy(p *plan.Plan, g plan.Gear, r *plan.Replay) float64 {
	temps := map[string]float64{}
	for _, m := range p.Models {
		temps[m.Name] = m.Temperature
	}
	correct := 0
	for item := range r.Len() {
		if _, label := workerAnswer(r, g.Cascade, p.Confidence, temps, item); label == int(r.Labels[item]) {
			correct++
		}
	}
	return float64(correct) / float64(r.Len())
}

func TestPlanPredictsAccuracyOnTheHoldout(t *testing.T) {
	cfg := smallConfig(t)
	without := mustMake(t, cfg).Plan
	cfg.Holdout = plantest.Replay(t, 22, 600, 10, plantest.Ladder()[1:])
	with := mustMake(t, cfg).Plan

	if len(with.Gears) != len(without.Gears) {
		t.Fatalf("%d gears with a holdout, %d without: the holdout must not change what is chosen", len(with.Gears), len(without.Gears))
	}
	differs := false
	for i, g := range with.Gears {
		w := without.Gears[i]
		if plan.CascadeString(g.Cascade) != plan.CascadeString(w.Cascade) || g.MaxQPS != w.MaxQPS || g.Batching != w.Batching {
			t.Errorf("gear %s: %s up to %v with a holdout, %s up to %v without", g.ID, plan.CascadeString(g.Cascade), g.MaxQPS, plan.CascadeString(w.Cascade), w.MaxQPS)
		}
		if want := replayedAccuracy(with, g, cfg.Holdout); g.Predicted.Accuracy != want {
			t.Errorf("gear %s: predicted accuracy %v, the holdout replays %v", g.ID, g.Predicted.Accuracy, want)
		}
		if g.Predicted.ValidationAccuracy != w.Predicted.Accuracy {
			t.Errorf("gear %s: validation accuracy %v, the plan without a holdout predicts %v", g.ID, g.Predicted.ValidationAccuracy, w.Predicted.Accuracy)
		}
		if w.Predicted.ValidationAccuracy != 0 {
			t.Errorf("gear %s: validation accuracy %v in a plan without a holdout", g.ID, w.Predicted.ValidationAccuracy)
		}
		differs = differs || g.Predicted.Accuracy != w.Predicted.Accuracy
	}
	if !differs {
		t.Error("every gear predicts the same accuracy on the holdout as on the validation replay: the test shows nothing")
	}
	if with.Planner["accuracy_from"] != "holdout replay" || with.Planner["holdout_items"] != 600 {
		t.Errorf("planner metadata %v / %v, want the holdout named with its 600 items", with.Planner["accuracy_from"], with.Planner["holdout_items"])
	}
	if _, ok := without.Planner["accuracy_from"]; ok {
		t.Error("a plan without a holdout names one")
	}

	cfg.Holdout = plantest.Replay(t, 22, 600, 7, plantest.Ladder()[1:])
	if _, err := Make(context.Background(), cfg); !errors.Is(err, plan.ErrBadReplay) || !strings.Contains(err.Error(), "holdout") {
		t.Errorf("a holdout with 7 classes against 10: %v, want ErrBadReplay naming the holdout", err)
	}
}

func TestPlanCPUHeadroomBoundsTheCoresAlone(t *testing.T) {
	cfg := overheadBoundConfig(t)
	bound := mustMake(t, cfg).Plan
	cfg.CPUHeadroom = 0.9
	loose := mustMake(t, cfg)
	checkPlanInvariants(t, cfg, loose)
	top := func(p *plan.Plan) float64 { f, _ := p.Planner["max_feasible_qps"].(float64); return f }
	if !(top(loose.Plan) > top(bound)) {
		t.Errorf("feasible up to %v qps with a CPU headroom of 0.9, %v with the headroom's 0.5: the cores' bound should move", top(loose.Plan), top(bound))
	}
	if top(loose.Plan) >= 36000 {
		t.Errorf("feasible up to %v qps; the request overhead alone takes 0.9 of the cores at 36000", top(loose.Plan))
	}
	if got := loose.Plan.Planner["cpu_headroom"]; got != 0.9 {
		t.Errorf("planner metadata cpu_headroom %v, want 0.9", got)
	}
	if got := bound.Planner["cpu_headroom"]; got != 0.5 {
		t.Errorf("planner metadata cpu_headroom %v without one, want the headroom's 0.5", got)
	}
}

// TestPlanCapsACostlyStagesBatch checks Config.StageBatchShare: every
// stage's batch in the plan runs within the share of the SLO (or is down to
// one item), stages within it keep the gear's batch without an override,
// and a simulation made from the plan's gear runs the capped batches.
func TestPlanCapsACostlyStagesBatch(t *testing.T) {
	cfg := smallConfig(t)
	costly := cfg.Replay.Models[len(cfg.Replay.Models)-1]
	// A share at which the costliest model's batches of 4 are the most
	// that fit.
	share := cfg.Profile.Models[costly].LatencyMs(4) / cfg.SLOP95Ms
	uncapped := mustMake(t, cfg)
	for _, g := range uncapped.Plan.Gears {
		for _, s := range g.Cascade {
			if s.MaxBatch != 0 {
				t.Fatalf("without a share gear %s caps %s at %d", g.ID, s.Model, s.MaxBatch)
			}
		}
	}
	cfg.StageBatchShare = share
	res := mustMake(t, cfg)
	checkPlanInvariants(t, cfg, res)
	capped := 0
	for i, g := range res.Plan.Gears {
		sc, err := simulate.GearConfig(res.Plan, i, g.MaxQPS, simulate.GearOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for j, s := range g.Cascade {
			if got := sc.Stages[j].MaxBatch; got != g.MaxBatch(s.Model) {
				t.Errorf("gear %s: the simulation of the plan runs %s in batches of %d, the plan says %d", g.ID, s.Model, got, g.MaxBatch(s.Model))
			}
			b := g.MaxBatch(s.Model)
			lat := cfg.Profile.Models[s.Model].LatencyMs(b)
			if b > 1 && lat > share*cfg.SLOP95Ms {
				t.Errorf("gear %s: %s in batches of %d takes %.3g ms, over %.3g ms", g.ID, s.Model, b, lat, share*cfg.SLOP95Ms)
			}
			if s.MaxBatch == 0 {
				continue
			}
			capped++
			if s.MaxBatch >= g.Batching.MaxBatch {
				t.Errorf("gear %s: %s capped at %d, not below the gear's %d", g.ID, s.Model, s.MaxBatch, g.Batching.MaxBatch)
			}
			if twice := cfg.Profile.Models[s.Model].LatencyMs(2 * s.MaxBatch); 2*s.MaxBatch <= g.Batching.MaxBatch && twice <= share*cfg.SLOP95Ms {
				t.Errorf("gear %s: %s capped at %d, but %d items take %.3g ms, within the share", g.ID, s.Model, s.MaxBatch, 2*s.MaxBatch, twice)
			}
		}
	}
	if capped == 0 {
		t.Fatalf("no stage capped at share %.3g: the test checks nothing; gears %+v", share, res.Plan.Gears)
	}
}
