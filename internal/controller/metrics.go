package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// errorOps are the operations of the decision loop (label op of
// cascade_controller_errors_total).
var errorOps = []string{"apply_topology", "put_plan", "read_gear", "write_gear", "consumer_info", "jobs_consumer_info", "decode_stats", "decode_heartbeat"}

// metrics are one controller instance's Prometheus metrics.
type metrics struct {
	// ServiceMetrics are cascade_controller_ready and the gear in force.
	*telemetry.ServiceMetrics
	intakeQPS      prometheus.Gauge
	ingresses      prometheus.Gauge
	liveRunners    prometheus.Gauge
	liveWorkers    prometheus.Gauge
	backlog        *prometheus.GaugeVec
	switches       *prometheus.CounterVec
	casConflicts   prometheus.Counter
	errors         *prometheus.CounterVec
	decisionLoop   prometheus.Histogram
	planRevision   prometheus.Gauge
	gearWriteDelay prometheus.Histogram
}

// newMetrics registers the controller's metrics with reg, every series an
// alert or the dashboard reads created at zero (rate() sees nothing of a
// series born with its first event), and p's gear count and SLO exported
// for the dashboard and the alert rules.
func newMetrics(reg prometheus.Registerer, p *plan.Plan) *metrics {
	f := promauto.With(reg)
	f.NewGauge(prometheus.GaugeOpts{
		Name: "cascade_controller_plan_gears",
		Help: "Gears in the plan the controller serves (the last, cheapest, has index gears - 1).",
	}).Set(float64(len(p.Gears)))
	f.NewGauge(prometheus.GaugeOpts{
		Name: "cascade_controller_plan_slo_p95_seconds",
		Help: "The plan's p95 end-to-end latency objective.",
	}).Set(p.SLO.P95Ms / 1000)
	m := &metrics{
		ServiceMetrics: telemetry.NewServiceMetrics(f, "cascade_controller",
			"1 once the topology is applied and a gear is in force.", "the gear in force"),
		intakeQPS: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_intake_requests_per_second",
			Help: "Measured intake rate: requests admitted per second over the rate window, all ingress instances.",
		}),
		ingresses: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_ingress_instances",
			Help: "Ingress instances whose stats arrived recently.",
		}),
		liveRunners: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_live_runners",
			Help: "Runners of the stage workers whose heartbeats are current: the live capacity every gear's max_qps is scaled to (× live / plan capacity).",
		}),
		liveWorkers: f.NewGauge(prometheus.GaugeOpts{
			Name: "cascade_controller_live_workers",
			Help: "Stage workers whose heartbeats are current.",
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
	telemetry.ZeroSeries(m.switches.MetricVec, []string{string(Up), string(Down)})
	telemetry.ZeroSeries(m.errors.MetricVec, errorOps)
	telemetry.ZeroSeries(m.backlog.MetricVec, p.UsedModels(), []string{"pending", "ack_pending"})
	return m
}
