package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Bursty describes a bursty load: Poisson at Base × Capacity, bursts to
// Burst × that for BurstLength at the end of every BurstEvery, the base
// ramping up linearly from a quarter over the first Ramp of Duration and
// back down over the last Ramp.
type Bursty struct {
	// Capacity is the rate (items/s) the levels are fractions of.
	Capacity float64 `json:"capacity_qps"`
	// Base is the base load's share of Capacity (default 0.4); Burst the
	// bursts' multiple of the base (default 3).
	Base  float64 `json:"base"`
	Burst float64 `json:"burst"`
	// BurstLength (default 10s) and BurstEvery (default 30s): each period
	// of BurstEvery ends with a burst of BurstLength.
	BurstLength time.Duration `json:"burst_length_ns"`
	BurstEvery  time.Duration `json:"burst_every_ns"`
	// Ramp is the share of Duration over which the base rises from a
	// quarter to its level at the start, and falls back at the end
	// (default 0.25; < 0: none).
	Ramp     float64       `json:"ramp"`
	Duration time.Duration `json:"duration_ns"`
}

func (b *Bursty) defaults() {
	orDefault(&b.Base, 0.4)
	orDefault(&b.Burst, 3)
	b.BurstLength = warmupOr(b.BurstLength, 10*time.Second) // < 0: no bursts
	orDefault(&b.BurstEvery, 30*time.Second)
	orDefault(&b.Duration, 2*time.Minute)
	if b.Ramp == 0 {
		b.Ramp = 0.25
	}
	b.Ramp = min(max(b.Ramp, 0), 0.5)
}

// Rate is the offered load (items/s) at t since the start.
func (b Bursty) Rate(t time.Duration) float64 {
	f := float64(t) / float64(b.Duration)
	env := 1.0
	if b.Ramp > 0 {
		switch {
		case f < b.Ramp:
			env = 0.25 + 0.75*f/b.Ramp
		case f > 1-b.Ramp:
			env = 0.25 + 0.75*max(1-f, 0)/b.Ramp
		}
	}
	rate := b.Capacity * b.Base * env
	if b.InBurst(t) {
		rate *= b.Burst
	}
	return rate
}

// InBurst reports whether t falls in a burst.
func (b Bursty) InBurst(t time.Duration) bool {
	if b.BurstLength <= 0 || b.BurstEvery <= 0 {
		return false
	}
	return t%b.BurstEvery >= b.BurstEvery-b.BurstLength
}

// Schedule is the load generator's schedule of b.
func (b Bursty) Schedule() loadgen.Schedule { return b.Rate }

// TraceConfig configures Trace. Zero values take the defaults in the
// comments.
type TraceConfig struct {
	// Live is the plan (the built-in one when empty) and the systems.
	Live
	// Systems replaying the trace, among SystemSwitching, SystemStatic
	// and SystemCascadeServe (default: those three, in that order).
	Systems []string
	// Load is the trace (Capacity default: the plan's most accurate gear's
	// max_qps; see Bursty for the rest).
	Load Bursty
	// Warmup runs the trace's first rate for this long before it, results
	// discarded (default 3s; < 0: none).
	Warmup time.Duration
	// RequestItems > 1 sends that many items per request.
	RequestItems int
	// Profile, Replay: what the plan was made from, for the
	// model-switching plan (see CompareConfig); SwitchingPlan, when set,
	// is that plan already made.
	Profile       *plan.ProfileFile
	Replay        *plan.Replay
	SwitchingPlan *plan.Plan
	// Reference says for each item whether the ladder's most accurate
	// model alone answers it right (see CompareConfig).
	Reference []bool
}

// TraceReport is what Trace measured.
type TraceReport struct {
	Environment Environment   `json:"environment"`
	SLOP95Ms    float64       `json:"slo_p95_ms"`
	Load        Bursty        `json:"load"`
	Systems     []TraceSystem `json:"systems"`
}

// TraceSystem is one system's replay of the trace.
type TraceSystem struct {
	System  string `json:"system"`
	Label   string `json:"label"`
	Plan    string `json:"plan"`
	Pinned  string `json:"pinned,omitempty"`
	Seconds int    `json:"seconds"`
	// Sent, Answered, Lost and Errors count items.
	Sent     int            `json:"sent"`
	Answered int            `json:"answered"`
	Lost     int            `json:"lost"`
	Errors   map[string]int `json:"errors"`
	// Accuracy of the answers; ReferenceAccuracy the single model's on the
	// same items.
	Accuracy          float64 `json:"accuracy"`
	ReferenceAccuracy float64 `json:"reference_accuracy,omitempty"`
	P50Ms             float64 `json:"p50_ms"`
	P95Ms             float64 `json:"p95_ms"`
	P99Ms             float64 `json:"p99_ms"`
	// OverSLOSeconds counts the seconds (by send time) whose p95 exceeds
	// the SLO, or whose items were all lost or errors; OverSLOShare is its
	// share of the seconds with items sent.
	OverSLOSeconds int     `json:"over_slo_seconds"`
	OverSLOShare   float64 `json:"over_slo_share"`
	// PerSecond is the trace second by second.
	PerSecond []TraceSecond `json:"per_second"`
	// Switches are the controller's gear writes during the trace, seen on
	// the control bucket; ApplyLatency their latency from the write to
	// each stage worker applying it.
	Switches     []GearSwitch `json:"switches"`
	ApplyLatency ApplyLatency `json:"apply_latency"`
}

// TraceSecond is one second of a trace, by send time.
type TraceSecond struct {
	Second     int     `json:"second"`
	OfferedQPS float64 `json:"offered_qps"`
	Answered   int     `json:"answered"`
	Errors     int     `json:"errors"`
	P95Ms      float64 `json:"p95_ms"`
	Accuracy   float64 `json:"accuracy"`
	// Gear answered most of the second's items; GearIndex is its place in
	// the system's plan, from 1 (0: none).
	Gear      string `json:"gear"`
	GearIndex int    `json:"gear_index"`
}

// GearSwitch is one gear write of the controller.
type GearSwitch struct {
	// AtSeconds is the write's time since the trace started.
	AtSeconds float64 `json:"at_seconds"`
	From      string  `json:"from"`
	To        string  `json:"to"`
	Reason    string  `json:"reason"`
	QPS       float64 `json:"qps"`
}

// ApplyLatency summarises cascade_worker_gear_apply_seconds: the time from
// the controller's gear write to a stage worker applying it, one
// observation per worker and switch. The histogram's buckets double, so
// the quantiles are interpolated within a bucket, and P99BoundMs is the
// upper bound of the bucket holding the p99 (the p99 is at most that; 0:
// above the largest bound).
type ApplyLatency struct {
	Count      int     `json:"count"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	P99BoundMs float64 `json:"p99_bound_ms"`
	MeanMs     float64 `json:"mean_ms"`
}

// Trace replays the bursty load against each system on a fresh
// all-in-one system: model switching and CascadeServe unpinned, the static
// cascade pinned to the plan's most accurate gear.
func Trace(ctx context.Context, cfg TraceConfig) (*TraceReport, error) {
	cfg.Warmup = warmupOr(cfg.Warmup, 3*time.Second)
	if cfg.RequestItems < 1 {
		cfg.RequestItems = 1
	}
	if err := cfg.Live.defaults(); err != nil {
		return nil, err
	}
	if len(cfg.Systems) == 0 {
		cfg.Systems = []string{SystemSwitching, SystemStatic, SystemCascadeServe}
	}
	p, err := system.LoadPlan(cfg.PlanFile)
	if err != nil {
		return nil, err
	}
	if !(cfg.Load.Capacity > 0) {
		cfg.Load.Capacity = p.Gears[0].MaxQPS
	}
	cfg.Load.defaults()
	progress := cfg.progressf
	model := p.Ladder[len(p.Ladder)-1]
	if cfg.Reference == nil {
		cfg.Reference = testReference(p.Pipeline, cfg.Items.Labels, model)
	}
	out := &TraceReport{Environment: cfg.environmentOf(p), SLOP95Ms: p.SLO.P95Ms, Load: cfg.Load}
	cc := CompareConfig{Live: cfg.Live, Systems: cfg.Systems, Profile: cfg.Profile, Replay: cfg.Replay}
	cc.Multiples = []float64{1}
	if err := cc.defaults(); err != nil {
		return nil, err
	}
	var sink Comparison
	systems, cleanup, err := compareSystemsWith(ctx, cc, p, model, &sink, cfg.SwitchingPlan, progress)
	defer cleanup()
	if err != nil {
		return nil, err
	}
	for _, s := range systems {
		if s.name == SystemSingle && !slices.Contains(cfg.Systems, SystemSingle) {
			continue
		}
		reg := prometheus.NewRegistry()
		sc := cc.compareSystemConfig(s)
		sc.Registerer = reg
		ts, err := withSystem(ctx, cfg.TempDir, sc, func(sys *system.System) (TraceSystem, error) {
			return traceSystem(ctx, cfg, s, sys, reg, progress)
		})
		if err != nil {
			return nil, fmt.Errorf("trace, %s: %w", s.label, err)
		}
		out.Systems = append(out.Systems, ts)
	}
	return out, nil
}

// traceSystem replays the trace on one system.
func traceSystem(ctx context.Context, cfg TraceConfig, s compareSystem, sys *system.System, reg *prometheus.Registry, progress func(string, ...any)) (TraceSystem, error) {
	out := TraceSystem{System: s.name, Label: s.label, Plan: s.planName, Pinned: s.pin, Errors: map[string]int{}}
	how := "controller switching"
	if s.pin != "" {
		how = "gear " + s.pin + " pinned"
	}
	b := cfg.Load
	progress("trace on %s (%s, %s): %v, base %.0f/s, bursts to %.0f/s for %v every %v...",
		s.label, s.planName, how, b.Duration, b.Capacity*b.Base, b.Capacity*b.Base*b.Burst, b.BurstLength, b.BurstEvery)
	lc := loadgen.Config{
		Pipeline: s.plan.Pipeline, Items: cfg.Items, Timeout: 30 * time.Second, Seed: 1, Client: "bench",
		BatchItems: cfg.RequestItems, UINT8Scale: s.plan.Input.UINT8Scale,
	}
	if cfg.Warmup > 0 {
		w := lc
		w.Schedule, w.Duration, w.Seed = loadgen.Constant(b.Rate(0)), cfg.Warmup, 1001
		if _, err := loadgen.Run(ctx, sys.Conn, w); err != nil {
			return out, fmt.Errorf("warm-up: %w", err)
		}
	}

	// Watch the gear key from now on: each write after the first values is
	// a switch.
	watch := watchGears(ctx, sys, s.plan.Pipeline)
	before := gatherApply(reg)
	start := time.Now()
	lc.Schedule, lc.Duration = b.Schedule(), b.Duration
	lc.TickEvery = 5 * time.Second
	lc.Tick = func(sn loadgen.Snapshot) {
		progress("  %s at %3.0fs: %.0f/s offered, %.0f/s served, p95 %.1f ms, gear %s",
			s.name, sn.Elapsed.Seconds(), sn.OfferedQPS, sn.ServedQPS, float64(sn.P95)/1e6, sn.LastGear)
	}
	rep, err := loadgen.Run(ctx, sys.Conn, lc)
	writes := watch.close()
	if err != nil {
		return out, err
	}
	after := gatherApply(reg)
	out.ApplyLatency = after.minus(before).summary()
	with := out.summarise(rep, start, b, s.plan, cfg.Reference)
	out.Switches = switchesOf(writes, start)
	progress("  %s: %d items, accuracy %.2f%%, p95 %.1f ms, %d of %d seconds over the SLO (%.1f%%), %d switches, apply p99 %.1f ms (≤ %.1f), %s errors, %d lost",
		s.label, out.Sent, 100*out.Accuracy, out.P95Ms, out.OverSLOSeconds, with, 100*out.OverSLOShare, len(out.Switches),
		out.ApplyLatency.P99Ms, out.ApplyLatency.P99BoundMs, errorText(out.Errors), out.Lost)
	return out, nil
}

// gearWatch collects the gear writes of the controller, seen on the
// control bucket, while a trace runs.
type gearWatch struct {
	mu     sync.Mutex
	writes []wire.GearState
	stop   context.CancelFunc
	done   chan struct{}
}

// watchGears starts collecting every write of the gear key of pipeline's
// control bucket on sys, from its current value on; close ends it.
func watchGears(ctx context.Context, sys *system.System, pipeline string) *gearWatch {
	w := &gearWatch{done: make(chan struct{})}
	wctx, stop := context.WithCancel(ctx)
	w.stop = stop
	go func() {
		defer close(w.done)
		_ = natsbus.WatchControl(wctx, sys.JS, wire.KVBucket(pipeline), 100*time.Millisecond, nil, func(key string, value []byte, live bool) {
			var st wire.GearState
			if key != wire.KeyGear || json.Unmarshal(value, &st) != nil {
				return
			}
			w.mu.Lock()
			w.writes = append(w.writes, st)
			w.mu.Unlock()
		})
	}()
	return w
}

// close stops the watch, waits for it to end, and returns the writes seen.
func (w *gearWatch) close() []wire.GearState {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// summarise fills in what the trace's run rep measured on a system serving
// p, started at start: the counts, the accuracy (and ref's on the same
// items), the percentiles and the seconds, with those over the SLO. It
// returns the number of seconds with items sent.
func (out *TraceSystem) summarise(rep loadgen.Report, start time.Time, b Bursty, p *plan.Plan, ref []bool) int {
	out.Sent, out.Answered, out.Lost = rep.Sent, rep.Answered, rep.Lost
	for code, n := range rep.ErrorCounts() {
		out.Errors[string(code)] = n
	}
	out.Accuracy = rep.Accuracy()
	out.ReferenceAccuracy = referenceAccuracy(rep.Outcomes, ref)
	out.P50Ms, out.P95Ms, out.P99Ms = ms(rep.Percentile(0.5)), ms(rep.Percentile(0.95)), ms(rep.Percentile(0.99))
	out.PerSecond = perSecond(rep, start, b, p)
	out.Seconds = len(out.PerSecond)
	with := 0
	for _, sec := range out.PerSecond {
		if sec.Answered+sec.Errors == 0 {
			continue
		}
		with++
		if sec.P95Ms > p.SLO.P95Ms || sec.Answered == 0 {
			out.OverSLOSeconds++
		}
	}
	if with > 0 {
		out.OverSLOShare = float64(out.OverSLOSeconds) / float64(with)
	}
	return with
}

// perSecond buckets a run's outcomes by the second they were sent in.
func perSecond(rep loadgen.Report, start time.Time, b Bursty, p *plan.Plan) []TraceSecond {
	n := int(math.Ceil(b.Duration.Seconds()))
	if n < 1 {
		return nil
	}
	secs := make([]TraceSecond, n)
	lat := make([][]float64, n)
	correct := make([]int, n)
	gears := make([]map[string]int, n)
	for i := range secs {
		secs[i] = TraceSecond{Second: i, OfferedQPS: b.Rate(time.Duration(i)*time.Second + 500*time.Millisecond)}
		gears[i] = map[string]int{}
	}
	for _, o := range rep.Outcomes {
		// A request the generator sent a little after the trace's last
		// second (a busy machine) belongs to that second: every item counts
		// once.
		i := min(max(int(o.Sent.Sub(start)/time.Second), 0), n-1)
		if o.Code != "" {
			secs[i].Errors++
			continue
		}
		secs[i].Answered++
		lat[i] = append(lat[i], ms(o.Latency))
		gears[i][o.Gear]++
		if o.Correct {
			correct[i]++
		}
	}
	for i := range secs {
		slices.Sort(lat[i])
		secs[i].P95Ms = nearestRank(lat[i], 0.95)
		if secs[i].Answered > 0 {
			secs[i].Accuracy = float64(correct[i]) / float64(secs[i].Answered)
		}
		best := 0
		for _, g := range sortedKeys(gears[i]) {
			if gears[i][g] > best {
				best, secs[i].Gear = gears[i][g], g
			}
		}
		if secs[i].Gear != "" {
			secs[i].GearIndex = p.GearByID(secs[i].Gear) + 1
		}
	}
	return secs
}

// switchesOf turns the gear writes seen into switches: a write whose gear
// differs from the previous one's, from the first value on.
func switchesOf(writes []wire.GearState, start time.Time) []GearSwitch {
	var out []GearSwitch
	for i := 1; i < len(writes); i++ {
		w, prev := writes[i], writes[i-1]
		if w.Gear == prev.Gear {
			continue
		}
		at := time.Unix(0, w.AtUnixNano).Sub(start).Seconds()
		out = append(out, GearSwitch{AtSeconds: at, From: prev.Gear, To: w.Gear, Reason: w.Reason, QPS: w.QPS})
	}
	return out
}

// applyHistogram is cascade_worker_gear_apply_seconds summed over the
// workers: cumulative counts per upper bound (seconds).
type applyHistogram struct {
	bounds []float64
	counts []uint64 // cumulative, per bound; the last entry is +Inf
	count  uint64
	sum    float64
}

const applyMetric = "cascade_worker_gear_apply_seconds"

// gatherApply reads the apply histogram from reg (empty when absent).
func gatherApply(reg prometheus.Gatherer) applyHistogram {
	var h applyHistogram
	mfs, err := reg.Gather()
	if err != nil {
		return h
	}
	for _, mf := range mfs {
		if mf.GetName() != applyMetric {
			continue
		}
		for _, m := range mf.GetMetric() {
			hist := m.GetHistogram()
			if hist == nil {
				continue
			}
			if h.bounds == nil {
				for _, bk := range hist.GetBucket() {
					h.bounds = append(h.bounds, bk.GetUpperBound())
				}
				h.bounds = append(h.bounds, math.Inf(1))
				h.counts = make([]uint64, len(h.bounds))
			}
			for i, bk := range hist.GetBucket() {
				if i < len(h.counts)-1 {
					h.counts[i] += bk.GetCumulativeCount()
				}
			}
			h.count += hist.GetSampleCount()
			h.sum += hist.GetSampleSum()
		}
	}
	if h.counts != nil {
		h.counts[len(h.counts)-1] = h.count
	}
	return h
}

// minus is h less an earlier reading of the same histogram.
func (h applyHistogram) minus(earlier applyHistogram) applyHistogram {
	if earlier.counts == nil || len(earlier.counts) != len(h.counts) {
		return h
	}
	out := applyHistogram{bounds: h.bounds, counts: make([]uint64, len(h.counts)), count: h.count - earlier.count, sum: h.sum - earlier.sum}
	for i := range h.counts {
		out.counts[i] = h.counts[i] - earlier.counts[i]
	}
	return out
}

// summary gives the histogram's quantiles, interpolated linearly within a
// bucket as Prometheus' histogram_quantile does.
func (h applyHistogram) summary() ApplyLatency {
	out := ApplyLatency{Count: int(h.count)}
	if h.count == 0 {
		return out
	}
	out.MeanMs = 1000 * h.sum / float64(h.count)
	quantile := func(q float64) (est, bound float64) {
		rank := q * float64(h.count)
		lower, below := 0.0, uint64(0)
		for i, c := range h.counts {
			if float64(c) >= rank && c > below {
				upper := h.bounds[i]
				if math.IsInf(upper, 1) {
					return 1000 * lower, 0 // above the largest bound
				}
				f := (rank - float64(below)) / float64(c-below)
				return 1000 * (lower + f*(upper-lower)), 1000 * upper
			}
			lower, below = h.bounds[i], c
		}
		return 1000 * lower, 1000 * lower
	}
	out.P50Ms, _ = quantile(0.5)
	out.P99Ms, out.P99BoundMs = quantile(0.99)
	return out
}
