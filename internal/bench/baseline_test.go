package bench

import (
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

func TestWithBaselineGearAddsAValidSingleModelGear(t *testing.T) {
	p := mnistPlan(t)
	model, err := baselineModel(p, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := p.Ladder[len(p.Ladder)-1]; model != want {
		t.Fatalf("default baseline %q, want the ladder's last model %q", model, want)
	}
	d, id, err := withBaselineGear(p, model)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(d.Gears) != len(p.Gears)+1 || d.Gears[0].ID != id || id != "single-"+model {
		t.Fatalf("gears %v, want %q put first", gearIDs(d), "single-"+model)
	}
	g := d.Gears[0]
	if len(g.Cascade) != 1 || g.Cascade[0].Model != model || g.Batching != p.Gears[0].Batching || g.Runners[model] != 1 || !(g.MaxQPS < p.Gears[0].MaxQPS) {
		t.Errorf("baseline gear %+v, want %s alone with %s's batching", g, model, p.Gears[0].ID)
	}
	for i, pg := range p.Gears {
		if d.Gears[i+1].ID != pg.ID {
			t.Errorf("gear %d is %s, want %s: the plan's gears follow unchanged", i+1, d.Gears[i+1].ID, pg.ID)
		}
	}
	if len(p.Gears) != len(d.Gears)-1 {
		t.Error("the plan itself was changed")
	}

	// A per-stage batch of the model in the first gear carries over, and
	// the id stays unique when the plan has one like it.
	p.Gears[0].Cascade[len(p.Gears[0].Cascade)-1].MaxBatch = 48
	p.Gears[1].ID = "single-" + model
	d, id, err = withBaselineGear(p, model)
	if err != nil {
		t.Fatal(err)
	}
	if id != "single-"+model+"-2" || d.Gears[0].Cascade[0].MaxBatch != 48 {
		t.Errorf("gear %s %+v, want a fresh id and the model's batch 48", id, d.Gears[0].Cascade)
	}

	if _, err := baselineModel(p, "no-such-model"); err == nil {
		t.Error("a model outside the ladder was accepted")
	}
	if m, err := baselineModel(p, "mlp"); err != nil || m != "mlp" {
		t.Errorf("baseline mlp: %q, %v", m, err)
	}
}

func gearIDs(p *plan.Plan) []string {
	var ids []string
	for _, g := range p.Gears {
		ids = append(ids, g.ID)
	}
	return ids
}
