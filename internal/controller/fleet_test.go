package controller

import (
	"math"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// beat is a heartbeat of instance at worker time at (from t0) whose
// counters say n results so far, all answered by model with confidence
// 0.9 and a latency of 4 ms.
func beat(instance string, runners int, at time.Duration, n uint64, model string) wire.WorkerHeartbeat {
	lat := make([]uint64, len(wire.LatencyBucketsMs)+1)
	lat[wire.LatencyBucket(4)] = n
	return wire.WorkerHeartbeat{
		Instance: instance, State: wire.WorkerServing, Runners: runners, IntervalMs: 500,
		AtUnixNano: time.Unix(1_700_000_000, 0).Add(at).UnixNano(),
		Stats: wire.WorkerCounters{
			Results: n, AnsweredBy: map[string]uint64{model: n}, ConfidenceSum: map[string]float64{model: 0.9 * float64(n)},
			Latency: lat, LatencySumMs: 4 * float64(n),
		},
	}
}

func TestFleetLiveCapacity(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	f := NewFleet(5 * time.Second)
	if f.Seen() {
		t.Fatal("a new fleet has seen a worker")
	}
	if _, r := f.Live(t0); r != 0 {
		t.Fatalf("runners %d before any beat", r)
	}
	f.Observe(beat("a", 2, 0, 0, "m"), t0)
	f.Observe(beat("b", 3, 0, 0, "m"), t0)
	if ws, r := f.Live(t0); r != 5 || len(ws) != 2 || ws[0].Instance != "a" || !f.Seen() {
		t.Fatalf("two workers: %d runners, %+v", r, ws)
	}
	// b misses beats: it is still counted 1.75 s (3.5 intervals) after its
	// last beat, and gone after.
	for i := 1; i <= 4; i++ {
		at := time.Duration(i) * 500 * time.Millisecond
		f.Observe(beat("a", 2, at, 0, "m"), t0.Add(at))
	}
	if _, r := f.Live(t0.Add(1750 * time.Millisecond)); r != 5 {
		t.Fatalf("b dropped before three missed beats: %d runners", r)
	}
	if ws, r := f.Live(t0.Add(1800 * time.Millisecond)); r != 2 || len(ws) != 1 {
		t.Fatalf("b still counted after three missed beats: %d runners", r)
	}
	// A leaving beat drops a at once.
	leave := beat("a", 2, 2500*time.Millisecond, 0, "m")
	leave.State = wire.WorkerLeaving
	f.Observe(leave, t0.Add(2500*time.Millisecond))
	if ws, r := f.Live(t0.Add(2500 * time.Millisecond)); r != 0 || len(ws) != 0 {
		t.Fatalf("a leaving still counted: %d runners %+v", r, ws)
	}
	if !f.Seen() {
		t.Fatal("capacity unknown after workers left")
	}
	// An older beat after a newer one is ignored: a stays gone.
	f.Observe(beat("a", 2, time.Second, 0, "m"), t0.Add(2600*time.Millisecond))
	if _, r := f.Live(t0.Add(2600 * time.Millisecond)); r != 0 {
		t.Fatalf("a stale beat revived a: %d runners", r)
	}
}

func TestFleetWindowStats(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	f := NewFleet(2 * time.Second)
	// a: 100 results/s answered by small; b: 50/s by large. 4 s of beats;
	// the window covers the last 2 s.
	for i := 0; i <= 8; i++ {
		at := time.Duration(i) * 500 * time.Millisecond
		f.Observe(beat("a", 1, at, uint64(50*i), "small"), t0.Add(at))
		f.Observe(beat("b", 1, at, uint64(25*i), "large"), t0.Add(at))
	}
	now := t0.Add(4 * time.Second)
	st := f.Stats(now)
	if math.Abs(st.ServedQPS-150) > 1e-9 || st.Results != 300 || st.Span != 2*time.Second {
		t.Errorf("served %v qps, %d results in %v; want 150, 300 in 2s", st.ServedQPS, st.Results, st.Span)
	}
	if st.AnsweredBy["small"] != 200 || st.AnsweredBy["large"] != 100 {
		t.Errorf("answered by %v", st.AnsweredBy)
	}
	if math.Abs(st.MeanConfidence-0.9) > 1e-9 || math.Abs(st.ModelConfidence["large"]-0.9) > 1e-9 {
		t.Errorf("mean confidence %v, per model %v", st.MeanConfidence, st.ModelConfidence)
	}
	// Every latency is 4 ms: in the (3, 5] bucket.
	if st.P50Ms <= 3 || st.P50Ms > 5 || st.P95Ms <= st.P50Ms || st.P95Ms > 5 || math.Abs(st.MeanMs-4) > 1e-9 {
		t.Errorf("p50 %v p95 %v mean %v", st.P50Ms, st.P95Ms, st.MeanMs)
	}
	if st.Total.Results != 600 {
		t.Errorf("total results %d, want 600", st.Total.Results)
	}
	// b leaves at 4.5 s; a goes on. What b served stays in the window until
	// the window has passed it; its results stay in the totals, also after
	// it is forgotten.
	leave := beat("b", 1, 4500*time.Millisecond, 225, "large")
	leave.State = wire.WorkerLeaving
	f.Observe(leave, t0.Add(4500*time.Millisecond))
	for i := 9; i <= 14; i++ {
		at := time.Duration(i) * 500 * time.Millisecond
		f.Observe(beat("a", 1, at, uint64(50*i), "small"), t0.Add(at))
	}
	if st := f.Stats(t0.Add(4500 * time.Millisecond)); math.Abs(st.ServedQPS-150) > 1e-9 {
		t.Errorf("right after b left: served %v, want 150", st.ServedQPS)
	}
	if st := f.Stats(t0.Add(7 * time.Second)); math.Abs(st.ServedQPS-100) > 1e-9 || st.Total.Results != 700+225 {
		t.Errorf("2.5 s after b left: served %v, total %d; want 100, 925", st.ServedQPS, st.Total.Results)
	}
	later := t0.Add(30 * time.Second)
	f.Live(later) // forgets both
	if st := f.Stats(later); st.Total.Results != 925 || st.Total.AnsweredBy["large"] != 225 || !math.IsNaN(st.P95Ms) || st.ServedQPS != 0 {
		t.Errorf("after both were forgotten: %+v", st)
	}
}

func TestFleetYoungerThanItsWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	f := NewFleet(5 * time.Second)
	// The controller hears a worker that has been serving 100/s for long:
	// after 1 s the rate is over that 1 s, not diluted over 5.
	f.Observe(beat("a", 1, 0, 10_000, "m"), t0)
	f.Observe(beat("a", 1, time.Second, 10_100, "m"), t0.Add(time.Second))
	if st := f.Stats(t0.Add(time.Second)); math.Abs(st.ServedQPS-100) > 1e-9 || st.Span != time.Second {
		t.Errorf("served %v over %v, want 100 over 1s", st.ServedQPS, st.Span)
	}
	// A worker joining later counts from its first beat.
	f.Observe(beat("b", 1, 3*time.Second, 0, "m"), t0.Add(3*time.Second))
	f.Observe(beat("a", 1, 4*time.Second, 10_400, "m"), t0.Add(4*time.Second))
	f.Observe(beat("b", 1, 4*time.Second, 100, "m"), t0.Add(4*time.Second))
	if st := f.Stats(t0.Add(4 * time.Second)); math.Abs(st.ServedQPS-125) > 1e-9 {
		t.Errorf("served %v, want (400 + 100) / 4 s = 125", st.ServedQPS)
	}
}
