package metrictest

import (
	"errors"
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	dto "github.com/prometheus/client_model/go"
)

var errGather = errors.New("gather failed")

func TestReadsGatheredSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := promauto.With(reg)
	items := f.NewCounterVec(prometheus.CounterOpts{Name: "items_total", Help: "x"}, []string{"model", "outcome"})
	items.WithLabelValues("a", "ok").Add(2)
	items.WithLabelValues("a", "failed").Add(1)
	items.WithLabelValues("b", "ok").Add(4)
	lat := f.NewHistogramVec(prometheus.HistogramOpts{Name: "latency_seconds", Help: "x"}, []string{"model"})
	lat.WithLabelValues("a").Observe(0.5)
	lat.WithLabelValues("a").Observe(1.5)
	f.NewGauge(prometheus.GaugeOpts{Name: "ready", Help: "x"}).Set(1)

	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"every series", Sum(reg, "items_total"), 7},
		{"one label", Sum(reg, "items_total", "outcome", "ok"), 6},
		{"two labels", Sum(reg, "items_total", "model", "a", "outcome", "failed"), 1},
		{"no match", Sum(reg, "items_total", "model", "c"), 0},
		{"histogram count", Sum(reg, "latency_seconds", "model", "a"), 2},
		{"histogram sum", HistogramSum(reg, "latency_seconds", "model", "a"), 2},
		{"gauge", Sum(reg, "ready"), 1},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if got := Values(reg, "items_total", "model", "a"); len(got) != 2 {
		t.Errorf("Values of model a: %v, want two series", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := Lookup(mfs, "items_total", "model", "b", "outcome", "ok"); !ok || v != 4 {
		t.Errorf("Lookup exact: %v %v, want 4 true", v, ok)
	}
	if _, ok := Lookup(mfs, "items_total", "model", "b"); ok {
		t.Error("Lookup matched a series with more labels than asked")
	}
	failing := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return nil, errGather })
	if got := Sum(failing, "items_total"); !math.IsNaN(got) {
		t.Errorf("Sum when gathering fails: %v, want NaN", got)
	}
}
