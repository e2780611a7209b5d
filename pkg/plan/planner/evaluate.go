package planner

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// ErrBadCascade marks a cascade that cannot be evaluated: an empty one, a
// model that is not in the evaluator's ladder, a model used twice or out of
// ladder order.
var ErrBadCascade = errors.New("bad cascade")

// Evaluator computes the exact accuracy, per-stage reach and expected cost of
// any cascade over a replay. It computes every model's confidence and
// correctness for every item once, with Calibrate, Confidence and Answers as
// the workers call them, so evaluating a cascade is O(items × stages) and the
// live pipeline's decisions equal the replay's.
type Evaluator struct {
	metric string
	n      int
	ladder []string
	index  map[string]int
	// conf[m][i] and correct[m][i] are model m's confidence in item i and
	// whether its arg-max class is item i's label.
	conf    [][]float64
	correct [][]bool
	// costMs[m] is model m's compute per item in runner-ms.
	costMs []float64
	temps  []float64
}

// EvaluatorConfig configures NewEvaluator.
type EvaluatorConfig struct {
	// Ladder lists the models from cheapest to most accurate; cascades keep
	// this order. Empty means the replay's model order.
	Ladder []string
	// Metric is the confidence metric (MetricMargin when empty).
	Metric string
	// Temperatures maps a model to its calibration temperature (see
	// Calibrate); a missing model is not calibrated.
	Temperatures map[string]float64
	// CostMs maps a model to its compute per item in runner-ms (for example
	// Profile.ItemCostMs at the planner's reference batch size). A missing
	// model costs 0.
	CostMs map[string]float64
}

// NewEvaluator precomputes confidences and correctness of every ladder model
// on every replay item.
func NewEvaluator(r *plan.Replay, cfg EvaluatorConfig) (*Evaluator, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: no replay", plan.ErrBadReplay)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	metric := cfg.Metric
	if metric == "" {
		metric = plan.MetricMargin
	}
	if !slices.Contains(plan.Metrics(), metric) {
		return nil, fmt.Errorf("confidence metric %q is not one of %v", metric, plan.Metrics())
	}
	ladder := cfg.Ladder
	if len(ladder) == 0 {
		ladder = r.Models
	}
	e := &Evaluator{
		metric: metric,
		n:      r.Len(),
		ladder: slices.Clone(ladder),
		index:  make(map[string]int, len(ladder)),
	}
	row := make([]float32, r.Classes)
	for mi, name := range ladder {
		if _, dup := e.index[name]; dup {
			return nil, fmt.Errorf("%w: ladder lists %q twice", ErrBadCascade, name)
		}
		if _, ok := r.Probs[name]; !ok {
			return nil, fmt.Errorf("%w: model %q not in replay (have %v)", plan.ErrBadReplay, name, r.Models)
		}
		e.index[name] = mi
		t := cfg.Temperatures[name]
		conf := make([]float64, e.n)
		correct := make([]bool, e.n)
		for i := range e.n {
			copy(row, r.Row(name, i))
			plan.Calibrate(row, t)
			c, label := plan.Confidence(metric, row)
			conf[i] = c
			correct[i] = label == int(r.Labels[i])
		}
		e.conf = append(e.conf, conf)
		e.correct = append(e.correct, correct)
		e.costMs = append(e.costMs, cfg.CostMs[name])
		e.temps = append(e.temps, t)
	}
	return e, nil
}

// Len returns the number of replay items.
func (e *Evaluator) Len() int { return e.n }

// Ladder returns the ladder, cheapest first.
func (e *Evaluator) Ladder() []string { return slices.Clone(e.ladder) }

// Metric returns the confidence metric.
func (e *Evaluator) Metric() string { return e.metric }

// CostMs returns the per-item cost the evaluator charges for a model.
func (e *Evaluator) CostMs(model string) float64 {
	if i, ok := e.index[model]; ok {
		return e.costMs[i]
	}
	return 0
}

// Confidences returns a copy of a model's confidence in every item.
func (e *Evaluator) Confidences(model string) []float64 {
	if i, ok := e.index[model]; ok {
		return slices.Clone(e.conf[i])
	}
	return nil
}

// ModelAccuracy returns the accuracy of a model alone.
func (e *Evaluator) ModelAccuracy(model string) float64 {
	i, ok := e.index[model]
	if !ok {
		return 0
	}
	n := 0
	for _, c := range e.correct[i] {
		if c {
			n++
		}
	}
	return float64(n) / float64(e.n)
}

// Evaluation is what a cascade does on the replay.
type Evaluation struct {
	// Items is the number of replay items; Correct of them are answered
	// with their label.
	Items   int `json:"items"`
	Correct int `json:"correct"`
	// Accuracy is Correct/Items, exact.
	Accuracy float64 `json:"accuracy"`
	// Reach[j] is the fraction of items that reach stage j (Reach[0] = 1).
	Reach []float64 `json:"reach"`
	// AnsweredBy[j] is the fraction of items stage j answers; they sum to 1.
	AnsweredBy []float64 `json:"answered_by"`
	// CostMsPerItem is Σ_j Reach[j] × per-item cost of stage j's model.
	CostMsPerItem float64 `json:"cost_ms_per_item"`
}

// Evaluate replays a cascade. Thresholds of the last stage are ignored (it
// always answers).
func (e *Evaluator) Evaluate(stages []plan.Stage) (Evaluation, error) {
	idx, err := e.resolve(stages)
	if err != nil {
		return Evaluation{}, err
	}
	k := len(stages)
	reached := make([]int, k)
	answered := make([]int, k)
	correct := 0
	for i := range e.n {
		for j, m := range idx {
			reached[j]++
			if plan.Answers(e.conf[m][i], stages[j].Threshold, j == k-1) {
				answered[j]++
				if e.correct[m][i] {
					correct++
				}
				break
			}
		}
	}
	return e.evaluation(idx, reached, answered, correct), nil
}

// evaluation builds an Evaluation from integer counts; the cost sum follows
// stage order so that every code path computes bit-identical costs.
func (e *Evaluator) evaluation(idx []int, reached, answered []int, correct int) Evaluation {
	n := float64(e.n)
	ev := Evaluation{
		Items:      e.n,
		Correct:    correct,
		Accuracy:   float64(correct) / n,
		Reach:      make([]float64, len(idx)),
		AnsweredBy: make([]float64, len(idx)),
	}
	cost := 0.0
	for j, m := range idx {
		ev.Reach[j] = float64(reached[j]) / n
		ev.AnsweredBy[j] = float64(answered[j]) / n
		cost += float64(reached[j]) * e.costMs[m]
	}
	ev.CostMsPerItem = cost / n
	return ev
}

// AnsweredAt returns, for every replay item, the index of the stage that
// answers it.
func (e *Evaluator) AnsweredAt(stages []plan.Stage) ([]int, error) {
	idx, err := e.resolve(stages)
	if err != nil {
		return nil, err
	}
	out := make([]int, e.n)
	for i := range e.n {
		for j, m := range idx {
			if plan.Answers(e.conf[m][i], stages[j].Threshold, j == len(idx)-1) {
				out[i] = j
				break
			}
		}
	}
	return out, nil
}

// resolve maps stage models to ladder indices and checks the cascade.
func (e *Evaluator) resolve(stages []plan.Stage) ([]int, error) {
	if len(stages) == 0 {
		return nil, fmt.Errorf("%w: no stages", ErrBadCascade)
	}
	idx := make([]int, len(stages))
	for j, s := range stages {
		m, ok := e.index[s.Model]
		if !ok {
			return nil, fmt.Errorf("%w: model %q is not in the ladder %v", ErrBadCascade, s.Model, e.ladder)
		}
		if j > 0 && m <= idx[j-1] {
			return nil, fmt.Errorf("%w: %s does not follow ladder order %v (or repeats a model)", ErrBadCascade, plan.CascadeString(stages), e.ladder)
		}
		idx[j] = m
	}
	return idx, nil
}
