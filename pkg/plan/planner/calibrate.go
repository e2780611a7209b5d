package planner

import (
	"fmt"
	"math"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Temperature search range of FitTemperature.
const (
	MinTemperature = 0.05
	MaxTemperature = 20.0
)

// NLL returns the mean negative log-likelihood of the labels under a model's
// replay probabilities after temperature scaling with Calibrate (T of 0 or 1
// means none). Probabilities are floored at 1e-12 so a confident mistake
// costs a large but finite amount.
func NLL(r *plan.Replay, model string, temperature float64) (float64, error) {
	if _, ok := r.Probs[model]; !ok {
		return 0, fmt.Errorf("%w: model %q not in replay (have %v)", plan.ErrBadReplay, model, r.Models)
	}
	if r.Len() == 0 {
		return 0, fmt.Errorf("%w: no items", plan.ErrBadReplay)
	}
	row := make([]float32, r.Classes)
	sum := 0.0
	for i, l := range r.Labels {
		copy(row, r.Row(model, i))
		plan.Calibrate(row, temperature)
		sum -= math.Log(max(float64(row[l]), 1e-12))
	}
	return sum / float64(r.Len()), nil
}

// FitTemperature finds the temperature in [MinTemperature, MaxTemperature]
// that minimises the model's NLL on the replay (temperature scaling), by
// golden-section search over log T. The result is rounded to 4 significant
// digits so plan files stay readable; the evaluation uses the rounded value,
// like the workers do.
func FitTemperature(r *plan.Replay, model string) (float64, error) {
	f := func(logT float64) float64 {
		v, _ := NLL(r, model, math.Exp(logT))
		return v
	}
	if _, err := NLL(r, model, 1); err != nil {
		return 0, fmt.Errorf("fit temperature: %w", err)
	}
	lo, hi := math.Log(MinTemperature), math.Log(MaxTemperature)
	phi := (math.Sqrt(5) - 1) / 2
	a, b := hi-phi*(hi-lo), lo+phi*(hi-lo)
	fa, fb := f(a), f(b)
	for hi-lo > 1e-4 {
		if fa <= fb {
			hi, b, fb = b, a, fa
			a = hi - phi*(hi-lo)
			fa = f(a)
		} else {
			lo, a, fa = a, b, fb
			b = lo + phi*(hi-lo)
			fb = f(b)
		}
	}
	t := roundSig(math.Exp((lo+hi)/2), 4)
	// Temperature scaling must never be worse than no scaling on the data it
	// was fitted on; golden-section search assumes one minimum, so check.
	if f(math.Log(t)) > f(0) {
		return 1, nil
	}
	return t, nil
}

// roundSig rounds x to d significant decimal digits.
func roundSig(x float64, d int) float64 {
	if x == 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return x
	}
	p := math.Pow(10, float64(d)-math.Ceil(math.Log10(math.Abs(x))))
	return math.Round(x*p) / p
}
