package stageworker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Outcomes of an item at one stage (label outcome of
// cascade_worker_items_total).
const (
	outcomeAnswered  = "answered"
	outcomeEscalated = "escalated"
	outcomeExpired   = "expired"
	outcomeDegraded  = "degraded"
	outcomeFailed    = "failed"
	// outcomeRetried: the model failed on the item alone; it went back to
	// the queue for another try.
	outcomeRetried = "retried"
)

// Reasons of a degraded answer (label reason of
// cascade_worker_degraded_total).
const (
	degradedDeadline  = "deadline"
	degradedQueueFull = "queue_full"
)

// metrics are one worker's Prometheus metrics, registered per instance.
type metrics struct {
	// ServiceMetrics are cascade_worker_ready and the gear this worker
	// applies.
	*telemetry.ServiceMetrics
	items        *prometheus.CounterVec
	degraded     *prometheus.CounterVec
	batchSize    *prometheus.HistogramVec
	queue        *prometheus.HistogramVec
	compute      *prometheus.HistogramVec
	gearApply    prometheus.Histogram
	redeliveries *prometheus.CounterVec
	acks         *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec
	backlog      *prometheus.GaugeVec
	pulls        *prometheus.CounterVec
	// refusedReplies counts results not sent to a reply subject outside
	// the inbox prefix (a forged or broken reply route).
	refusedReplies *prometheus.CounterVec
	// e2e is the end-to-end latency of requests whose callers the workers
	// answer (msgpack request-reply, durable jobs), by door.
	e2e *prometheus.HistogramVec
	// itemRetries counts items a model failed on alone (each goes back to
	// its queue, or to the dead letters on its last try).
	itemRetries *prometheus.CounterVec
	// nonFinite counts items whose model output was NaN or infinite.
	nonFinite *prometheus.CounterVec
	// results are the cumulative counters of the worker's heartbeat.
	results *resultStats
}

// Pull kinds (label kind of cascade_worker_pulls_total).
var pullKinds = []string{"watch", "fill", "nowait"}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := telemetry.With(reg)
	m := &metrics{
		ServiceMetrics: telemetry.NewServiceMetrics(f, "cascade_worker",
			"1 once the worker has its plan and topology and has loaded its models.",
			"the gear this worker applies"),
		results: newResultStats(),
		refusedReplies: f.CounterVec("cascade_worker_refused_replies_total",
			"Results not published to an item's reply subject because it is not a literal subject under the inbox prefix (CASCADE_INBOX_PREFIX), per model.", "model"),
		e2e: f.HistogramVec("cascade_worker_request_duration_seconds",
			"Time from admission to the answer, for requests whose callers the workers answer themselves, by door (nats: msgpack request-reply; jobs: durable jobs). The ingress records the other callers in cascade_ingress_request_duration_seconds.", telemetry.DurationBuckets, "door"),
		itemRetries: f.CounterVec("cascade_worker_item_retries_total",
			"Items a model failed on alone, per model; each goes back to its queue with one more attempt, or on its last one to the dead letters with an internal error result.", "model"),
		nonFinite: f.CounterVec("cascade_worker_non_finite_outputs_total",
			"Items whose model output held NaN or infinite values; each is answered invalid_input, never retried.", "model"),
		items: f.CounterVec("cascade_worker_items_total",
			"Items handled per model, by outcome: answered, escalated, expired (deadline passed before compute), degraded (answered early: deadline or full next queue), failed (invalid, undecodable or dead-lettered).", "model", "outcome"),
		degraded: f.CounterVec("cascade_worker_degraded_total",
			"Degraded answers per model, by reason: deadline (no time for the next stage) or queue_full (the next stage rejected the escalation).", "model", "reason"),
		batchSize: f.HistogramVec("cascade_worker_batch_size_items",
			"Items per inference batch.", prometheus.ExponentialBuckets(1, 2, 13), "model"),
		queue: f.HistogramVec("cascade_worker_queue_duration_seconds",
			"Time from an item's enqueue to the start of its batch's compute.", telemetry.DurationBuckets, "model"),
		compute: f.HistogramVec("cascade_worker_compute_duration_seconds",
			"Inference time of one batch.", telemetry.DurationBuckets, "model"),
		gearApply: f.Histogram("cascade_worker_gear_apply_seconds",
			"Time from the controller's gear write (GearState.AtUnixNano) to this worker applying it.", telemetry.DurationBuckets),
		redeliveries: f.CounterVec("cascade_worker_redeliveries_total",
			"Messages received more than once (NumDelivered > 1).", "model"),
		acks: f.CounterVec("cascade_worker_acks_total",
			"Acknowledgements sent per model, by action: ack, nak (redeliver after a delay), term.", "model", "action"),
		deadLetters: f.CounterVec("cascade_worker_dead_letters_total",
			"Messages published to the dead-letter subject (undecodable, or failed on their last allowed delivery).", "model"),
		backlog: f.GaugeVec("cascade_worker_backlog_messages",
			"Messages (envelopes of items) waiting in a model's queue as of the last message pulled (Metadata().NumPending).", "model"),
		pulls: f.CounterVec("cascade_worker_pulls_total",
			"Pull requests per model, by kind: watch (idle wait for a first item), fill (wait for a batch to fill), nowait (take what is queued).", "model", "kind"),
	}
	telemetry.ZeroSeries(m.e2e.MetricVec, []string{"nats", "jobs"})
	return m
}

// host creates every per-model series of model at zero, so rate() and
// increase() based alerts see them from the start, and returns the
// model's backlog gauge.
func (m *metrics) host(model string) prometheus.Gauge {
	one := []string{model}
	telemetry.ZeroSeries(m.items.MetricVec, one, []string{outcomeAnswered, outcomeEscalated, outcomeExpired, outcomeDegraded, outcomeFailed, outcomeRetried})
	telemetry.ZeroSeries(m.degraded.MetricVec, one, []string{degradedDeadline, degradedQueueFull})
	telemetry.ZeroSeries(m.acks.MetricVec, one, ackLabels[:])
	telemetry.ZeroSeries(m.pulls.MetricVec, one, pullKinds)
	for _, v := range []*prometheus.MetricVec{m.redeliveries.MetricVec, m.deadLetters.MetricVec, m.refusedReplies.MetricVec,
		m.nonFinite.MetricVec, m.itemRetries.MetricVec, m.batchSize.MetricVec, m.queue.MetricVec, m.compute.MetricVec} {
		telemetry.ZeroSeries(v, one)
	}
	return m.backlog.WithLabelValues(model)
}

// result counts a result the worker produced for its heartbeat.
func (m *metrics) result(res *wire.Result) { m.results.observe(res) }
