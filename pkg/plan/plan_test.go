package plan

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// validPlan returns a small hand-written plan that passes Validate.
func validPlan(t *testing.T) *Plan {
	t.Helper()
	prof := Profile{Threads: 1, Points: []ProfilePoint{{Batch: 1, LatencyMs: 1}, {Batch: 8, LatencyMs: 3}}}
	return &Plan{
		Version:    FormatVersion,
		Pipeline:   "mnist",
		SLO:        SLO{P95Ms: 50},
		Capacity:   4,
		Confidence: MetricMargin,
		Input:      Input{Name: "input", Datatype: "FP32", Shape: []int64{1, 28, 28}, Classes: 10},
		Models: []Model{
			{Name: "small", File: "small.onnx", Profile: prof},
			{Name: "big", File: "big.onnx", Profile: prof},
		},
		Ladder: []string{"small", "big"},
		Gears: []Gear{
			{ID: "g1", MaxQPS: 100, Cascade: []Stage{{Model: "small", Threshold: 0.9}, {Model: "big"}},
				Batching: Batching{MaxBatch: 8, MaxDelayMs: 2}, Runners: map[string]float64{"small": 0.25, "big": 0.75},
				Predicted: Prediction{Accuracy: 0.99, P95Ms: 10, CostMsPerItem: 1, Reach: []float64{1, 0.2}}},
			{ID: "g2", MaxQPS: 500, Cascade: []Stage{{Model: "small"}},
				Batching: Batching{MaxBatch: 32, MaxDelayMs: 1}, Runners: map[string]float64{"small": 1},
				Predicted: Prediction{Accuracy: 0.95, P95Ms: 5, CostMsPerItem: 0.2, Reach: []float64{1}}},
		},
		Hysteresis: DefaultHysteresis(),
	}
}

func TestValidateAcceptsValidPlan(t *testing.T) {
	if err := validPlan(t).Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *Plan)
		want   []string
	}{
		{"version", func(p *Plan) { p.Version = 7 }, []string{"version is 7"}},
		{"pipeline", func(p *Plan) { p.Pipeline = "Bad Name" }, []string{`pipeline "Bad Name"`}},
		{"slo", func(p *Plan) { p.SLO.P95Ms = 0 }, []string{"slo.p95_ms must be > 0"}},
		{"capacity", func(p *Plan) { p.Capacity = 0 }, []string{"capacity must be >= 1"}},
		{"metric", func(p *Plan) { p.Confidence = "vibes" }, []string{`confidence "vibes"`}},
		{"runner pool", func(p *Plan) { p.RunnerPool = "pooled" }, []string{`runner_pool "pooled" is not one of [shared per-model]`}},
		{"profile provider", func(p *Plan) { p.Models[0].Profile.Provider = "CUDA!" }, []string{`model "small": profile provider "CUDA!"`}},
		{"unknown ladder model", func(p *Plan) { p.Ladder = append(p.Ladder, "ghost") }, []string{`ladder names unknown model "ghost"`}},
		{"threshold range", func(p *Plan) { p.Gears[0].Cascade[0].Threshold = 1.5 }, []string{"threshold 1.5 outside [0,1]"}},
		{"last threshold", func(p *Plan) { p.Gears[0].Cascade[1].Threshold = 0.3 }, []string{"the last stage always answers"}},
		{"order", func(p *Plan) {
			p.Gears[0].Cascade = []Stage{{Model: "big", Threshold: 0.5}, {Model: "small"}}
		}, []string{"cascade must follow ladder order"}},
		{"gear order", func(p *Plan) { p.Gears[1].MaxQPS = 50 }, []string{"strictly ascending max_qps"}},
		{"shares", func(p *Plan) { p.Gears[0].Runners["big"] = 0.9 }, []string{"runner shares sum to 1.150 > 1"}},
		{"share of unused model", func(p *Plan) { p.Gears[1].Runners["big"] = 0.1 }, []string{`runner share for "big", which is not in its cascade`}},
		{"batching", func(p *Plan) { p.Gears[0].Batching.MaxBatch = 0 }, []string{"batching.max_batch must be in [1,4096]"}},
		{"profile", func(p *Plan) { p.Models[0].Profile.Points = nil }, []string{`model "small" has no profile points`}},
		{"hysteresis", func(p *Plan) { p.Hysteresis.SampleIntervalMs = 10 }, []string{"sample_interval_ms must be in [50,5000]"}},
		{"overheads", func(p *Plan) {
			p.HopOverheadMs, p.ItemOverheadMs, p.BatchOverheadMs, p.RequestOverheadMs = -1, math.NaN(), -2, math.Inf(1)
		}, []string{"hop_overhead_ms must be", "item_overhead_ms must be", "batch_overhead_ms must be", "request_overhead_ms must be"}},
		{"latency floor", func(p *Plan) { p.LatencyFloorMs, p.LatencyFloorP95Ms = 3, 1 }, []string{"latency_floor_p95_ms 1 is below latency_floor_ms 3"}},
		{"several at once", func(p *Plan) {
			p.Capacity = -1
			p.Gears[1].ID = "g1"
			p.Models[1].File = ""
		}, []string{"capacity must be >= 1", "duplicate id", `model "big" has no file`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := validPlan(t)
			tt.mutate(p)
			err := p.Validate()
			if !errors.Is(err, ErrInvalidPlan) {
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
	p := validPlan(t)
	p.Hysteresis = Hysteresis{}
	p.Confidence = ""
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got.Hysteresis != DefaultHysteresis() || got.Confidence != MetricMargin {
		t.Errorf("defaults not applied: %+v %q", got.Hysteresis, got.Confidence)
	}
	typo := strings.Replace(string(b), `"capacity"`, `"capactiy"`, 1)
	if _, err := Parse([]byte(typo)); !errors.Is(err, ErrInvalidPlan) || !strings.Contains(err.Error(), "capactiy") {
		t.Errorf("Parse with typo = %v, want ErrInvalidPlan naming the field", err)
	}
}

func TestLoadResolvesModelFiles(t *testing.T) {
	p := validPlan(t)
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{
		"plans/plan.json":  {Data: b},
		"plans/small.onnx": {Data: []byte("SMALL")},
	}
	got, err := Load(fsys, "plans/plan.json")
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
	got, err = LoadFile(filepath.Join(dir, "plan.json"))
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	if data, err := got.ReadModel("big"); err != nil || string(data) != "BIG" {
		t.Errorf("ReadModel(big) = %q, %v", data, err)
	}
}

func TestGearLookup(t *testing.T) {
	p := validPlan(t)
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
	p := Profile{Points: []ProfilePoint{{Batch: 2, LatencyMs: 2}, {Batch: 4, LatencyMs: 3}, {Batch: 8, LatencyMs: 7}}}
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
	one := Profile{Points: []ProfilePoint{{Batch: 4, LatencyMs: 2}}}
	if got := one.LatencyMs(8); got != 4 {
		t.Errorf("single point LatencyMs(8) = %v, want 4", got)
	}
	if got := (Profile{}).LatencyMs(4); got != 0 {
		t.Errorf("empty profile LatencyMs = %v", got)
	}
	// Extrapolation never goes below zero.
	down := Profile{Points: []ProfilePoint{{Batch: 1, LatencyMs: 5}, {Batch: 2, LatencyMs: 1}}}
	if got := down.LatencyMs(10); got != 0 {
		t.Errorf("falling extrapolation = %v, want 0", got)
	}
	if got := p.ItemCostMs(4); got != 0.75 {
		t.Errorf("ItemCostMs(4) = %v, want 0.75", got)
	}
}
