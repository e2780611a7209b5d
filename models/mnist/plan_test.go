package mnist

import (
	"math"
	"reflect"
	"slices"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
)

// TestPlanFiles checks both committed MNIST plans: each parses and
// validates, describes this package's ladder (all of it, or some of its
// models in ladder order: a plan made before a model joined the ladder stays
// valid) and input, names model files that are the embedded models, and has
// at least three gears ordered from accurate to cheap.
func TestPlanFiles(t *testing.T) {
	for _, file := range []string{PlanFile, HandwrittenPlanFile} {
		t.Run(file, func(t *testing.T) {
			p, err := plan.LoadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if p.Pipeline != "mnist" || !inLadderOrder(p.Ladder, Ladder()) {
				t.Errorf("pipeline %q, ladder %v; want mnist, models of %v in that order", p.Pipeline, p.Ladder, Ladder())
			} else if len(p.Ladder) < len(Ladder()) {
				t.Logf("plan ladder %v leaves out some of %v", p.Ladder, Ladder())
			}
			if !slices.Equal(p.Input.Shape, ItemShape()) || p.Input.Classes != Classes {
				t.Errorf("input %+v does not match the package", p.Input)
			}
			for _, m := range p.Models {
				got, err := p.ReadModel(m.Name)
				if err != nil {
					t.Errorf("model %q: %v", m.Name, err)
					continue
				}
				if want, err := Model(m.Name); err != nil || !slices.Equal(got, want) {
					t.Errorf("model %q: file %s is not the embedded model (%v)", m.Name, m.File, err)
				}
			}
			if len(p.Gears) < 3 {
				t.Errorf("%d gears, want at least 3", len(p.Gears))
			}
			for i := 1; i < len(p.Gears); i++ {
				if p.Gears[i].Predicted.PlannedAccuracy() > p.Gears[i-1].Predicted.PlannedAccuracy() {
					t.Errorf("gear %s predicts more accuracy than gear %s before it", p.Gears[i].ID, p.Gears[i-1].ID)
				}
			}
		})
	}
}

// inLadderOrder reports whether names is non-empty and lists models of
// ladder, each once, in ladder order.
func inLadderOrder(names, ladder []string) bool {
	i := 0
	for _, n := range names {
		for i < len(ladder) && ladder[i] != n {
			i++
		}
		if i == len(ladder) {
			return false
		}
		i++
	}
	return len(names) > 0
}

// TestBuiltinPlanIsTheGeneratedOne checks that Plan serves plan.json, and
// that plan.json is what `cascadeserve plan` makes of the committed inputs:
// its profiles, overheads and latency floor are profile.json's, and every gear's predicted
// accuracy and reach, and every model's accuracy, are those of the embedded
// validation replay. A retrained ladder, a new replay or a new profile
// without a new plan fails here.
func TestBuiltinPlanIsTheGeneratedOne(t *testing.T) {
	builtin, err := Plan()
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.LoadFile(PlanFile)
	if err != nil {
		t.Fatal(err)
	}
	if builtin.Description != p.Description || !reflect.DeepEqual(builtin.Gears, p.Gears) {
		t.Error("Plan() is not plan.json")
	}
	if mode, _ := p.Planner["mode"].(string); mode != planner.ModeMaxAccuracy {
		t.Errorf("planner metadata mode %q: plan.json is not a max-accuracy plan of cascadeserve plan", mode)
	}

	prof, err := plan.LoadProfileFile(ProfileFile)
	if err != nil {
		t.Fatal(err)
	}
	if p.HopOverheadMs != prof.HopOverheadMs || p.ItemOverheadMs != prof.ItemOverheadMs ||
		p.BatchOverheadMs != prof.BatchOverheadMs || p.RequestOverheadMs != prof.RequestOverheadMs {
		t.Errorf("plan overheads (hop %v, item %v, batch %v, request %v) are not the profile's (%v, %v, %v, %v)",
			p.HopOverheadMs, p.ItemOverheadMs, p.BatchOverheadMs, p.RequestOverheadMs,
			prof.HopOverheadMs, prof.ItemOverheadMs, prof.BatchOverheadMs, prof.RequestOverheadMs)
	}
	if p.IdleCPUMsPerS != prof.IdleCPUMsPerS || p.LatencyFloorMs != prof.LatencyFloorMs || p.LatencyFloorP95Ms != prof.LatencyFloorP95Ms {
		t.Errorf("plan idle CPU %v, latency floor %v/%v are not the profile's (%v, %v/%v)",
			p.IdleCPUMsPerS, p.LatencyFloorMs, p.LatencyFloorP95Ms, prof.IdleCPUMsPerS, prof.LatencyFloorMs, prof.LatencyFloorP95Ms)
	}
	if !(prof.RequestOverheadMs > 0) || !(prof.LatencyFloorMs > 0) {
		t.Error("profile.json has no request overhead or latency floor: measure them with --system-qps on the machine cascadeserve up runs on")
	}

	replay, err := ValidationReplay()
	if err != nil {
		t.Fatal(err)
	}
	temps := map[string]float64{}
	for _, m := range p.Models {
		temps[m.Name] = m.Temperature
		if !slices.Equal(m.Profile.Points, prof.Models[m.Name].Points) {
			t.Errorf("model %q: plan profile is not profile.json's", m.Name)
		}
	}
	ev, err := planner.NewEvaluator(replay, planner.EvaluatorConfig{Ladder: p.Ladder, Metric: p.Confidence, Temperatures: temps})
	if err != nil {
		t.Fatal(err)
	}
	test, err := TestReplay()
	if err != nil {
		t.Fatal(err)
	}
	held, err := planner.NewEvaluator(test, planner.EvaluatorConfig{Ladder: p.Ladder, Metric: p.Confidence, Temperatures: temps})
	if err != nil {
		t.Fatal(err)
	}
	if p.Planner["accuracy_from"] != "holdout replay" || p.Planner["holdout_items"] != float64(test.Len()) {
		t.Errorf("plan accuracy from %v on %v items: want the embedded test replay's %d items as the holdout",
			p.Planner["accuracy_from"], p.Planner["holdout_items"], test.Len())
	}
	const eps = 1e-12
	for _, m := range p.Models {
		if got := ev.ModelAccuracy(m.Name); math.Abs(got-m.Accuracy) > eps {
			t.Errorf("model %q: plan accuracy %v, replay %v", m.Name, m.Accuracy, got)
		}
	}
	for _, g := range p.Gears {
		e, err := ev.Evaluate(g.Cascade)
		if err != nil {
			t.Fatalf("gear %s: %v", g.ID, err)
		}
		h, err := held.Evaluate(g.Cascade)
		if err != nil {
			t.Fatalf("gear %s on the test replay: %v", g.ID, err)
		}
		if math.Abs(h.Accuracy-g.Predicted.Accuracy) > eps {
			t.Errorf("gear %s: predicted accuracy %v, test replay %v", g.ID, g.Predicted.Accuracy, h.Accuracy)
		}
		if math.Abs(e.Accuracy-g.Predicted.ValidationAccuracy) > eps || len(e.Reach) != len(g.Predicted.Reach) {
			t.Errorf("gear %s: validation accuracy %v, validation replay %v", g.ID, g.Predicted.ValidationAccuracy, e.Accuracy)
			continue
		}
		for j := range e.Reach {
			if math.Abs(e.Reach[j]-g.Predicted.Reach[j]) > eps {
				t.Errorf("gear %s: predicted reach %v, replay %v", g.ID, g.Predicted.Reach, e.Reach)
				break
			}
		}
	}
}
