package wire

import (
	"math"
	"sort"
)

// WorkerStatsSubject is where a stage worker publishes its heartbeat
// (WorkerHeartbeat, JSON) every HeartbeatInterval: the controller derives
// the live capacity in runners from these, and the dashboard the served
// load, latency and answering-model mix.
func WorkerStatsSubject(pipeline, instance string) string {
	return "cascade." + pipeline + ".stats.worker." + instance
}

// WorkerStatsWildcard matches every worker's heartbeat subject of a pipeline.
func WorkerStatsWildcard(pipeline string) string { return "cascade." + pipeline + ".stats.worker.*" }

// Worker states of a heartbeat.
const (
	// WorkerServing: the worker has loaded its models and pulls work; its
	// runners count towards the live capacity.
	WorkerServing = "serving"
	// WorkerLeaving: the worker's last beat, sent when it stops pulling on
	// a clean shutdown; the controller drops it at once instead of waiting
	// for missed beats.
	WorkerLeaving = "leaving"
)

// LatencyBucketsMs are the upper bounds, in milliseconds, of the
// end-to-end latency buckets of WorkerCounters.Latency (admission to
// result); a last bucket above the highest bound catches the rest. They
// are fixed so that counts of different workers and times add up.
var LatencyBucketsMs = []float64{0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000}

// LatencyBucket returns the index in LatencyBucketsMs (len for the
// overflow bucket) of a latency in milliseconds.
func LatencyBucket(ms float64) int {
	return sort.SearchFloat64s(LatencyBucketsMs, ms)
}

// LatencyQuantile estimates the q-quantile (0 < q ≤ 1), in milliseconds, of
// the latencies counted in buckets (len(LatencyBucketsMs)+1 counts, as
// WorkerCounters.Latency), interpolating linearly within a bucket as
// Prometheus's histogram_quantile does. The overflow bucket answers the
// highest bound. It returns NaN when there are no counts.
func LatencyQuantile(buckets []uint64, q float64) float64 {
	var total uint64
	for _, c := range buckets {
		total += c
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	var cum float64
	for i, c := range buckets {
		if c == 0 {
			continue
		}
		if cum+float64(c) >= rank {
			if i >= len(LatencyBucketsMs) {
				return LatencyBucketsMs[len(LatencyBucketsMs)-1]
			}
			lo := 0.0
			if i > 0 {
				lo = LatencyBucketsMs[i-1]
			}
			hi := LatencyBucketsMs[i]
			return lo + (hi-lo)*(rank-cum)/float64(c)
		}
		cum += float64(c)
	}
	return LatencyBucketsMs[len(LatencyBucketsMs)-1]
}

// WorkerHeartbeat is the body (JSON) a stage worker publishes on
// WorkerStatsSubject: who it is, what it hosts, and cumulative counters of
// the results it produced since it started. Counters only grow during an
// instance's life (a restarted worker is a new instance), so a reader
// derives rates and windowed latency quantiles by differencing two beats.
type WorkerHeartbeat struct {
	Instance string `json:"instance"`
	// State is WorkerServing or WorkerLeaving.
	State string `json:"state"`
	// Models are the hosted models (ladder order); Runners the inference
	// runners, each able to run any hosted model; Threads the intra-op
	// threads per runner; Provider the ONNX Runtime execution provider.
	Models   []string `json:"models"`
	Runners  int      `json:"runners"`
	Threads  int      `json:"threads"`
	Provider string   `json:"provider"`
	// Gear is the gear the worker applies.
	Gear string `json:"gear"`
	// IntervalMs is the beat interval: a reader counts the worker gone
	// after three missed beats.
	IntervalMs float64 `json:"interval_ms"`
	// Seq numbers the beats of the instance from 1.
	Seq uint64 `json:"seq"`
	// StartedUnixNano and AtUnixNano are the instance's start and this
	// beat, on the worker's clock.
	StartedUnixNano int64 `json:"started_ns"`
	AtUnixNano      int64 `json:"at_ns"`
	// Stats are cumulative since the instance started.
	Stats WorkerCounters `json:"stats"`
}

// WorkerCounters are a worker's cumulative result counters.
type WorkerCounters struct {
	// Results counts every result the worker produced (answers and
	// errors); Errors the error results among them; Degraded the answers
	// marked degraded.
	Results  uint64 `json:"results"`
	Errors   uint64 `json:"errors"`
	Degraded uint64 `json:"degraded"`
	// AnsweredBy counts answers per answering model, and ConfidenceSum
	// sums their confidence, so mean confidence = ConfidenceSum / AnsweredBy.
	AnsweredBy    map[string]uint64  `json:"answered_by,omitempty"`
	ConfidenceSum map[string]float64 `json:"confidence_sum,omitempty"`
	// Latency counts results per end-to-end latency bucket (admission to
	// result; LatencyBucketsMs, then the overflow bucket); LatencySumMs is
	// the sum of those latencies.
	Latency      []uint64 `json:"latency"`
	LatencySumMs float64  `json:"latency_sum_ms"`
}
