package plan

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func TestConfidence(t *testing.T) {
	tests := []struct {
		name      string
		metric    string
		probs     []float32
		want      float64
		wantLabel int
	}{
		{"margin", MetricMargin, []float32{0.1, 0.6, 0.3}, 0.3, 1},
		{"margin one-hot", MetricMargin, []float32{0, 0, 1}, 1, 2},
		{"margin tie", MetricMargin, []float32{0.5, 0.5}, 0, 0},
		{"margin single class", MetricMargin, []float32{1}, 1, 0},
		{"unknown falls back to margin", "nope", []float32{0.1, 0.6, 0.3}, 0.3, 1},
		{"max prob", MetricMaxProb, []float32{0.1, 0.6, 0.3}, 0.6, 1},
		{"entropy one-hot", MetricEntropy, []float32{0, 1, 0, 0}, 1, 1},
		{"entropy uniform", MetricEntropy, []float32{0.25, 0.25, 0.25, 0.25}, 0, 0},
		{"entropy half", MetricEntropy, []float32{0.5, 0.5, 0, 0}, 0.5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, label := Confidence(tt.metric, tt.probs)
			if math.Abs(got-tt.want) > 1e-6 || label != tt.wantLabel {
				t.Errorf("Confidence = %v, %d; want %v, %d", got, label, tt.want, tt.wantLabel)
			}
		})
	}
}

func TestCalibrate(t *testing.T) {
	logits := []float64{2, 1, 0.5, -1}
	probs := func(scale float64) []float32 {
		l := make([]float64, len(logits))
		for i, v := range logits {
			l[i] = v * scale
		}
		p := make([]float32, len(l))
		softmaxInto(p, l)
		return p
	}
	for _, temp := range []float64{0.25, 0.5, 2, 10} {
		p := probs(1)
		Calibrate(p, temp)
		want := probs(1 / temp) // softmax(logits/T)
		for i := range p {
			if math.Abs(float64(p[i]-want[i])) > 1e-6 {
				t.Errorf("T=%v: p[%d] = %v, want %v", temp, i, p[i], want[i])
			}
		}
	}
	for _, temp := range []float64{0, 1} {
		p := probs(1)
		orig := append([]float32(nil), p...)
		Calibrate(p, temp)
		for i := range p {
			if p[i] != orig[i] {
				t.Errorf("T=%v changed p", temp)
			}
		}
	}
	// Zero probabilities stay zero; the rest renormalise.
	p := []float32{0, 0.5, 0.5}
	Calibrate(p, 3)
	if p[0] != 0 || math.Abs(float64(p[1])-0.5) > 1e-7 {
		t.Errorf("Calibrate with a zero = %v", p)
	}
}

func TestAnswers(t *testing.T) {
	tests := []struct {
		conf, thr float64
		last      bool
		want      bool
	}{
		{0.5, 0.5, false, true}, // at the threshold answers
		{0.49, 0.5, false, false},
		{0, 0.9, true, true}, // the last stage always answers
		{1, 0, false, true},
	}
	for _, tt := range tests {
		if got := Answers(tt.conf, tt.thr, tt.last); got != tt.want {
			t.Errorf("Answers(%v, %v, %v) = %v", tt.conf, tt.thr, tt.last, got)
		}
	}
}

// calibratedReplay returns a model whose probabilities are honest: every
// label is drawn from the model's own distribution.
func calibratedReplay(t *testing.T, n, classes int) *Replay {
	t.Helper()
	rng := rand.New(rand.NewPCG(11, 12))
	r := &Replay{Classes: classes, Labels: make([]int32, n), Models: []string{"m"}, Probs: map[string][]float32{"m": make([]float32, n*classes)}}
	logits := make([]float64, classes)
	for i := range n {
		for c := range logits {
			logits[c] = 2 * rng.NormFloat64()
		}
		row := r.Row("m", i)
		softmaxInto(row, logits)
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
		Calibrate(r.Row("m", i), 1.0/3)
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
	if _, err := FitTemperature(r, "ghost"); !errors.Is(err, ErrBadReplay) {
		t.Errorf("FitTemperature of an unknown model = %v, want ErrBadReplay", err)
	}
}
