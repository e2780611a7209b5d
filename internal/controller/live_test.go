package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/dashboard"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// fakeWorker publishes heartbeats every 100 ms (announcing intervalMs), as
// a stage worker with the given runners that answers 100 results/s (4 ms each, by model
// "large" with confidence 0.8). stop ends the beats, with a leaving beat
// when clean (a crash sends none).
type fakeWorker struct {
	stop func(clean bool)
}

func startFakeWorker(t *testing.T, nc *nats.Conn, pipeline, instance string, runners int, intervalMs float64) *fakeWorker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	leave := make(chan bool, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		started := time.Now()
		hb := wire.WorkerHeartbeat{Instance: instance, Models: []string{"small", "medium", "large"}, Runners: runners,
			Threads: 1, Provider: "cpu", IntervalMs: intervalMs, StartedUnixNano: started.UnixNano()}
		send := func(state string) {
			now := time.Now()
			n := uint64(now.Sub(started).Seconds() * 100)
			lat := make([]uint64, len(wire.LatencyBucketsMs)+1)
			lat[wire.LatencyBucket(4)] = n
			hb.Seq++
			hb.State, hb.AtUnixNano = state, now.UnixNano()
			hb.Stats = wire.WorkerCounters{Results: n, AnsweredBy: map[string]uint64{"large": n},
				ConfidenceSum: map[string]float64{"large": 0.8 * float64(n)}, Latency: lat, LatencySumMs: 4 * float64(n)}
			b, _ := json.Marshal(&hb)
			_ = nc.Publish(wire.WorkerStatsSubject(pipeline, instance), b)
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				if <-leave {
					send(wire.WorkerLeaving)
					_ = nc.Flush()
				}
				return
			case <-tick.C:
				send(wire.WorkerServing)
			}
		}
	}()
	var once sync.Once
	w := &fakeWorker{stop: func(clean bool) {
		once.Do(func() {
			leave <- clean
			cancel()
			wg.Wait()
		})
	}}
	t.Cleanup(func() { w.stop(false) })
	return w
}

// TestRunFollowsLiveCapacity runs the controller with fake workers and a
// steady load of 70 qps on the test plan (made for 2 runners: accurate
// carries 100 qps, balanced 200): with 2 runners it holds accurate; when a
// worker crashes (no more beats) it moves to balanced once three beats are
// missed; when the worker is back it returns to accurate; a worker that
// leaves cleanly is dropped at once. The dashboard shows the capacity,
// the workers and their served load.
func TestRunFollowsLiveCapacity(t *testing.T) {
	srv := natstest.Start(t)
	file, p := fastPlanFile(t)
	mux := http.NewServeMux()
	web := httptest.NewServer(mux)
	defer web.Close()
	c := startControllerHTTP(t, srv, testConfig(t, file, nil), mux)
	kv := controlBucket(t, srv, p.Pipeline)
	nc := srv.Connect(t)
	startFakeIngress(t, nc, p.Pipeline, "ing-1", 70)
	runners := func() float64 { return metricValue(t, c.reg, "cascade_controller_live_runners", nil) }

	// a announces a 2 s interval (gone only 7 s after its last beat), so
	// that its clean stop below is seen to be dropped on its leaving beat.
	a := startFakeWorker(t, nc, p.Pipeline, "worker-a", 1, 2000)
	b := startFakeWorker(t, nc, p.Pipeline, "worker-b", 1, 100)
	natstest.WaitForState(t, "2 live runners", waitTimeout, func() (bool, string) { return runners() == 2, fmt.Sprint(runners()) })
	waitGear(t, kv, "accurate")
	waitTicks(t, c.reg, 10)
	if st, _, _ := readGear(t, kv); st.Gear != "accurate" {
		t.Fatalf("with 2 runners at 70 qps the controller left accurate: %+v", st)
	}

	// The dashboard: both workers, their 200 results/s at 4 ms.
	var ds dashboard.State
	natstest.WaitForState(t, "dashboard with two workers", waitTimeout, func() (bool, string) {
		resp, err := http.Get(web.URL + "/dashboard/state")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		ds = dashboard.State{}
		if err := json.NewDecoder(resp.Body).Decode(&ds); err != nil {
			return false, err.Error()
		}
		ok := len(ds.Workers) == 2 && ds.Capacity.Known && ds.Capacity.LiveRunners == 2 && ds.Served.P95Ms != nil &&
			ds.Served.QPS > 150 && ds.Served.QPS < 250 && len(ds.Served.Mix) == 1
		return ok, fmt.Sprintf("%+v", ds)
	})
	if p50 := *ds.Served.P50Ms; p50 <= 3 || p50 > 5 || ds.Served.Mix[0].Model != "large" || *ds.Served.MeanConf < 0.79 || *ds.Served.MeanConf > 0.81 {
		t.Errorf("dashboard: p50 %v, mix %+v, mean confidence %v", p50, ds.Served.Mix, *ds.Served.MeanConf)
	}

	// A crash: b stops beating without a word.
	crash := time.Now()
	b.stop(false)
	st := waitGear(t, kv, "balanced")
	t.Logf("worker crashed: balanced after %v (%s)", time.Since(crash).Round(time.Millisecond), st.Reason)
	if d := time.Since(crash); d < 300*time.Millisecond {
		t.Errorf("moved after %v, before three beats (100 ms each) were missed", d)
	}
	if runners() != 1 {
		t.Errorf("live runners %v after the crash, want 1", runners())
	}

	// Back: a new instance; accurate again after the dwell.
	back := time.Now()
	startFakeWorker(t, nc, p.Pipeline, "worker-b2", 1, 100)
	waitGear(t, kv, "accurate")
	t.Logf("worker back: accurate after %v", time.Since(back).Round(time.Millisecond))

	// A clean stop is seen at the next tick, not after missed beats (7 s
	// for a).
	leave := time.Now()
	a.stop(true)
	natstest.WaitForState(t, "1 live runner", waitTimeout, func() (bool, string) { return runners() == 1, fmt.Sprint(runners()) })
	if d := time.Since(leave); d > 3*time.Second {
		t.Errorf("a leaving worker was dropped after %v, not at its leaving beat", d)
	}
	waitGear(t, kv, "balanced")
}
