package bench

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// LoadConfig configures a load run against a live pipeline.
type LoadConfig struct {
	// Pipeline to send to.
	Pipeline string
	// Items are sent in order, cycling; their labels score the answers.
	Items *dataset.Set
	// Concurrency > 0 runs a closed loop with this many requests in flight;
	// otherwise QPS > 0 runs open-loop Poisson arrivals at that rate.
	Concurrency int
	QPS         float64
	// Warmup is a first phase whose results are discarded entirely (not
	// counted in throughput, latency or accuracy). Duration is the measured
	// phase. MaxRequests, if > 0, ends the measured phase after that many
	// requests (with Duration 0: exactly that many).
	Warmup      time.Duration
	Duration    time.Duration
	MaxRequests int
	// UINT8Scale > 0 sends items as 8-bit values when they are exactly
	// such (the plan's uint8_scale), as an image producer would.
	UINT8Scale float64
	// RequestItems > 1 sends that many items per request, one batched
	// input (the producer's side of the batch axis); rates, counts and
	// throughput stay in items.
	RequestItems int
	// Timeout is each request's deadline (default 30s, far above any
	// latency of a healthy run, so no answer is degraded by it).
	Timeout time.Duration
	// Seed makes Poisson arrivals reproducible (default 1).
	Seed uint64
	// Stages, when set, maps a model to its stage index (from 0) in the
	// gear served, so the report can count JetStream hops per request.
	Stages map[string]int
	// Abort, when set, is shown a snapshot of each phase about every
	// quarter second; true stops that phase's sending (its replies are
	// still awaited) and marks the run aborted. An aborted warm-up skips
	// the measured phase. It bounds a run that overloads the pipeline.
	Abort func(loadgen.Snapshot) bool
	// Reference, when set, says for each item (by index in Items) whether
	// a reference model answers it right: LoadRun.ReferenceAccuracy is
	// then that model's accuracy on exactly the items answered.
	Reference []bool
}

// LoadRun is what a load run measured.
type LoadRun struct {
	Concurrency int     `json:"concurrency,omitempty"`
	OfferedQPS  float64 `json:"offered_qps,omitempty"`
	Seconds     float64 `json:"seconds"`
	Sent        int     `json:"sent"`
	Answered    int     `json:"answered"`
	// Errors counts error results by code; Lost counts requests with no
	// result at all (there should be none: every accepted request ends with
	// exactly one result).
	Errors   map[string]int `json:"errors"`
	Lost     int            `json:"lost"`
	Degraded int            `json:"degraded"`
	// Throughput is answered requests per second of the measured phase.
	Throughput float64 `json:"throughput"`
	P50Ms      float64 `json:"p50_ms"`
	P95Ms      float64 `json:"p95_ms"`
	P99Ms      float64 `json:"p99_ms"`
	Correct    int     `json:"correct"`
	Accuracy   float64 `json:"accuracy"`
	// ReferenceAccuracy is LoadConfig.Reference's accuracy on the same
	// answered items (when set).
	ReferenceAccuracy float64 `json:"reference_accuracy,omitempty"`
	// ByGear counts answers by the gear that made them; AnsweredBy by model.
	ByGear     map[string]int `json:"by_gear"`
	AnsweredBy map[string]int `json:"answered_by"`
	// LatencyBy gives the latency percentiles of the answers of each
	// model: where in the cascade the time goes.
	LatencyBy map[string]Percentiles `json:"latency_by,omitempty"`
	// StagesPerRequest is the mean number of stages an answer went through
	// (each one JetStream hop), when LoadConfig.Stages is set.
	StagesPerRequest float64 `json:"stages_per_request,omitempty"`
	// Aborted: LoadConfig.Abort stopped the run early.
	Aborted bool `json:"aborted,omitempty"`
}

// Percentiles summarise a set of latencies.
type Percentiles struct {
	Count int     `json:"count"`
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
}

// ErrorCount sums the error results.
func (r LoadRun) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Load sends load to the pipeline over nc with the load generator: a
// warm-up phase (discarded), then the measured phase.
func Load(ctx context.Context, nc *nats.Conn, cfg LoadConfig) (LoadRun, error) {
	orDefault(&cfg.Timeout, 30*time.Second)
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	lc := loadgen.Config{
		Pipeline:    cfg.Pipeline,
		Items:       cfg.Items,
		Concurrency: cfg.Concurrency,
		Timeout:     cfg.Timeout,
		Seed:        cfg.Seed,
		Client:      "bench",
		BatchItems:  cfg.RequestItems,
		UINT8Scale:  cfg.UINT8Scale,
	}
	if cfg.Concurrency <= 0 {
		if !(cfg.QPS > 0) {
			return LoadRun{}, fmt.Errorf("load: need a concurrency or a rate")
		}
		lc.Schedule = loadgen.Constant(cfg.QPS)
	}
	phases := loadPhases{nc: nc, abort: cfg.Abort}
	if cfg.Warmup > 0 {
		w := lc
		w.Duration = cfg.Warmup
		w.Seed = cfg.Seed + 1000
		if _, err := phases.run(ctx, w); err != nil {
			return LoadRun{}, fmt.Errorf("warm-up: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return LoadRun{}, err
		}
		if phases.aborted {
			return LoadRun{Concurrency: cfg.Concurrency, OfferedQPS: cfg.offeredQPS(), Aborted: true, Errors: map[string]int{}}, nil
		}
	}
	lc.Duration, lc.MaxRequests = cfg.Duration, cfg.MaxRequests
	rep, err := phases.run(ctx, lc)
	if err != nil {
		return LoadRun{}, err
	}
	if err := ctx.Err(); err != nil {
		return LoadRun{}, err
	}
	run := loadRunOf(rep, cfg)
	run.Aborted = phases.aborted
	return run, nil
}

// offeredQPS is the rate of an open-loop run, 0 for a closed loop.
func (c LoadConfig) offeredQPS() float64 {
	if c.Concurrency <= 0 {
		return c.QPS
	}
	return 0
}

// loadPhases runs the phases of one Load run on nc. With abort set, each
// phase is shown a snapshot about every quarter second and stops sending
// when abort says so; aborted then stays set.
type loadPhases struct {
	nc      *nats.Conn
	abort   func(loadgen.Snapshot) bool
	aborted bool
}

// run runs one phase and returns the load generator's report.
func (ph *loadPhases) run(ctx context.Context, lc loadgen.Config) (loadgen.Report, error) {
	if ph.abort == nil {
		return loadgen.Run(ctx, ph.nc, lc)
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lc.TickEvery = 250 * time.Millisecond
	lc.Tick = func(s loadgen.Snapshot) {
		if !ph.aborted && ph.abort(s) {
			ph.aborted = true
			cancel()
		}
	}
	return loadgen.Run(pctx, ph.nc, lc)
}

// loadRunOf summarises the measured phase's report of a run configured by
// cfg (Aborted is left to the caller).
func loadRunOf(rep loadgen.Report, cfg LoadConfig) LoadRun {
	run := LoadRun{
		Concurrency: cfg.Concurrency,
		OfferedQPS:  cfg.offeredQPS(),
		Seconds:     rep.Duration.Seconds(),
		Sent:        rep.Sent,
		Answered:    rep.Answered,
		Lost:        rep.Lost,
		Throughput:  rep.Throughput(),
		P50Ms:       ms(rep.Percentile(0.50)),
		P95Ms:       ms(rep.Percentile(0.95)),
		P99Ms:       ms(rep.Percentile(0.99)),
		Accuracy:    rep.Accuracy(),
		ByGear:      rep.ByGear(),
		Errors:      map[string]int{},
		AnsweredBy:  map[string]int{},
	}
	for code, n := range rep.ErrorCounts() {
		run.Errors[string(code)] = n
	}
	run.ReferenceAccuracy = referenceAccuracy(rep.Outcomes, cfg.Reference)
	run.LatencyBy = latencyByModel(rep.Outcomes)
	stages := 0
	for _, o := range rep.Outcomes {
		if o.Code != "" {
			continue
		}
		run.AnsweredBy[o.AnsweredBy]++
		if o.Correct {
			run.Correct++
		}
		if o.Degraded {
			run.Degraded++
		}
		if cfg.Stages != nil {
			stages += cfg.Stages[o.AnsweredBy] + 1
		}
	}
	if cfg.Stages != nil && run.Answered > 0 {
		run.StagesPerRequest = float64(stages) / float64(run.Answered)
	}
	return run
}

// latencyByModel gives the latency percentiles of the answers of each model
// (nil when nothing was answered); error results and warm-up outcomes do
// not count.
func latencyByModel(outcomes []loadgen.Outcome) map[string]Percentiles {
	byModel := map[string][]float64{}
	for _, o := range outcomes {
		if o.Code != "" || o.Warmup {
			continue
		}
		byModel[o.AnsweredBy] = append(byModel[o.AnsweredBy], ms(o.Latency))
	}
	var out map[string]Percentiles
	for m, lat := range byModel {
		slices.Sort(lat)
		if out == nil {
			out = map[string]Percentiles{}
		}
		out[m] = Percentiles{Count: len(lat), P50Ms: nearestRank(lat, 0.5), P95Ms: nearestRank(lat, 0.95)}
	}
	return out
}

// referenceAccuracy is the fraction of the answered outcomes whose item
// ref marks right (0 without ref or answers).
func referenceAccuracy(outcomes []loadgen.Outcome, ref []bool) float64 {
	ok, n := 0, 0
	for _, o := range outcomes {
		if o.Code != "" || o.Warmup || ref == nil {
			continue
		}
		n++
		if o.Index < len(ref) && ref[o.Index] {
			ok++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(ok) / float64(n)
}

// nearestRank returns the nearest-rank q-quantile of sorted values.
func nearestRank(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}

// StageIndex maps every model of a gear's cascade to its stage index.
func StageIndex(g plan.Gear) map[string]int {
	m := make(map[string]int, len(g.Cascade))
	for j, s := range g.Cascade {
		m[s.Model] = j
	}
	return m
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// sortedKeys returns a map's keys in order, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
