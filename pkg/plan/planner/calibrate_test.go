package planner

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

// calibratedReplay returns a model whose probabilities are honest: every
// label is drawn from the model's own distribution.
func calibratedReplay(t *testing.T, n, classes int) *plan.Replay {
	t.Helper()
	rng := rand.New(rand.NewPCG(11, 12))
	r := &plan.Replay{Classes: classes, Labels: make([]int32, n), Models: []string{"m"}, Probs: map[string][]float32{"m": make([]float32, n*classes)}}
	logits := make([]float64, classes)
	for i := range n {
		for c := range logits {
			logits[c] = 2 * rng.NormFloat64()
		}
		row := r.Row("m", i)
		plantest.Softmax(row, logits)
		u, acc := rng.Float64(), 0.0
		r.Labels[i] = int32(classes - 1)
		for c, p := range row {
			acc += float64(p)
			if u < acc {
				r.Labels[i] = int32(c)
				break
			}
		}
	}
	return r
}

func TestFitTemperature(t *testing.T) {
	r := calibratedReplay(t, 4000, 5)
	temp, err := FitTemperature(r, "m")
	if err != nil {
		t.Fatalf("FitTemperature: %v", err)
	}
	if temp < 0.85 || temp > 1.15 {
		t.Errorf("honest model: fitted temperature %v, want about 1", temp)
	}
	// Sharpen it by a known factor: logits times 3, so T ≈ 3 undoes it.
	honest, err := NLL(r, "m", 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.Len() {
		plan.Calibrate(r.Row("m", i), 1.0/3)
	}
	temp, err = FitTemperature(r, "m")
	if err != nil {
		t.Fatalf("FitTemperature: %v", err)
	}
	if temp < 2.5 || temp > 3.5 {
		t.Errorf("over-confident model: fitted temperature %v, want about 3", temp)
	}
	before, _ := NLL(r, "m", 1)
	after, _ := NLL(r, "m", temp)
	if !(after < before) || math.Abs(after-honest) > 0.02 {
		t.Errorf("NLL before %v, after %v, honest model %v", before, after, honest)
	}
	if _, err := FitTemperature(r, "ghost"); !errors.Is(err, plan.ErrBadReplay) {
		t.Errorf("FitTemperature of an unknown model = %v, want ErrBadReplay", err)
	}
}
