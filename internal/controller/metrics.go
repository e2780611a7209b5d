package controller

import (
	"github.com/prometheus/client_golang/prometheus"

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
	envelopeItems  prometheus.Gauge
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
	f := telemetry.With(reg)
	f.Gauge("cascade_controller_plan_gears",
		"Gears in the plan the controller serves (the last, cheapest, has index gears - 1).").Set(float64(len(p.Gears)))
	f.Gauge("cascade_controller_plan_slo_p95_seconds",
		"The plan's p95 end-to-end latency objective.").Set(p.SLO.P95Ms / 1000)
	m := &metrics{
		ServiceMetrics: telemetry.NewServiceMetrics(f, "cascade_controller",
			"1 once the topology is applied and a gear is in force.", "the gear in force"),
		intakeQPS: f.Gauge("cascade_controller_intake_requests_per_second",
			"Measured intake rate: requests admitted per second over the rate window, all ingress instances."),
		envelopeItems: f.Gauge("cascade_controller_items_per_envelope",
			"Mean items per envelope the ingress instances published to first stages over the rate window (0: none published): what one message of a first stage's queue holds."),
		ingresses: f.Gauge("cascade_controller_ingress_instances",
			"Ingress instances whose stats arrived recently."),
		liveRunners: f.Gauge("cascade_controller_live_runners",
			"Runners of the stage workers whose heartbeats are current: the live capacity every gear's max_qps is scaled to (× live / plan capacity)."),
		liveWorkers: f.Gauge("cascade_controller_live_workers",
			"Stage workers whose heartbeats are current."),
		backlog: f.GaugeVec("cascade_controller_backlog_messages",
			"Messages (envelopes of items) queued per model: state=pending (not delivered) or ack_pending (delivered, not acked).", "model", "state"),
		switches: f.CounterVec("cascade_controller_gear_switches_total",
			"Gear switches written, by direction (up = cheaper, down = more accurate).", "direction"),
		casConflicts: f.Counter("cascade_controller_gear_cas_conflicts_total",
			"Writes of the gear key that lost a compare-and-set to another writer."),
		errors: f.CounterVec("cascade_controller_errors_total",
			"Failed operations of the decision loop, by operation.", "op"),
		decisionLoop: f.Histogram("cascade_controller_decision_duration_seconds",
			"Time of one decision loop tick: measure, decide and (on a switch) write.", prometheus.ExponentialBuckets(0.0001, 2, 16)),
		planRevision: f.Gauge("cascade_controller_plan_revision",
			"KV revision of the plan key the controller serves."),
		gearWriteDelay: f.Histogram("cascade_controller_gear_write_seconds",
			"Time from GearState.AtUnixNano to the acknowledged KV write of a gear switch.", prometheus.ExponentialBuckets(0.00005, 2, 16)),
	}
	telemetry.ZeroSeries(m.switches.MetricVec, []string{string(Up), string(Down)})
	telemetry.ZeroSeries(m.errors.MetricVec, errorOps)
	telemetry.ZeroSeries(m.backlog.MetricVec, p.UsedModels(), []string{"pending", "ack_pending"})
	return m
}
