package plan

import "math"

// Confidence metrics. Higher always means more confident, in [0,1].
const (
	// MetricMargin is the gap between the two largest probabilities, as in
	// the CascadeServe paper. The default.
	MetricMargin = "margin"
	// MetricMaxProb is the largest probability.
	MetricMaxProb = "max_prob"
	// MetricEntropy is 1 − H(p)/log(K): 1 for a one-hot distribution, 0 for
	// a uniform one.
	MetricEntropy = "entropy"
)

// Metrics lists the confidence metrics.
func Metrics() []string { return []string{MetricMargin, MetricMaxProb, MetricEntropy} }

// Confidence returns the confidence of one probability vector under the
// named metric and the arg-max class. Workers and the planner both call it,
// so the planner's replay and the live pipeline decide identically.
// An unknown metric falls back to the margin.
func Confidence(metric string, probs []float32) (conf float64, label int) {
	best, second := -1.0, -1.0
	for i, v := range probs {
		p := float64(v)
		if p > best {
			second, best, label = best, p, i
		} else if p > second {
			second = p
		}
	}
	switch metric {
	case MetricMaxProb:
		return best, label
	case MetricEntropy:
		h := 0.0
		for _, v := range probs {
			if p := float64(v); p > 0 {
				h -= p * math.Log(p)
			}
		}
		if len(probs) < 2 {
			return 1, label
		}
		return max(0, 1-h/math.Log(float64(len(probs)))), label
	default:
		if second < 0 {
			second = 0
		}
		return best - second, label
	}
}

// Calibrate applies temperature scaling in place to a probability vector:
// p_i ← p_i^(1/T) / Σ_j p_j^(1/T), which equals softmax(logits/T) for the
// logits that produced p. T of 0 or 1 leaves p unchanged.
func Calibrate(probs []float32, temperature float64) {
	if temperature == 0 || temperature == 1 {
		return
	}
	inv := 1 / temperature
	// Work in log space relative to the largest probability for stability.
	maxLog := math.Inf(-1)
	for _, v := range probs {
		if v > 0 {
			maxLog = max(maxLog, math.Log(float64(v)))
		}
	}
	sum := 0.0
	for i, v := range probs {
		if v <= 0 {
			probs[i] = 0
			continue
		}
		e := math.Exp((math.Log(float64(v)) - maxLog) * inv)
		probs[i] = float32(e)
		sum += e
	}
	if sum > 0 {
		for i := range probs {
			probs[i] = float32(float64(probs[i]) / sum)
		}
	}
}

// Answers reports whether a stage with the given threshold answers an item
// of confidence conf. The last stage of a cascade always answers.
func Answers(conf, threshold float64, last bool) bool {
	return last || conf >= threshold
}
