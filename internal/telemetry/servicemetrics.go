package telemetry

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// DurationBuckets go from 50µs to ~13s, doubling: the sub-millisecond
// hops of small models are resolved. The services' latency histograms
// share them.
var DurationBuckets = prometheus.ExponentialBuckets(50e-6, 2, 19)

// ServiceMetrics are the gauges every service exports alike under its
// metric prefix (cascade_ingress, cascade_worker, cascade_controller):
// <prefix>_ready, which /readyz reads (Handler), and the gear of the plan
// the service applies, as <prefix>_gear_index and <prefix>_gear_info{gear}.
type ServiceMetrics struct {
	// Ready is 1 once the service serves.
	Ready prometheus.Gauge
	// GearIndex is the index in the plan of the gear the service applies.
	GearIndex prometheus.Gauge
	gearInfo  *prometheus.GaugeVec

	mu     sync.Mutex // guards gearID
	gearID string
}

// ServiceMetricNames are the names of the ServiceMetrics of a service
// whose metric names start with prefix.
func ServiceMetricNames(prefix string) (ready, gearIndex, gearInfo string) {
	return prefix + "_ready", prefix + "_gear_index", prefix + "_gear_info"
}

// NewServiceMetrics registers a service's gauges with f (named by
// ServiceMetricNames): ready says when the service is ready, gear which
// gear it applies ("the gear in force").
func NewServiceMetrics(f Factory, prefix, ready, gear string) *ServiceMetrics {
	readyName, indexName, infoName := ServiceMetricNames(prefix)
	return &ServiceMetrics{
		Ready:     f.Gauge(readyName, ready),
		GearIndex: f.Gauge(indexName, fmt.Sprintf("Index in the plan of %s (0: the most accurate gear).", gear)),
		gearInfo: f.GaugeVec(infoName,
			fmt.Sprintf("1 for the id of %s (one series; joins %s to the gear id).", gear, indexName), "gear"),
	}
}

// SetGear records the gear the service applies: its index, and its id as
// the one series of <prefix>_gear_info (the previous gear's is deleted).
func (m *ServiceMetrics) SetGear(index int, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.GearIndex.Set(float64(index))
	if id != m.gearID {
		m.gearInfo.DeleteLabelValues(m.gearID)
		m.gearID = id
	}
	m.gearInfo.WithLabelValues(id).Set(1)
}

// ZeroSeries creates, at zero, the series of vec for every combination of
// the label values given per label, in the vector's label order. Every
// series an alert rule or a dashboard reads must exist from the start:
// rate() and increase() see nothing of a series born with its first event.
func ZeroSeries(vec *prometheus.MetricVec, values ...[]string) {
	var create func(prefix []string, rest [][]string)
	create = func(prefix []string, rest [][]string) {
		if len(rest) == 0 {
			if _, err := vec.GetMetricWithLabelValues(prefix...); err != nil {
				panic(err) // as WithLabelValues: a programming error
			}
			return
		}
		for _, v := range rest[0] {
			create(append(prefix[:len(prefix):len(prefix)], v), rest[1:])
		}
	}
	create(nil, values)
}
