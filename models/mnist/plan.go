package mnist

import (
	_ "embed"
	"fmt"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

//go:embed plan.json
var planJSON []byte

// PlanFile is the hand-written gear plan, relative to this package's folder.
const PlanFile = "plan.json"

// Plan returns the built-in gear plan of the MNIST pipeline, with its model
// files resolved against the embedded ONNX models. `cascadeserve up` serves
// it when no --plan is given.
func Plan() (*plan.Plan, error) {
	p, err := plan.Parse(planJSON)
	if err != nil {
		return nil, fmt.Errorf("mnist: built-in plan: %w", err)
	}
	p.SetModelSource(files)
	return p, nil
}
