package bench

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// TestSwitchingPlanIsOneModelGears: the model-switching plan made from the
// built-in plan's settings has one-model gears, the ladder's most accurate
// model first, and keeps the built-in plan's SLO, capacity and hysteresis.
func TestSwitchingPlanIsOneModelGears(t *testing.T) {
	p := mnistPlan(t)
	replay, err := validationReplay(p.Pipeline)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := SwitchingPlan(context.Background(), p, nil, replay)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms.Gears) < 2 {
		t.Fatalf("model-switching plan has %d gears", len(ms.Gears))
	}
	for _, g := range ms.Gears {
		if len(g.Cascade) != 1 {
			t.Errorf("gear %s: %d stages", g.ID, len(g.Cascade))
		}
	}
	if got, want := ms.Gears[0].Cascade[0].Model, p.Ladder[len(p.Ladder)-1]; got != want {
		t.Errorf("first gear runs %s, want the ladder's most accurate model %s", got, want)
	}
	if ms.SLO != p.SLO || ms.Capacity != p.Capacity || ms.Hysteresis != p.Hysteresis || ms.Overheads.RequestOverheadMs != p.Overheads.RequestOverheadMs {
		t.Errorf("settings differ: SLO %v/%v capacity %d/%d", ms.SLO, p.SLO, ms.Capacity, p.Capacity)
	}
	for _, k := range []string{"headroom", "load_buckets", "load_min_qps", "load_max_qps", "sim_seconds", "cost_batch"} {
		if metaFloat(ms.Planner, k) != metaFloat(p.Planner, k) {
			t.Errorf("planner setting %s: %v, built-in plan %v", k, ms.Planner[k], p.Planner[k])
		}
	}
	if ms.Planner["max_stages"] != 1 {
		t.Errorf("max_stages %v", ms.Planner["max_stages"])
	}
	for _, g := range ms.Gears {
		t.Logf("%s %s max_qps %.0f accuracy %.4f batch %d delay %v", g.ID, plan.CascadeString(g.Cascade), g.MaxQPS, g.Predicted.Accuracy, g.Batching.MaxBatch, g.Batching.MaxDelayMs)
	}
	for i := 1; i < len(ms.Gears); i++ {
		if ms.Gears[i].MaxQPS <= ms.Gears[i-1].MaxQPS {
			t.Errorf("gears not ordered by load")
		}
	}
}

// TestProfileOfBuiltinPlanIsProfileJSON: the profile the built-in plan
// carries is models/mnist/profile.json's.
func TestProfileOfBuiltinPlanIsProfileJSON(t *testing.T) {
	p := mnistPlan(t)
	want, err := plan.LoadProfileFile("../../models/mnist/" + mnist.ProfileFile)
	if err != nil {
		t.Fatal(err)
	}
	got := profileOf(p)
	if !slices.Equal(got.CPULoad, want.CPULoad) || got.RequestOverheadMs != want.RequestOverheadMs || got.LatencyFloorMs != want.LatencyFloorMs {
		t.Errorf("overheads %+v, want %+v", got.Overheads, want.Overheads)
	}
	for _, m := range p.Ladder {
		if !slices.Equal(got.Models[m].Points, want.Models[m].Points) {
			t.Errorf("model %s: profile differs", m)
		}
	}
}

func TestLoadRangeOfFindsTheStep(t *testing.T) {
	r := loadRangeOf(10, 20000, 401)
	if r.StepQPS != 50 {
		t.Errorf("step %v, want 50", r.StepQPS)
	}
	edges, err := r.Edges()
	if err != nil || len(edges) != 401 {
		t.Fatalf("%d edges, %v", len(edges), err)
	}
	if r := loadRangeOf(1, 10, 7); r.Buckets != 7 && r.StepQPS == 0 {
		t.Errorf("%+v", r)
	}
}

// TestTestReferenceIsTheModelsTestAccuracy: the reference built from the
// test replay scores the model as its training report does.
func TestTestReferenceIsTheModelsTestAccuracy(t *testing.T) {
	set, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := mnist.Report()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range rep.Models {
		ref := testReference("mnist", set.Labels, m.Name)
		if ref == nil {
			t.Fatalf("no reference for %s", m.Name)
		}
		ok := 0
		for _, r := range ref {
			if r {
				ok++
			}
		}
		if math.Abs(float64(ok)-float64(m.TestCorrect)) > 3 {
			t.Errorf("%s: %d right, training report %d", m.Name, ok, m.TestCorrect)
		}
	}
	if testReference("other", set.Labels, "cnn") != nil {
		t.Error("reference for another pipeline")
	}
}
