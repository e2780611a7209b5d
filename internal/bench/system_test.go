package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// smallPlanFile writes a plan serving two cheap MNIST gears, with its
// model files next to it, and returns its path.
func smallPlanFile(t *testing.T) string {
	t.Helper()
	p := testPlan(t,
		plan.Gear{ID: "two", MaxQPS: 200, Cascade: []plan.Stage{{Model: "linear", Threshold: 0.8}, {Model: "mlp_small"}},
			Batching: plan.Batching{MaxBatch: 16, MaxDelayMs: 2}, Runners: map[string]float64{"linear": 0.5, "mlp_small": 0.5},
			Predicted: plan.Prediction{Accuracy: 0.96, P95Ms: 10, Reach: []float64{1, 0.3}}},
		plan.Gear{ID: "one", MaxQPS: 400, Cascade: []plan.Stage{{Model: "linear"}},
			Batching: plan.Batching{MaxBatch: 32, MaxDelayMs: 2}, Runners: map[string]float64{"linear": 1},
			Predicted: plan.Prediction{Accuracy: 0.92, P95Ms: 10, Reach: []float64{1}}},
	)
	dir := t.TempDir()
	var models []plan.Model
	for _, name := range []string{"linear", "mlp_small"} {
		m, _ := p.Model(name)
		b, err := mnist.Model(name)
		if err != nil {
			t.Fatal(err)
		}
		m.File = name + ".onnx"
		if err := os.WriteFile(filepath.Join(dir, m.File), b, 0o644); err != nil {
			t.Fatal(err)
		}
		models = append(models, m)
	}
	p.Models, p.Ladder = models, []string{"linear", "mlp_small"}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := plan.LoadFile(file); err != nil {
		t.Fatalf("test plan does not load: %v", err)
	}
	return file
}

func ortLibrary(t *testing.T) string {
	t.Helper()
	runtimeOrSkip(t)
	lib, err := onnxrt.FindLibrary(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

func TestRunMeasuresEveryPart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole system")
	}
	lib := ortLibrary(t)
	file := smallPlanFile(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const idle = 20
	rep, err := Run(ctx, Config{
		PlanFile: file, Gears: []string{"one"}, Runners: 2, ONNXRuntimeLib: lib, Items: testImages(t, 500),
		Broker:          BrokerConfig{Messages: 300, Rounds: 1},
		Ceiling:         CeilingConfig{Batches: []int{32}, Rounds: 1, Messages: 300},
		HopCeiling:      true,
		ComputeDuration: time.Millisecond, Concurrency: 8, Warmup: -1, Duration: time.Second,
		HalfLoad: time.Second, IdleRequests: idle, TempDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if b := rep.Broker; b == nil || len(b.Runs) != 1 || !b.Runs[0].Correct() || b.Runs[0].Received != 300 || !(b.FetchAckMsgsPerSec > 0) {
		t.Fatalf("broker ceiling %+v", rep.Broker)
	}
	if c := rep.HopCeiling; c == nil || len(c.Runs) != 1 || c.Best.Received != 300 || c.Best.Missing+c.Best.Duplicates != 0 {
		t.Fatalf("item-hop ceiling %+v", rep.HopCeiling)
	}
	// The baseline is the ladder's last model alone, with the batching of
	// the plan's first gear ("two": batch 16).
	if b := rep.Baseline; b == nil || b.Model != "mlp_small" || b.Gear != "single-mlp_small" || b.BatchingOf != "two" {
		t.Fatalf("baseline %+v", rep.Baseline)
	}
	if len(rep.Models) != 2 || rep.Models[0].Model != "linear" || rep.Models[0].Batch != 32 || rep.Models[0].Items < 64 ||
		rep.Models[1].Model != "mlp_small" || rep.Models[1].Batch != 16 {
		t.Errorf("models %+v, want linear at batch 32 and mlp_small at batch 16 on 2 sessions", rep.Models)
	}
	if len(rep.Cascades) != 2 || rep.Cascades[0].Gear != "one" || rep.Cascades[0].Items < 500 ||
		rep.Cascades[1].Gear != "single-mlp_small" || rep.Cascades[1].Items < 500 {
		t.Errorf("cascades %+v, want gear one and the baseline over all 500 items", rep.Cascades)
	}
	if len(rep.Pipelines) != 2 {
		t.Fatalf("pipelines %+v", rep.Pipelines)
	}
	for _, pr := range rep.Pipelines {
		l := pr.Load
		if l.Answered == 0 || l.Answered+l.ErrorCount()+l.Lost != l.Sent || l.Lost != 0 || l.ByGear[pr.Gear] != l.Answered || l.StagesPerRequest != 1 {
			t.Errorf("gear %s, saturated: %+v: want every request answered by the gear in one stage", pr.Gear, l)
		}
		if h := pr.HalfLoad; h == nil || h.OfferedQPS != l.Throughput/2 || h.Answered == 0 || h.Lost != 0 || h.ByGear[pr.Gear] != h.Answered {
			t.Errorf("gear %s at half load: %+v, want Poisson at half of %v/s, answered by the gear", pr.Gear, h, l.Throughput)
		}
		if i := pr.Idle; i == nil || i.Concurrency != 1 || i.Sent != idle || i.Answered != idle || !(i.P95Ms > 0) {
			t.Errorf("gear %s at idle: %+v, want %d requests answered one at a time", pr.Gear, i, idle)
		}
	}
	if len(rep.Ratios) != 2 || !(rep.Ratios[0].OverCascade > 0) || !(rep.Ratios[0].OverFetchAck > 0) || !(rep.Ratios[0].OverHopCeiling > 0) {
		t.Errorf("ratios %+v", rep.Ratios)
	}
	if v := rep.Baseline.Versus; len(v) != 2 || v[0].Gear != "one" || v[0].Where != "pipeline" || v[1].Where != "in-process" ||
		!(v[0].Speedup > 0) || !(v[1].Speedup > 0) || !(v[1].SingleAccuracy > 0) {
		t.Errorf("cascade vs single model %+v", v)
	}
}

// TestCheckPlanServesLikeTheInProcessCascade: the accuracy check serves
// every item once through the live pipeline, and the live pipeline decides
// like the in-process cascade (both use plan.Confidence and the gear's
// thresholds), so the answers by model and the accuracy agree.
func TestCheckPlanServesLikeTheInProcessCascade(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole system")
	}
	lib := ortLibrary(t)
	file := smallPlanFile(t)
	const n = 400
	items := testImages(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := CheckPlan(ctx, CheckConfig{
		PlanFile: file, Gear: "two", ONNXRuntimeLib: lib, Items: items, Concurrency: 16,
		Fractions: []float64{0.25}, Warmup: -1, Duration: time.Second, TempDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a := c.Accuracy
	if a.Items != n || a.Run.Sent != n || a.Run.Answered != n || a.Run.Lost != 0 || a.Run.ErrorCount() != 0 {
		t.Fatalf("accuracy run %+v, want %d items answered once each", a.Run, n)
	}
	if a.Predicted != 0.96 || a.Diff != a.Measured-a.Predicted || a.Run.Correct != int(a.Measured*n+0.5) {
		t.Errorf("accuracy check %+v", a)
	}
	p, err := plan.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	in, err := CascadeThroughput(ctx, runtimeOrSkip(t), CascadeRunConfig{Plan: p, Gear: p.GearByID("two"), Models: p.ReadModel, Items: items})
	if err != nil {
		t.Fatal(err)
	}
	for j, s := range p.Gears[p.GearByID("two")].Cascade {
		if d := a.Run.AnsweredBy[s.Model] - in.AnsweredBy[j]; d < -2 || d > 2 {
			t.Errorf("%s answered %d live, %d in process", s.Model, a.Run.AnsweredBy[s.Model], in.AnsweredBy[j])
		}
	}
	if d := a.Run.Correct - in.Correct; d < -2 || d > 2 {
		t.Errorf("%d correct live, %d in process", a.Run.Correct, in.Correct)
	}
	if len(c.Latency) != 1 {
		t.Fatalf("latency checks %+v", c.Latency)
	}
	l := c.Latency[0]
	if l.QPS != 50 || !(l.PredictedP95Ms > 0) || !(l.MeasuredP95Ms > 0) || l.Run.Answered == 0 || l.Run.Lost != 0 {
		t.Errorf("latency check %+v", l)
	}
	if want := (l.MeasuredP95Ms - l.PredictedP95Ms) / l.PredictedP95Ms; l.RelErr != want {
		t.Errorf("relative error %v, want %v", l.RelErr, want)
	}
}
