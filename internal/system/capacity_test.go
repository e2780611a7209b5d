package system_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

// capacityPlanFile writes a two-gear plan on the MNIST ladder for 4
// runners (two workers of 2): the accurate gear (the built-in plan's
// first) carries accurateQPS, the cheap one (its last) 3 × that. The rate
// window is 3 s, so the measured rate of a steady Poisson load is steady
// enough for thresholds a few tens of req/s apart. The thresholds are far
// below what the box carries: the test is about the decision, not the CPU.
func capacityPlanFile(t *testing.T, accurateQPS float64) string {
	t.Helper()
	p, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	accurate, cheap := p.Gears[0], p.Gears[len(p.Gears)-1]
	accurate.MaxQPS, cheap.MaxQPS = accurateQPS, 3*accurateQPS
	p.Gears = []plan.Gear{accurate, cheap}
	p.Capacity = 4
	p.Hysteresis.RateWindowMs = 3000
	p.Hysteresis.SampleIntervalMs = 250
	p.Hysteresis.MinDwellMs = 1000
	file := plantest.WriteFile(t, p)
	if _, err := plan.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestGearsFollowLiveCapacity runs the controller, the ingress and two
// stage workers (2 runners each) under a steady 195 req/s on a plan made
// for 4 runners whose accurate gear carries 300 req/s. With both workers
// the accurate gear holds (195 < 0.8 × 300); one worker stopped leaves 2
// runners, the accurate gear's max_qps scales to 150 < 195 and the
// controller shifts to the cheap gear within a few seconds and stays
// there; a worker started again brings 4 runners back and the controller
// climbs back to the accurate gear. The times are in the test log.
//
// With CASCADE_DASHBOARD_SCREENSHOT=path (and chromium) it also saves a
// screenshot of the dashboard at the end (docs/dashboard.png is one).
func TestGearsFollowLiveCapacity(t *testing.T) {
	requireORT(t)
	const rate = 195.0
	reg := prometheus.NewRegistry()
	mux := telemetry.Handler(reg)
	shot := os.Getenv("CASCADE_DASHBOARD_SCREENSHOT")
	var web *httptest.Server
	if shot != "" {
		findChromium(t)
		web = httptest.NewServer(mux)
		t.Cleanup(web.Close)
	}
	modelDir, err := filepath.Abs(filepath.Join("..", "..", "models", "mnist"))
	if err != nil {
		t.Fatal(err)
	}
	sys := startConfig(t, system.Config{
		DataDir: t.TempDir(), NATSPort: -1, PlanFile: capacityPlanFile(t, 300), Workers: 2, Registerer: reg, HTTP: mux,
		Env: map[string]string{"CASCADE_WORKER_RUNNERS": "2", "CASCADE_MODEL_DIR": modelDir},
	})
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := startLoad(lctx, t, sys, loadgen.Config{
		Pipeline: sys.Plan.Pipeline, Items: images, Schedule: loadgen.Constant(rate), Duration: 2 * time.Minute,
		Timeout: 10 * time.Second, Seed: 11, Client: "capacity",
	})

	var b *browser
	if shot != "" {
		// The page follows the whole run (the browser starts before the
		// measurements: its start costs CPU).
		b = startBrowser(t, 1400, 720)
		if err := b.navigate(ctx, web.URL+"/dashboard"); err != nil {
			t.Fatal(err)
		}
	}
	gear := func() string { return gearInfo(t, reg) }
	runners := func() float64 { return metrictest.Sum(reg, "cascade_controller_live_runners") }
	// waitUntil polls cond every 20 ms for up to limit and returns how
	// long it took.
	waitUntil := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				t.Fatalf("no %s within %v: gear %s, live runners %v, intake %.1f req/s", what, limit, gear(), runners(),
					metrictest.Sum(reg, "cascade_controller_intake_requests_per_second"))
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}
	// holds checks that the gear stays g for d.
	holds := func(g string, d time.Duration) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if got := gear(); got != g {
				t.Fatalf("gear %s left for %s (live runners %v, intake %.1f req/s)", g, got, runners(),
					metrictest.Sum(reg, "cascade_controller_intake_requests_per_second"))
			}
		}
	}
	accurate, cheap := sys.Plan.Gears[0].ID, sys.Plan.Gears[1].ID

	// Two workers: a full rate window of load, then the accurate gear holds.
	waitUntil("4 live runners", 30*time.Second, func() bool { return runners() == 4 })
	waitUntil("the accurate gear with 4 runners", 30*time.Second, func() bool { return gear() == accurate })
	time.Sleep(3 * time.Second)
	holds(accurate, 4*time.Second)

	// One worker stops (as on SIGTERM).
	workers := sys.Workers()
	killed := time.Now()
	if err := sys.StopWorker(ctx, workers[len(workers)-1]); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(killed)
	down := waitUntil("the cheap gear with 2 runners", 10*time.Second, func() bool { return gear() == cheap }) + stopped
	t.Logf("worker stopped (%v to stop): live runners %v, gear %s → %s after %v", stopped.Round(time.Millisecond), runners(), accurate, cheap, down.Round(time.Millisecond))
	if down > 5*time.Second {
		t.Errorf("the shift to %s took %v, want a few seconds", cheap, down)
	}
	holds(cheap, 4*time.Second) // 2 runners cannot carry the accurate gear

	// A worker starts again.
	if _, err := sys.AddWorker(); err != nil {
		t.Fatal(err)
	}
	ready := waitUntil("4 live runners again", 60*time.Second, func() bool { return runners() == 4 })
	back := waitUntil("the accurate gear again", 30*time.Second, func() bool { return gear() == accurate }) + ready
	t.Logf("worker started: announced after %v (models loaded), gear %s → %s after %v (%v after its first heartbeat)",
		ready.Round(time.Millisecond), cheap, accurate, back.Round(time.Millisecond), (back - ready).Round(time.Millisecond))
	if back-ready > 5*time.Second {
		t.Errorf("the climb back took %v after the worker announced itself, want a few seconds", back-ready)
	}
	holds(accurate, 2*time.Second)

	if b != nil {
		time.Sleep(3 * time.Second)
		png, err := b.screenshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	stopLoad()
	rep := <-loadDone
	if rep.Lost != 0 || rep.Duplicates != 0 || len(rep.ErrorCounts()) != 0 {
		t.Errorf("load: sent %d, lost %d, duplicates %d, errors %v", rep.Sent, rep.Lost, rep.Duplicates, rep.ErrorCounts())
	}
	t.Logf("load: %d requests at %.0f req/s, answers by gear %v", rep.Sent, rate, rep.ByGear())
}
