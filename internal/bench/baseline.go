package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// BaselineNone as Config.Baseline measures no single-model baseline.
const BaselineNone = "none"

// Baseline describes the single-model gear a run measured next to the
// plan's gears, and how the gears compare with it.
type Baseline struct {
	// Model runs alone in Gear, a gear added to the plan for the run, with
	// the batching of the plan's most accurate gear (BatchingOf).
	Model      string `json:"model"`
	Gear       string `json:"gear"`
	BatchingOf string `json:"batching_of"`
	// Versus compares every measured gear with it, in the pipeline and in
	// process.
	Versus []BaselineRatio `json:"versus,omitempty"`
}

// BaselineRatio compares a gear's requests/s and accuracy with the single
// model's, measured the same way (Where: "pipeline" or "in-process").
type BaselineRatio struct {
	Gear           string  `json:"gear"`
	Where          string  `json:"where"`
	GearQPS        float64 `json:"gear_qps"`
	SingleQPS      float64 `json:"single_qps"`
	GearAccuracy   float64 `json:"gear_accuracy"`
	SingleAccuracy float64 `json:"single_accuracy"`
	// Speedup is GearQPS / SingleQPS.
	Speedup float64 `json:"speedup"`
}

// baselineModel resolves Config.Baseline: empty means the plan's most
// accurate model, the last of the ladder.
func baselineModel(p *plan.Plan, name string) (string, error) {
	if name == "" {
		return p.Ladder[len(p.Ladder)-1], nil
	}
	if !slices.Contains(p.Ladder, name) {
		return "", fmt.Errorf("baseline: plan %s has no model %q in its ladder %v", p.Pipeline, name, p.Ladder)
	}
	return name, nil
}

// withBaselineGear returns a copy of p with one more gear, put first: model
// alone, with the batching of p's most accurate gear (the model's own
// per-stage batch there, if that gear runs it) and every runner, and a
// max_qps below the first gear's so that the gears stay ordered. Pinned,
// it serves the model alone through the same pipeline; unpinned, the
// controller would pick it only below the most accurate gear's load.
func withBaselineGear(p *plan.Plan, model string) (*plan.Plan, string, error) {
	b, err := p.Marshal()
	if err != nil {
		return nil, "", err
	}
	d, err := plan.Parse(b)
	if err != nil {
		return nil, "", err
	}
	m, ok := d.Model(model)
	if !ok {
		return nil, "", fmt.Errorf("baseline: plan %s has no model %q", p.Pipeline, model)
	}
	first := d.Gears[0]
	batching := first.Batching
	stage := plan.Stage{Model: model}
	if j, ok := first.StageOf(model); ok && first.Cascade[j].MaxBatch > 0 {
		stage.MaxBatch = first.Cascade[j].MaxBatch
	}
	batch := batching.MaxBatch
	if stage.MaxBatch > 0 {
		batch = stage.MaxBatch
	}
	id := baselineGearID(d, model)
	g := plan.Gear{
		ID:       id,
		MaxQPS:   first.MaxQPS / 2,
		Cascade:  []plan.Stage{stage},
		Batching: batching,
		Runners:  map[string]float64{model: 1},
		Predicted: plan.Prediction{
			CostMsPerItem: m.Profile.ItemCostMs(batch), Reach: []float64{1},
		},
	}
	d.Gears = append([]plan.Gear{g}, d.Gears...)
	if err := d.Validate(); err != nil {
		return nil, "", fmt.Errorf("baseline gear: %w", err)
	}
	return d, id, nil
}

// baselineGearID is "single-<model>", made unique among p's gear ids.
func baselineGearID(p *plan.Plan, model string) string {
	base := "single-" + model
	if len(base) > 28 {
		base = base[:28]
	}
	id := base
	for i := 2; p.GearByID(id) >= 0; i++ {
		id = fmt.Sprintf("%s-%d", base, i)
	}
	return id
}

// writePlan writes p to dir/plan.json with the files of the models its
// gears use next to it, read from src, and returns the plan file's path:
// a system started on it serves p with the same models.
func writePlan(p *plan.Plan, src ModelSource, dir string) (string, error) {
	used := p.UsedModels()
	for i, m := range p.Models {
		if !slices.Contains(used, m.Name) {
			continue
		}
		b, err := src(m.Name)
		if err != nil {
			return "", err
		}
		p.Models[i].File = m.Name + ".onnx"
		if err := os.WriteFile(filepath.Join(dir, p.Models[i].File), b, 0o644); err != nil {
			return "", err
		}
	}
	b, err := p.Marshal()
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return "", err
	}
	if _, err := plan.LoadFile(file); err != nil {
		return "", fmt.Errorf("plan with the baseline gear: %w", err)
	}
	return file, nil
}
