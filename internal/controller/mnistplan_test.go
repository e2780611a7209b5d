package controller

import (
	"slices"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

const mnistPlanFile = "../../models/mnist/plan.json"

// TestMNISTPlan checks the built-in MNIST plan against the mnist
// package: it parses, its ladder is the package's ladder, every model file
// exists where the plan says, gears run from accurate to cheap, and the
// policy accepts it.
func TestMNISTPlan(t *testing.T) {
	p, err := plan.LoadFile(mnistPlanFile)
	if err != nil {
		t.Fatal(err)
	}
	if p.Pipeline != "mnist" {
		t.Errorf("pipeline %q", p.Pipeline)
	}
	// The plan may predate models added to the ladder since (it is made
	// from a profile of the models it uses): its ladder is the package's,
	// or a part of it in the same order.
	if !inLadderOrder(p.Ladder, mnist.Ladder()) {
		t.Errorf("ladder %v is not mnist.Ladder() %v or a part of it in order", p.Ladder, mnist.Ladder())
	}
	if !slices.Equal(p.Input.Shape, mnist.ItemShape()) || p.Input.Classes != mnist.Classes {
		t.Errorf("input %+v does not match the mnist package", p.Input)
	}
	for _, m := range p.Models {
		b, err := p.ReadModel(m.Name)
		if err != nil {
			// The training helper may still be producing a model.
			if _, merr := mnist.Model(m.Name); merr != nil {
				t.Logf("model %q not there yet: %v", m.Name, err)
				continue
			}
			t.Errorf("model %q: %v", m.Name, err)
			continue
		}
		if want, err := mnist.Model(m.Name); err == nil && !slices.Equal(b, want) {
			t.Errorf("model %q: file %s is not the embedded model", m.Name, m.File)
		}
	}
	if len(p.Gears) < 3 {
		t.Errorf("%d gears, want at least 3", len(p.Gears))
	}
	for i, g := range p.Gears {
		if len(g.Predicted.Reach) != len(g.Cascade) {
			t.Errorf("gear %s: reach has %d entries for %d stages", g.ID, len(g.Predicted.Reach), len(g.Cascade))
		}
		if i > 0 && g.Predicted.PlannedAccuracy() > p.Gears[i-1].Predicted.PlannedAccuracy() {
			t.Errorf("gear %s predicts more accuracy than the gear before it", g.ID)
		}
	}
	if _, err := NewPolicy(p, time.Second, ""); err != nil {
		t.Fatal(err)
	}
}

// TestRunMNISTPlan runs the controller on the mnist pipeline with the
// built-in MNIST plan handed over as `cascadeserve up` does: a stream and a
// consumer for every model any gear uses, the plan in the bucket, and the
// most accurate gear first.
func TestRunMNISTPlan(t *testing.T) {
	srv := natstest.Start(t)
	cfg := testConfig(t, "", map[string]string{"CASCADE_PIPELINE": "mnist"})
	p, err := plan.LoadFile(mnistPlanFile)
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	startControllerPlan(t, srv, cfg, builtin, nil)
	kv := controlBucket(t, srv, "mnist")
	waitGear(t, kv, p.Gears[0].ID)
	modelQueues(t, srv, "mnist", p.UsedModels())
	if stored, _ := storedPlan(t, kv); stored.Description != p.Description || len(stored.Gears) != len(p.Gears) {
		t.Errorf("stored plan is not models/mnist/plan.json")
	}
}

// inLadderOrder reports whether sub is a non-empty subsequence of ladder.
func inLadderOrder(sub, ladder []string) bool {
	i := 0
	for _, m := range ladder {
		if i < len(sub) && sub[i] == m {
			i++
		}
	}
	return len(sub) > 0 && i == len(sub)
}
