package ingress

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Doors through which requests arrive (label door).
const (
	doorNATS = "nats"
	doorJobs = "jobs"
	doorHTTP = "http"
)

// Outcomes of a request at intake besides the wire error codes (label
// outcome): admitted (published to the first stage), deferred (a job
// handed back to its stream for a later try) and replayed (a repeat of an
// Idempotency-Key answered with the first request's result).
const (
	outcomeAdmitted = "admitted"
	outcomeDeferred = "deferred"
	outcomeReplayed = "replayed"
)

// metrics are one ingress's Prometheus metrics, registered per instance.
type metrics struct {
	// ServiceMetrics are cascade_ingress_ready and the gear new requests
	// are admitted to.
	*telemetry.ServiceMetrics
	requests  *prometheus.CounterVec
	admission *prometheus.HistogramVec
	e2e       *prometheus.HistogramVec
	inFlight  prometheus.Gauge
	// refusedReplies, shed, pending and dropped watch the request-reply
	// door's trust and overload limits.
	refusedReplies prometheus.Counter
	shed           *prometheus.CounterVec
	pending        prometheus.Gauge
	dropped        prometheus.Counter
	// envelopeItems is the number of items per published envelope.
	envelopeItems prometheus.Histogram
	// jobsBound and jobsLost watch the jobs door's consumer.
	jobsBound prometheus.Gauge
	jobsLost  prometheus.Counter
}

// doors are every door, and codes every error code an intake may answer
// (label values of cascade_ingress_requests_total).
var (
	doors = []string{doorNATS, doorJobs, doorHTTP}
	codes = []wire.Code{wire.CodeInvalidInput, wire.CodeOverloaded, wire.CodeDeadlineExceeded,
		wire.CodeUnavailable, wire.CodeDuplicate, wire.CodeInternal}
)

func newMetrics(reg prometheus.Registerer) *metrics {
	f := telemetry.With(reg)
	m := &metrics{
		ServiceMetrics: telemetry.NewServiceMetrics(f, "cascade_ingress",
			"1 when the plan and topology are known, intake is open and (with the jobs door on) the jobs consumer is bound.",
			"the gear new requests are admitted to"),
		requests: f.CounterVec("cascade_ingress_requests_total",
			"Requests by door (nats, jobs, http) and intake outcome: admitted, deferred (job retried later), replayed (a repeated Idempotency-Key answered with the first result), or the error code answered (invalid_input, overloaded, duplicate, deadline_exceeded, unavailable, internal).", "door", "outcome"),
		admission: f.HistogramVec("cascade_ingress_admission_duration_seconds",
			"Time from receiving a request to the first stage's PubAck, by door (admitted requests only).", telemetry.DurationBuckets, "door"),
		e2e: f.HistogramVec("cascade_ingress_request_duration_seconds",
			"Time from receiving a request to answering it, for callers the ingress answers itself (http, nats with a JSON body).", telemetry.DurationBuckets, "door"),
		inFlight: f.Gauge("cascade_ingress_http_in_flight_requests",
			"HTTP infer requests being handled."),
		refusedReplies: f.Counter("cascade_ingress_refused_replies_total",
			"Request-reply messages not answered because their reply subject is not a literal subject under the inbox prefix (CASCADE_INBOX_PREFIX)."),
		shed: f.CounterVec("cascade_ingress_shed_requests_total",
			"Request-reply requests answered overloaded without being read, by reason: in_flight (CASCADE_INGRESS_MAX_IN_FLIGHT reached) or backlog (half of the subscription's pending limits).", "reason"),
		pending: f.Gauge("cascade_ingress_pending_requests",
			"Request-reply messages received by the NATS client and not yet read by the ingress."),
		dropped: f.Counter("cascade_ingress_dropped_requests_total",
			"Request-reply messages the NATS client dropped at its pending limits (never answered). Should stay 0: intake sheds first."),
		envelopeItems: f.Histogram("cascade_ingress_envelope_items",
			"Items per envelope published to a first stage.", prometheus.ExponentialBuckets(1, 2, 12)),
		jobsBound: f.Gauge("cascade_ingress_jobs_consumer_bound",
			"1 while the ingress is bound to the jobs consumer and routes durable jobs."),
		jobsLost: f.Counter("cascade_ingress_jobs_consumer_lost_total",
			"Times the jobs consumer was found missing (deleted, or not yet created); the ingress is unready until it is back."),
	}
	// Every series an alert or the dashboard reads exists from the start,
	// at zero.
	intake := []string{outcomeAdmitted}
	for _, c := range codes {
		intake = append(intake, string(c))
	}
	telemetry.ZeroSeries(m.requests.MetricVec, doors, intake)
	telemetry.ZeroSeries(m.admission.MetricVec, doors)
	telemetry.ZeroSeries(m.e2e.MetricVec, doors)
	telemetry.ZeroSeries(m.shed.MetricVec, []string{"in_flight", "backlog"})
	telemetry.ZeroSeries(m.requests.MetricVec, []string{doorJobs}, []string{outcomeDeferred})
	telemetry.ZeroSeries(m.requests.MetricVec, []string{doorNATS, doorHTTP}, []string{outcomeReplayed})
	return m
}
