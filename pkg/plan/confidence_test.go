package plan_test

import (
	"math"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"

	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

func TestConfidence(t *testing.T) {
	tests := []struct {
		name      string
		metric    string
		probs     []float32
		want      float64
		wantLabel int
	}{
		{"margin", plan.MetricMargin, []float32{0.1, 0.6, 0.3}, 0.3, 1},
		{"margin one-hot", plan.MetricMargin, []float32{0, 0, 1}, 1, 2},
		{"margin tie", plan.MetricMargin, []float32{0.5, 0.5}, 0, 0},
		{"margin single class", plan.MetricMargin, []float32{1}, 1, 0},
		{"unknown falls back to margin", "nope", []float32{0.1, 0.6, 0.3}, 0.3, 1},
		{"max prob", plan.MetricMaxProb, []float32{0.1, 0.6, 0.3}, 0.6, 1},
		{"entropy one-hot", plan.MetricEntropy, []float32{0, 1, 0, 0}, 1, 1},
		{"entropy uniform", plan.MetricEntropy, []float32{0.25, 0.25, 0.25, 0.25}, 0, 0},
		{"entropy half", plan.MetricEntropy, []float32{0.5, 0.5, 0, 0}, 0.5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, label := plan.Confidence(tt.metric, tt.probs)
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
		plantest.Softmax(p, l)
		return p
	}
	for _, temp := range []float64{0.25, 0.5, 2, 10} {
		p := probs(1)
		plan.Calibrate(p, temp)
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
		plan.Calibrate(p, temp)
		for i := range p {
			if p[i] != orig[i] {
				t.Errorf("T=%v changed p", temp)
			}
		}
	}
	// Zero probabilities stay zero; the rest renormalise.
	p := []float32{0, 0.5, 0.5}
	plan.Calibrate(p, 3)
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
		if got := plan.Answers(tt.conf, tt.thr, tt.last); got != tt.want {
			t.Errorf("Answers(%v, %v, %v) = %v", tt.conf, tt.thr, tt.last, got)
		}
	}
}
