// Package metrictest reads what a Prometheus registry gathers, for the
// services' tests: the value of a series, or the sum over the series of a
// metric whose labels match.
package metrictest

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Values returns the value of every series of metric name in g whose
// labels include the label pairs (name, value, name, value, ...), in the
// order g gathers them: a counter's or a gauge's value, a histogram's
// sample count. It returns nil when none matches, and a single NaN when
// gathering fails, so that a comparison with it fails.
func Values(g prometheus.Gatherer, name string, labels ...string) []float64 {
	return values(g, name, labels, false)
}

// Sum returns the sum of Values.
func Sum(g prometheus.Gatherer, name string, labels ...string) float64 {
	return sum(values(g, name, labels, false))
}

// HistogramSum returns the sum of the sample sums of the histogram series
// of metric name in g whose labels include the label pairs.
func HistogramSum(g prometheus.Gatherer, name string, labels ...string) float64 {
	return sum(values(g, name, labels, true))
}

// Lookup returns the value (as Values) of the series of metric name whose
// labels are exactly the label pairs, and whether there is one.
func Lookup(mfs []*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel())*2 == len(labels) && match(m, labels) {
				return value(m, false), true
			}
		}
	}
	return 0, false
}

func values(g prometheus.Gatherer, name string, labels []string, histSum bool) []float64 {
	mfs, err := g.Gather()
	if err != nil {
		return []float64{math.NaN()}
	}
	var out []float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if match(m, labels) {
				out = append(out, value(m, histSum))
			}
		}
	}
	return out
}

// match reports whether m has every label pair of labels.
func match(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func value(m *dto.Metric, histSum bool) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil && histSum:
		return m.GetHistogram().GetSampleSum()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

func sum(vs []float64) float64 {
	total := 0.0
	for _, v := range vs {
		total += v
	}
	return total
}
