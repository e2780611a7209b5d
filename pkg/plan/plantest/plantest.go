// Package plantest builds the plans, replays and profiles that tests and
// benchmarks of the planner, the simulator and the CLI run on: a synthetic
// ladder shaped like the MNIST one with a deterministic replay and a linear
// profile, and a small hand-written plan that passes validation. Nothing
// outside tests imports it.
package plantest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// SmallPlan returns a small hand-written plan that passes Validate: two
// models and two gears, the first a two-stage cascade.
func SmallPlan() *plan.Plan {
	prof := plan.Profile{Threads: 1, Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 1}, {Batch: 8, LatencyMs: 3}}}
	return &plan.Plan{
		Version:    plan.FormatVersion,
		Pipeline:   "mnist",
		SLO:        plan.SLO{P95Ms: 50},
		Capacity:   4,
		Confidence: plan.MetricMargin,
		Input:      plan.Input{Name: "input", Datatype: "FP32", Shape: []int64{1, 28, 28}, Classes: 10},
		Models: []plan.Model{
			{Name: "small", File: "small.onnx", Profile: prof},
			{Name: "big", File: "big.onnx", Profile: prof},
		},
		Ladder: []string{"small", "big"},
		Gears: []plan.Gear{
			{ID: "g1", MaxQPS: 100, Cascade: []plan.Stage{{Model: "small", Threshold: 0.9}, {Model: "big"}},
				Batching: plan.Batching{MaxBatch: 8, MaxDelayMs: 2}, Runners: map[string]float64{"small": 0.25, "big": 0.75},
				Predicted: plan.Prediction{Accuracy: 0.99, P95Ms: 10, CostMsPerItem: 1, Reach: []float64{1, 0.2}}},
			{ID: "g2", MaxQPS: 500, Cascade: []plan.Stage{{Model: "small"}},
				Batching: plan.Batching{MaxBatch: 32, MaxDelayMs: 1}, Runners: map[string]float64{"small": 1},
				Predicted: plan.Prediction{Accuracy: 0.95, P95Ms: 5, CostMsPerItem: 0.2, Reach: []float64{1}}},
		},
		Hysteresis: plan.DefaultHysteresis(),
	}
}

// Model describes one model of a synthetic ladder.
type Model struct {
	Name string
	// Skill is how strongly the model favours the true class (larger is more
	// accurate); 4.5–8.5 gives accuracies from about 78% to 99%.
	Skill float64
	// FixedMs and PerItemMs give the profile: latency(b) = FixedMs + b×PerItemMs.
	FixedMs, PerItemMs float64
}

// Ladder returns a five-model ladder shaped like the MNIST one: each model
// more accurate and more expensive than the last, with batching paying off
// most for the small models.
func Ladder() []Model {
	return []Model{
		{Name: "tiny", Skill: 4.5, FixedMs: 0.08, PerItemMs: 0.004},
		{Name: "small", Skill: 5.5, FixedMs: 0.15, PerItemMs: 0.02},
		{Name: "medium", Skill: 6.5, FixedMs: 0.3, PerItemMs: 0.08},
		{Name: "large", Skill: 7.5, FixedMs: 0.6, PerItemMs: 0.3},
		{Name: "xlarge", Skill: 8.5, FixedMs: 1.0, PerItemMs: 1.0},
	}
}

// Replay generates a deterministic replay of a synthetic ladder, failing t
// on bad arguments: items have a shared difficulty, so items hard for a cheap model tend
// to be hard for the next, and more skilled models are more accurate and
// more confident when right, as real ladders are.
func Replay(t testing.TB, seed uint64, items, classes int, models []Model) *plan.Replay {
	t.Helper()
	r, err := replay(seed, items, classes, models)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// JSON is p.Marshal, failing t if it fails.
func JSON(t testing.TB, p *plan.Plan) []byte {
	t.Helper()
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WriteFile writes p as plan.json into a new temporary folder and returns
// the file's path, failing t if it cannot.
func WriteFile(t testing.TB, p *plan.Plan) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(file, JSON(t, p), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// SmallReplay is the replay of the ladder's first two models on 50 items
// of 4 classes.
func SmallReplay(t testing.TB) *plan.Replay {
	t.Helper()
	return Replay(t, 3, 50, 4, Ladder()[:2])
}

func replay(seed uint64, items, classes int, models []Model) (*plan.Replay, error) {
	if items < 1 || classes < 2 || len(models) == 0 {
		return nil, fmt.Errorf("%w: synthetic replay needs items >= 1, classes >= 2 and a model (got %d, %d, %d)", plan.ErrBadReplay, items, classes, len(models))
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	r := &plan.Replay{Classes: classes, Labels: make([]int32, items), Probs: map[string][]float32{}}
	difficulty := make([]float64, items)
	for i := range items {
		r.Labels[i] = int32(rng.IntN(classes))
		// A long tail of hard items.
		difficulty[i] = math.Pow(rng.Float64(), 3) * 6
	}
	logits := make([]float64, classes)
	for _, m := range models {
		r.Models = append(r.Models, m.Name)
		probs := make([]float32, items*classes)
		for i := range items {
			for c := range logits {
				logits[c] = rng.NormFloat64()
			}
			logits[r.Labels[i]] += m.Skill - difficulty[i]
			Softmax(probs[i*classes:(i+1)*classes], logits)
		}
		r.Probs[m.Name] = probs
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// ProfileFile returns the profile file of a synthetic ladder: each model's
// LinearProfile, measured with one thread, and a hop overhead.
func ProfileFile(models []Model, hopOverheadMs float64) *plan.ProfileFile {
	f := &plan.ProfileFile{Version: plan.ProfileFormatVersion, Threads: 1, Overheads: plan.Overheads{HopOverheadMs: hopOverheadMs}, Models: map[string]plan.Profile{}}
	for _, m := range models {
		p := LinearProfile(m.FixedMs, m.PerItemMs)
		p.Threads = 1
		f.Models[m.Name] = p
	}
	return f
}

// LinearProfile returns a profile with points at batch sizes 1, 2, 4, …,
// 128 of latency fixedMs + b × perItemMs.
func LinearProfile(fixedMs, perItemMs float64) plan.Profile {
	var p plan.Profile
	for b := 1; b <= 128; b *= 2 {
		p.Points = append(p.Points, plan.ProfilePoint{Batch: b, LatencyMs: fixedMs + float64(b)*perItemMs})
	}
	return p
}

// Softmax writes softmax(logits) into dst.
func Softmax(dst []float32, logits []float64) {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = max(mx, v)
	}
	sum := 0.0
	for _, v := range logits {
		sum += math.Exp(v - mx)
	}
	for c, v := range logits {
		dst[c] = float32(math.Exp(v-mx) / sum)
	}
}

// ReplayGear replays gear g of plan p on r as the workers decide (the
// models' temperatures, the plan's confidence metric, the stages'
// thresholds): every item's label, the model that answered it, and whether
// a decision was a near-tie (a confidence within 1e-4 of a threshold, where
// float rounding differences between batch sizes may flip it).
func ReplayGear(p *plan.Plan, g plan.Gear, r *plan.Replay) (labels []int, by []string, tie []bool) {
	n := r.Len()
	labels, by, tie = make([]int, n), make([]string, n), make([]bool, n)
	probs := make([]float32, r.Classes)
	for i := range n {
		for s, st := range g.Cascade {
			m, _ := p.Model(st.Model)
			copy(probs, r.Row(st.Model, i))
			plan.Calibrate(probs, m.Temperature)
			conf, label := plan.Confidence(p.Confidence, probs)
			last := s == len(g.Cascade)-1
			if !last && math.Abs(conf-st.Threshold) < 1e-4 {
				tie[i] = true
			}
			if plan.Answers(conf, st.Threshold, last) {
				labels[i], by[i] = label, st.Model
				break
			}
		}
	}
	return labels, by, tie
}
