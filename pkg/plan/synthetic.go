package plan

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// SyntheticModel describes one model of a synthetic ladder.
type SyntheticModel struct {
	Name string
	// Skill is how strongly the model favours the true class (larger is more
	// accurate); 4.5–8.5 gives accuracies from about 78% to 99%.
	Skill float64
	// FixedMs and PerItemMs give the profile: latency(b) = FixedMs + b×PerItemMs.
	FixedMs, PerItemMs float64
}

// SyntheticLadder returns a five-model ladder shaped like the MNIST one:
// each model more accurate and more expensive than the last, with batching
// paying off most for the small models.
func SyntheticLadder() []SyntheticModel {
	return []SyntheticModel{
		{Name: "tiny", Skill: 4.5, FixedMs: 0.08, PerItemMs: 0.004},
		{Name: "small", Skill: 5.5, FixedMs: 0.15, PerItemMs: 0.02},
		{Name: "medium", Skill: 6.5, FixedMs: 0.3, PerItemMs: 0.08},
		{Name: "large", Skill: 7.5, FixedMs: 0.6, PerItemMs: 0.3},
		{Name: "xlarge", Skill: 8.5, FixedMs: 1.0, PerItemMs: 1.0},
	}
}

// SyntheticReplay generates a deterministic replay for tests, benchmarks and
// demos: items have a shared difficulty, so items hard for a cheap model tend
// to be hard for the next, and more skilled models are more accurate and
// more confident when right, as real ladders are.
func SyntheticReplay(seed uint64, items, classes int, models []SyntheticModel) (*Replay, error) {
	if items < 1 || classes < 2 || len(models) == 0 {
		return nil, fmt.Errorf("%w: synthetic replay needs items >= 1, classes >= 2 and a model (got %d, %d, %d)", ErrBadReplay, items, classes, len(models))
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	r := &Replay{Classes: classes, Labels: make([]int32, items), Probs: map[string][]float32{}}
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
			softmaxInto(probs[i*classes:(i+1)*classes], logits)
		}
		r.Probs[m.Name] = probs
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// SyntheticProfile returns the profile file of a synthetic ladder with
// points at batch sizes 1, 2, 4, …, 128.
func SyntheticProfile(models []SyntheticModel, hopOverheadMs float64) *ProfileFile {
	f := &ProfileFile{Version: ProfileFormatVersion, Threads: 1, Overheads: Overheads{HopOverheadMs: hopOverheadMs}, Models: map[string]Profile{}}
	for _, m := range models {
		var p Profile
		p.Threads = 1
		for b := 1; b <= 128; b *= 2 {
			p.Points = append(p.Points, ProfilePoint{Batch: b, LatencyMs: m.FixedMs + float64(b)*m.PerItemMs})
		}
		f.Models[m.Name] = p
	}
	return f
}

func softmaxInto(dst []float32, logits []float64) {
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
