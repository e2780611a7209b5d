package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Factory creates metrics registered with one registerer, each from its
// full name, its help text and, for vectors, its label names, so that a
// service declares a metric in one expression. Like promauto, it panics
// when a registration fails (a programming error: a name used twice).
type Factory struct{ f promauto.Factory }

// With returns a Factory registering with reg (nil: not registered).
func With(reg prometheus.Registerer) Factory { return Factory{promauto.With(reg)} }

// Counter registers a counter.
func (f Factory) Counter(name, help string) prometheus.Counter {
	return f.f.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// CounterVec registers a counter with the given labels.
func (f Factory) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return f.f.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

// Gauge registers a gauge.
func (f Factory) Gauge(name, help string) prometheus.Gauge {
	return f.f.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

// GaugeVec registers a gauge with the given labels.
func (f Factory) GaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return f.f.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
}

// Histogram registers a histogram with the given bucket bounds.
func (f Factory) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	return f.f.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}

// HistogramVec registers a histogram with the given bucket bounds and
// labels.
func (f Factory) HistogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return f.f.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
}
