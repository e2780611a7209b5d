package controller

import (
	"math"
	"slices"
	"sort"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// missedBeats is how many heartbeats a worker may miss before it counts as
// gone; half an interval more absorbs jitter.
const missedBeats = 3.5

// defaultBeatInterval is assumed for a heartbeat that names no interval.
const defaultBeatInterval = 500 * time.Millisecond

// Fleet tracks the stage workers of a pipeline from their heartbeats
// (wire.WorkerHeartbeat): which are live, the live capacity in runners, and
// windowed statistics of the results they produce (served rate, latency
// quantiles, answering-model mix, mean confidence). Like RateMeter it is a
// plain value with no clock or lock: the caller passes receive times and
// guards concurrent use.
//
// A worker is live from its first beat in state serving until it sends a
// leaving beat (a clean shutdown) or misses three beats (3.5 × its interval
// without one, on the controller's clock). Windowed statistics difference
// every worker's cumulative counters between the start and the end of the
// window, both on the controller's clock (when the beats arrived), so the
// workers' clocks need not agree and a worker that left mid-window still
// counts for what it served in the window; cumulative totals also keep
// what departed workers produced.
type Fleet struct {
	window  time.Duration
	workers map[string]*fleetWorker
	// retired sums the last counters of workers that were forgotten.
	retired wire.WorkerCounters
	seen    bool
	first   time.Time // the first beat's arrival
}

type fleetWorker struct {
	last     wire.WorkerHeartbeat
	received time.Time // controller clock of the last beat
	samples  []fleetSample
}

type fleetSample struct {
	at time.Time // arrival, controller clock
	c  wire.WorkerCounters
}

// NewFleet returns a fleet whose statistics cover window.
func NewFleet(window time.Duration) *Fleet {
	return &Fleet{window: window, workers: map[string]*fleetWorker{}, retired: emptyCounters()}
}

func emptyCounters() wire.WorkerCounters {
	return wire.WorkerCounters{AnsweredBy: map[string]uint64{}, ConfidenceSum: map[string]float64{}, Latency: make([]uint64, len(wire.LatencyBucketsMs)+1)}
}

// Observe records one heartbeat received at now (controller clock). Beats
// older than the worker's newest (by the worker's AtUnixNano) are ignored.
func (f *Fleet) Observe(hb wire.WorkerHeartbeat, now time.Time) {
	if !f.seen {
		f.seen, f.first = true, now
	}
	w := f.workers[hb.Instance]
	if w == nil {
		w = &fleetWorker{}
		f.workers[hb.Instance] = w
	}
	if len(w.samples) > 0 && hb.AtUnixNano <= w.last.AtUnixNano {
		return
	}
	w.last, w.received = hb, now
	w.samples = append(w.samples, fleetSample{at: now, c: hb.Stats})
	// Keep the samples within the window, plus the newest sample before
	// it, so the statistics span the whole window.
	cut := now.Add(-f.window)
	i := 0
	for i+1 < len(w.samples) && !w.samples[i+1].at.After(cut) {
		i++
	}
	w.samples = w.samples[i:]
}

// live reports whether w counts at now.
func (w *fleetWorker) live(now time.Time) bool {
	if w.last.State != wire.WorkerServing {
		return false
	}
	interval := time.Duration(w.last.IntervalMs * float64(time.Millisecond))
	if interval <= 0 {
		interval = defaultBeatInterval
	}
	return now.Sub(w.received) <= time.Duration(missedBeats*float64(interval))
}

// WorkerView is one live worker as the controller sees it.
type WorkerView struct {
	wire.WorkerHeartbeat
	// LastBeat is when its last heartbeat arrived (controller clock).
	LastBeat time.Time
}

// Live returns the live workers (by instance name) and their runners at
// now, and forgets workers that are gone and whose results have left the
// statistics window.
func (f *Fleet) Live(now time.Time) (workers []WorkerView, runners int) {
	for id, w := range f.workers {
		if w.live(now) {
			workers = append(workers, WorkerView{WorkerHeartbeat: w.last, LastBeat: w.received})
			runners += w.last.Runners
			continue
		}
		if now.Sub(w.received) > f.window+time.Duration(missedBeats*float64(defaultBeatInterval)) {
			addCounters(&f.retired, w.last.Stats)
			delete(f.workers, id)
		}
	}
	sort.Slice(workers, func(i, j int) bool { return workers[i].Instance < workers[j].Instance })
	return workers, runners
}

// Seen reports whether any heartbeat has been observed: from then on the
// live capacity is known (and may be zero).
func (f *Fleet) Seen() bool { return f.seen }

// WindowStats are the fleet's results over the statistics window.
type WindowStats struct {
	// Window is the nominal window, Span the time it covers (shorter while
	// the first heartbeat is younger than the window); Results and Errors
	// count results in it, ServedQPS and ErrorQPS are per second of Span.
	Window    time.Duration
	Span      time.Duration
	Results   uint64
	Errors    uint64
	Degraded  uint64
	ServedQPS float64
	ErrorQPS  float64
	// P50Ms, P95Ms and MeanMs are the end-to-end latency of the window's
	// results (NaN without results).
	P50Ms, P95Ms, MeanMs float64
	// AnsweredBy counts the window's answers per answering model;
	// MeanConfidence is their mean confidence overall and per model (NaN
	// without answers).
	AnsweredBy      map[string]uint64
	MeanConfidence  float64
	ModelConfidence map[string]float64
	// Total are the cumulative counters of every worker seen, departed ones
	// included.
	Total wire.WorkerCounters
}

// Stats returns the statistics of the results the workers produced in the
// window ending at now (what their counters grew by between the last beats
// before the window's start and its end), and the cumulative totals.
func (f *Fleet) Stats(now time.Time) WindowStats {
	st := WindowStats{Window: f.window, AnsweredBy: map[string]uint64{}, ModelConfidence: map[string]float64{}}
	start := now.Add(-f.window)
	if f.seen && f.first.After(start) {
		start = f.first
	}
	st.Span = now.Sub(start)
	win := emptyCounters()
	total := emptyCounters()
	addCounters(&total, f.retired)
	for _, w := range f.workers {
		addCounters(&total, w.last.Stats)
		if len(w.samples) == 0 {
			continue
		}
		// The counters at the window's start: the last beat before it, or
		// the first beat of a worker that joined since (it had produced
		// nothing before).
		base := w.samples[0]
		for _, s := range w.samples {
			if s.at.After(start) {
				break
			}
			base = s
		}
		addCounters(&win, diffCounters(w.samples[len(w.samples)-1].c, base.c))
	}
	if span := st.Span.Seconds(); span > 0 {
		st.ServedQPS = float64(win.Results) / span
		st.ErrorQPS = float64(win.Errors) / span
	}
	st.Total = total
	st.Results, st.Errors, st.Degraded = win.Results, win.Errors, win.Degraded
	st.P50Ms = wire.LatencyQuantile(win.Latency, 0.5)
	st.P95Ms = wire.LatencyQuantile(win.Latency, 0.95)
	st.MeanMs = math.NaN()
	if win.Results > 0 {
		st.MeanMs = win.LatencySumMs / float64(win.Results)
	}
	var answers uint64
	var confSum float64
	for m, n := range win.AnsweredBy {
		if n == 0 {
			continue
		}
		st.AnsweredBy[m] = n
		st.ModelConfidence[m] = win.ConfidenceSum[m] / float64(n)
		answers += n
		confSum += win.ConfidenceSum[m]
	}
	st.MeanConfidence = math.NaN()
	if answers > 0 {
		st.MeanConfidence = confSum / float64(answers)
	}
	return st
}

// addCounters adds b to a.
func addCounters(a *wire.WorkerCounters, b wire.WorkerCounters) {
	a.Results += b.Results
	a.Errors += b.Errors
	a.Degraded += b.Degraded
	a.LatencySumMs += b.LatencySumMs
	for m, n := range b.AnsweredBy {
		a.AnsweredBy[m] += n
	}
	for m, x := range b.ConfidenceSum {
		a.ConfidenceSum[m] += x
	}
	for i, n := range b.Latency {
		if i < len(a.Latency) {
			a.Latency[i] += n
		}
	}
}

// diffCounters returns b − a (cumulative counters of one instance; a
// counter that went backwards counts as 0).
func diffCounters(b, a wire.WorkerCounters) wire.WorkerCounters {
	sub := func(x, y uint64) uint64 {
		if x < y {
			return 0
		}
		return x - y
	}
	d := emptyCounters()
	d.Results = sub(b.Results, a.Results)
	d.Errors = sub(b.Errors, a.Errors)
	d.Degraded = sub(b.Degraded, a.Degraded)
	d.LatencySumMs = max(b.LatencySumMs-a.LatencySumMs, 0)
	for m, n := range b.AnsweredBy {
		d.AnsweredBy[m] = sub(n, a.AnsweredBy[m])
	}
	for m, x := range b.ConfidenceSum {
		d.ConfidenceSum[m] = max(x-a.ConfidenceSum[m], 0)
	}
	for i, n := range b.Latency {
		if i < len(d.Latency) {
			var prev uint64
			if i < len(a.Latency) {
				prev = a.Latency[i]
			}
			d.Latency[i] = sub(n, prev)
		}
	}
	return d
}

// modelsOf returns the sorted keys of m.
func modelsOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
