package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/system"
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

// wholeSystemTest prepares a test that starts what (say "a whole system"):
// it skips the test in short mode, and returns a context that ends after
// timeout or with the test, and the ONNX Runtime library.
func wholeSystemTest(t *testing.T, what string, timeout time.Duration) (context.Context, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts " + what)
	}
	lib := ortLibrary(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx, lib
}

func TestRunMeasuresEveryPart(t *testing.T) {
	ctx, lib := wholeSystemTest(t, "a whole system", 3*time.Minute)
	file := smallPlanFile(t)
	const idle = 20
	rep, err := Run(ctx, Config{
		Live:            Live{PlanFile: file, Runners: 2, ONNXRuntimeLib: lib, Items: testImages(t, 500), TempDir: t.TempDir()},
		Gears:           []string{"one"},
		Broker:          BrokerConfig{Messages: 300, Rounds: 1},
		Ceiling:         CeilingConfig{Batches: []int{32}, Rounds: 1, Messages: 300},
		HopCeiling:      true,
		ComputeDuration: time.Millisecond,
		Concurrency:     8,
		Warmup:          -1,
		Duration:        time.Second,
		HalfLoad:        time.Second,
		IdleRequests:    idle,
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
	ctx, lib := wholeSystemTest(t, "a whole system", 3*time.Minute)
	file := smallPlanFile(t)
	const n = 400
	items := testImages(t, n)
	c, err := CheckPlan(ctx, CheckConfig{
		Live:        Live{PlanFile: file, ONNXRuntimeLib: lib, Items: items, TempDir: t.TempDir()},
		Gear:        "two",
		Concurrency: 16,
		Fractions:   []float64{0.25},
		Warmup:      -1,
		Duration:    time.Second,
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

// TestCheckKneesReportsEachGear runs a tiny knee search on the real
// system, all probes on one system and every probe on a fresh one: the report's shape
// and sanity only, no performance.
func TestCheckKneesReportsEachGear(t *testing.T) {
	for _, fresh := range []bool{false, true} {
		t.Run(fmt.Sprintf("fresh=%v", fresh), func(t *testing.T) { testCheckKnees(t, fresh) })
	}
}

func testCheckKnees(t *testing.T, fresh bool) {
	ctx, lib := wholeSystemTest(t, "a whole system", 2*time.Minute)
	file := smallPlanFile(t)
	p, err := plan.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	const budget = 4 * time.Second
	k, err := CheckKnees(ctx, KneeConfig{
		Live:         Live{PlanFile: file, ONNXRuntimeLib: lib, Items: testImages(t, 500), TempDir: t.TempDir(), Progress: &progress},
		Gears:        []string{"one"},
		RequestItems: 4,
		Probing:      Probing{Warmup: -1, Duration: time.Second, Budget: budget},
		FreshProbes:  fresh,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := k.Settings
	if s.FreshProbes != fresh {
		t.Errorf("settings say fresh probes %v, want %v", s.FreshProbes, fresh)
	}
	if s.SLOP95Ms != p.SLO.P95Ms || s.RequestItems != 4 || s.UINT8 != (p.Input.UINT8Scale > 0) || s.WarmupSeconds != 0 || s.DurationSeconds != 1 ||
		s.Factor != 1.5 || s.Resolution != 0.05 || s.Tolerance != 0.15 || s.MaxErrorRate != 0.001 {
		t.Errorf("settings %+v", s)
	}
	if len(k.Gears) != 1 {
		t.Fatalf("gears %+v, want one", k.Gears)
	}
	g := k.Gears[0]
	if g.Gear != "one" || g.PlannedQPS != 400 || g.PredictedAccuracy != 0.92 || len(g.Probes) == 0 || g.Probes[0].Load != 400 || g.Stopped == "" {
		t.Fatalf("gear %+v, want probes from its max_qps 400", g)
	}
	// The budget bounds the search: probes start while they fit, and one
	// overloaded is cut short.
	if g.Seconds > (budget + 10*time.Second).Seconds() {
		t.Errorf("search took %.1fs with a budget of %v", g.Seconds, budget)
	}
	if want := len(g.Probes); !fresh && g.Systems != 1 || fresh && g.Systems != want {
		t.Errorf("%d probes ran on %d systems (fresh probes %v)", want, g.Systems, fresh)
	}
	for _, pr := range g.Probes {
		r := pr.Run
		if r.OfferedQPS != pr.Load || r.Sent%4 != 0 || !r.Aborted && (r.Answered == 0 || r.Answered+r.ErrorCount()+r.Lost != r.Sent) {
			t.Errorf("probe %+v: want a Poisson run at its load in requests of 4 items, each item accounted for", pr)
		}
		if pr.OK != (probeVerdict(r, p.SLO.P95Ms, 0.001).OK) {
			t.Errorf("probe %+v judged inconsistently", pr)
		}
		if r.Answered > 0 && r.ByGear["one"] != r.Answered {
			t.Errorf("probe %+v answered by %v, want gear one", pr, r.ByGear)
		}
	}
	if g.Ratio != g.KneeQPS/g.PlannedQPS {
		t.Errorf("ratio %v, want %v / %v", g.Ratio, g.KneeQPS, g.PlannedQPS)
	}
	if g.KneeQPS > 0 && (!(g.P95Ms > 0) || g.P95Ms > p.SLO.P95Ms || !(g.Accuracy > 0.8) || !(g.ServedQPS > 0)) {
		t.Errorf("at the knee %+v: want its probe's p95 within the SLO and its accuracy", g)
	}
	if g.FirstMissQPS > 0 && g.FirstMissQPS <= g.KneeQPS {
		t.Errorf("first miss %v at or below the knee %v", g.FirstMissQPS, g.KneeQPS)
	}
	if g.Verdict != KneePass && g.Verdict != KneeMiss && g.Verdict != KneeUnresolved {
		t.Errorf("verdict %q", g.Verdict)
	}
	if n := strings.Count(progress.String(), "gear one probe "); n != len(g.Probes) {
		t.Errorf("progress has %d probe lines for %d probes:\n%s", n, len(g.Probes), progress.String())
	}
	var table strings.Builder
	if err := k.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MEASURED KNEE", "MEASURED/PLANNED", "\none ", "linear", g.Verdict} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("progress:\n%s\n%s", progress.String(), table.String())
}

// TestLoadAbortCutsARunShort: Abort stops a phase's sending early and
// marks the run; an aborted warm-up skips the measured phase.
func TestLoadAbortCutsARunShort(t *testing.T) {
	ctx, lib := wholeSystemTest(t, "a whole system", 2*time.Minute)
	file := smallPlanFile(t)
	items := testImages(t, 100)
	abort := func(s loadgen.Snapshot) bool { return s.Elapsed > 300*time.Millisecond }
	sc := Config{
		Live: Live{PlanFile: file, Runners: 2, ONNXRuntimeLib: lib},
	}.systemConfig("one")
	_, err := withSystem(ctx, t.TempDir(), sc, func(sys *system.System) (struct{}, error) {
		start := time.Now()
		run, err := Load(ctx, sys.Conn, LoadConfig{Pipeline: "mnist", Items: items, QPS: 100, Duration: 20 * time.Second, Abort: abort})
		if err != nil {
			return struct{}{}, err
		}
		if !run.Aborted || run.Sent == 0 || run.Answered+run.ErrorCount()+run.Lost != run.Sent || time.Since(start) > 10*time.Second {
			t.Errorf("aborted run %+v after %v, want it cut short with every item accounted for", run, time.Since(start))
		}
		run, err = Load(ctx, sys.Conn, LoadConfig{Pipeline: "mnist", Items: items, QPS: 100, Warmup: 20 * time.Second, Duration: 20 * time.Second, Abort: abort})
		if err != nil {
			return struct{}{}, err
		}
		if !run.Aborted || run.Sent != 0 || run.OfferedQPS != 100 || time.Since(start) > 20*time.Second {
			t.Errorf("run %+v after %v, want the warm-up cut short and no measured phase", run, time.Since(start))
		}
		return struct{}{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
