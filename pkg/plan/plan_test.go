package plan_test

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/cascadeserve/cascadeserve/pkg/plan"

	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

func TestValidateAcceptsValidPlan(t *testing.T) {
	if err := plantest.SmallPlan().Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *plan.Plan)
		want   []string
	}{
		{"version", func(p *plan.Plan) { p.Version = 7 }, []string{"version is 7"}},
		{"pipeline", func(p *plan.Plan) { p.Pipeline = "Bad Name" }, []string{`pipeline "Bad Name"`}},
		{"slo", func(p *plan.Plan) { p.SLO.P95Ms = 0 }, []string{"slo.p95_ms must be > 0"}},
		{"capacity", func(p *plan.Plan) { p.Capacity = 0 }, []string{"capacity must be >= 1"}},
		{"metric", func(p *plan.Plan) { p.Confidence = "vibes" }, []string{`confidence "vibes"`}},
		{"runner pool", func(p *plan.Plan) { p.RunnerPool = "pooled" }, []string{`runner_pool "pooled" is not one of [shared per-model]`}},
		{"profile provider", func(p *plan.Plan) { p.Models[0].Profile.Provider = "CUDA!" }, []string{`model "small": profile provider "CUDA!"`}},
		{"unknown ladder model", func(p *plan.Plan) { p.Ladder = append(p.Ladder, "ghost") }, []string{`ladder names unknown model "ghost"`}},
		{"threshold range", func(p *plan.Plan) { p.Gears[0].Cascade[0].Threshold = 1.5 }, []string{"threshold 1.5 outside [0,1]"}},
		{"last threshold", func(p *plan.Plan) { p.Gears[0].Cascade[1].Threshold = 0.3 }, []string{"the last stage always answers"}},
		{"order", func(p *plan.Plan) {
			p.Gears[0].Cascade = []plan.Stage{{Model: "big", Threshold: 0.5}, {Model: "small"}}
		}, []string{"cascade must follow ladder order"}},
		{"gear order", func(p *plan.Plan) { p.Gears[1].MaxQPS = 50 }, []string{"strictly ascending max_qps"}},
		{"shares", func(p *plan.Plan) { p.Gears[0].Runners["big"] = 0.9 }, []string{"runner shares sum to 1.150 > 1"}},
		{"share of unused model", func(p *plan.Plan) { p.Gears[1].Runners["big"] = 0.1 }, []string{`runner share for "big", which is not in its cascade`}},
		{"batching", func(p *plan.Plan) { p.Gears[0].Batching.MaxBatch = 0 }, []string{"batching.max_batch must be in [1,4096]"}},
		{"profile", func(p *plan.Plan) { p.Models[0].Profile.Points = nil }, []string{`model "small" has no profile points`}},
		{"hysteresis", func(p *plan.Plan) { p.Hysteresis.SampleIntervalMs = 10 }, []string{"sample_interval_ms must be in [50,5000]"}},
		{"downshift hold", func(p *plan.Plan) { p.Hysteresis.DownshiftHoldMs = -1 }, []string{"downshift_hold_ms must be in [0,60000]"}},
		{"upshift factor", func(p *plan.Plan) { p.Hysteresis.UpshiftFactor = p.Hysteresis.DownshiftFactor }, []string{"upshift_factor must be 0 (none) or in (downshift_factor"}},
		{"upshift window", func(p *plan.Plan) { p.Hysteresis.UpshiftWindowMs = 2 * p.Hysteresis.RateWindowMs }, []string{"upshift_window_ms must be in [0, rate_window_ms"}},
		{"overheads", func(p *plan.Plan) {
			p.HopOverheadMs, p.ItemOverheadMs, p.BatchOverheadMs, p.RequestOverheadMs = -1, math.NaN(), -2, math.Inf(1)
		}, []string{"hop_overhead_ms must be", "item_overhead_ms must be", "batch_overhead_ms must be", "request_overhead_ms must be"}},
		{"latency floor", func(p *plan.Plan) { p.LatencyFloorMs, p.LatencyFloorP95Ms = 3, 1 }, []string{"latency_floor_p95_ms 1 is below latency_floor_ms 3"}},
		{"several at once", func(p *plan.Plan) {
			p.Capacity = -1
			p.Gears[1].ID = "g1"
			p.Models[1].File = ""
		}, []string{"capacity must be >= 1", "duplicate id", `model "big" has no file`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plantest.SmallPlan()
			tt.mutate(p)
			err := p.Validate()
			if !errors.Is(err, plan.ErrInvalidPlan) {
				t.Fatalf("Validate = %v, want ErrInvalidPlan", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseRejectsUnknownFieldsAndAppliesDefaults(t *testing.T) {
	p := plantest.SmallPlan()
	p.Hysteresis = plan.Hysteresis{}
	p.Confidence = ""
	b := plantest.JSON(t, p)
	got, err := plan.Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got.Hysteresis != plan.DefaultHysteresis() || got.Confidence != plan.MetricMargin {
		t.Errorf("defaults not applied: %+v %q", got.Hysteresis, got.Confidence)
	}
	typo := strings.Replace(string(b), `"capacity"`, `"capactiy"`, 1)
	if _, err := plan.Parse([]byte(typo)); !errors.Is(err, plan.ErrInvalidPlan) || !strings.Contains(err.Error(), "capactiy") {
		t.Errorf("Parse with typo = %v, want ErrInvalidPlan naming the field", err)
	}
}

func TestLoadResolvesModelFiles(t *testing.T) {
	p := plantest.SmallPlan()
	b := plantest.JSON(t, p)
	fsys := fstest.MapFS{
		"plans/plan.json":  {Data: b},
		"plans/small.onnx": {Data: []byte("SMALL")},
	}
	got, err := plan.Load(fsys, "plans/plan.json")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if data, err := got.ReadModel("small"); err != nil || string(data) != "SMALL" {
		t.Errorf("ReadModel(small) = %q, %v", data, err)
	}
	if _, err := got.ReadModel("big"); err == nil {
		t.Error("ReadModel(big) of a missing file succeeded")
	}
	if _, err := got.ReadModel("ghost"); err == nil {
		t.Error("ReadModel of an unknown model succeeded")
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plan.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.onnx"), []byte("BIG"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = plan.LoadFile(filepath.Join(dir, "plan.json"))
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	if data, err := got.ReadModel("big"); err != nil || string(data) != "BIG" {
		t.Errorf("ReadModel(big) = %q, %v", data, err)
	}
}

func TestGearLookup(t *testing.T) {
	p := plantest.SmallPlan()
	for _, tt := range []struct {
		qps  float64
		want int
	}{{0, 0}, {100, 0}, {100.5, 1}, {500, 1}, {1e9, 1}} {
		if got := p.GearFor(tt.qps); got != tt.want {
			t.Errorf("GearFor(%v) = %d, want %d", tt.qps, got, tt.want)
		}
	}
	if got := p.GearByID("g2"); got != 1 {
		t.Errorf("GearByID(g2) = %d", got)
	}
	if got := p.GearByID("nope"); got != -1 {
		t.Errorf("GearByID(nope) = %d", got)
	}
	if got := p.UsedModels(); strings.Join(got, ",") != "small,big" {
		t.Errorf("UsedModels = %v", got)
	}
	if got := p.Gears[0].RunnerCount("big", p.Capacity); got != 3 {
		t.Errorf("RunnerCount(big) = %d, want 3", got)
	}
	if got := p.Gears[1].RunnerCount("big", p.Capacity); got != 0 {
		t.Errorf("RunnerCount of a model outside the cascade = %d, want 0", got)
	}
}

func TestProfileLatencyMs(t *testing.T) {
	p := plan.Profile{Points: []plan.ProfilePoint{{Batch: 2, LatencyMs: 2}, {Batch: 4, LatencyMs: 3}, {Batch: 8, LatencyMs: 7}}}
	tests := []struct {
		b    int
		want float64
	}{
		{0, 0},   // nothing to run
		{1, 1},   // below the first point: scaled down
		{2, 2},   // measured
		{3, 2.5}, // interpolated
		{4, 3},
		{6, 5},
		{8, 7},
		{10, 9}, // extrapolated from the last two points
	}
	for _, tt := range tests {
		if got := p.LatencyMs(tt.b); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("LatencyMs(%d) = %v, want %v", tt.b, got, tt.want)
		}
	}
	one := plan.Profile{Points: []plan.ProfilePoint{{Batch: 4, LatencyMs: 2}}}
	if got := one.LatencyMs(8); got != 4 {
		t.Errorf("single point LatencyMs(8) = %v, want 4", got)
	}
	if got := (plan.Profile{}).LatencyMs(4); got != 0 {
		t.Errorf("empty profile LatencyMs = %v", got)
	}
	// Extrapolation never goes below zero.
	down := plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 5}, {Batch: 2, LatencyMs: 1}}}
	if got := down.LatencyMs(10); got != 0 {
		t.Errorf("falling extrapolation = %v, want 0", got)
	}
	if got := p.ItemCostMs(4); got != 0.75 {
		t.Errorf("ItemCostMs(4) = %v, want 0.75", got)
	}
}
