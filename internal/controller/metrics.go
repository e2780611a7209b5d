package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are one controller instance's Prometheus metrics.
type metrics struct {
	gearIndex      prometheus.Gauge
	intakeQPS      prometheus.Gauge
	ingresses      prometheus.Gauge
	backlog        *prometheus.GaugeVec
	switches       *prometheus.CounterVec
	casConflicts   prometheus.Counter
	errors         *prometheus.CounterVec
	decisionLoop   prometheus.Histogram
	planRevision   prometheus.Gauge
	gearWriteDelay prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		gearIndex: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_gear_index",
			Help: "Index in the plan of the gear in force (0 = most accurate).",
		}),
		intakeQPS: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_intake_requests_per_second",
			Help: "Measured intake rate: requests admitted per second over the rate window, all ingress instances.",
		}),
		ingresses: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_ingress_instances",
			Help: "Ingress instances whose stats arrived recently.",
		}),
		backlog: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cascade_controller_backlog_messages",
			Help: "Items queued per model: state=pending (not delivered) or ack_pending (delivered, not acked).",
		}, []string{"model", "state"}),
		switches: f.NewCounterVec(prometheus.CounterOpts{
			Name: "cascade_controller_gear_switches_total",
			Help: "Gear switches written, by direction (up = cheaper, down = more accurate).",
		}, []string{"direction"}),
		casConflicts: f.NewCounter(prometheus.CounterOpts{
			Name: "cascade_controller_gear_cas_conflicts_total",
			Help: "Writes of the gear key that lost a compare-and-set to another writer.",
		}),
		errors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "cascade_controller_errors_total",
			Help: "Failed operations of the decision loop, by operation.",
		}, []string{"op"}),
		decisionLoop: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "cascade_controller_decision_duration_seconds",
			Help:    "Time of one decision loop tick: measure, decide and (on a switch) write.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		planRevision: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_plan_revision",
			Help: "KV revision of the plan key the controller serves.",
		}),
		gearWriteDelay: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "cascade_controller_gear_write_seconds",
			Help:    "Time from GearState.AtUnixNano to the acknowledged KV write of a gear switch.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}),
	}
}
