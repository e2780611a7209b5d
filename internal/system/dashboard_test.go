package system_test

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/dashboard"
	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
)

// domReading is what the dashboard page shows, read from its DOM.
type domReading struct {
	Gear      string   `json:"gear"`
	Updates   int      `json:"updates"`
	Conn      string   `json:"conn"`
	Offered   string   `json:"offered"`
	Served    string   `json:"served"`
	P50       string   `json:"p50"`
	P95       string   `json:"p95"`
	Live      string   `json:"live"`
	Workers   string   `json:"workers"`
	Total     string   `json:"total"`
	Conf      string   `json:"conf"`
	SLO       string   `json:"slo"`
	Backlog   []string `json:"backlog"`
	Mix       []string `json:"mix"`
	Paths     int      `json:"paths"`
	Resources []string `json:"resources"`
}

// readDOM is the script that collects a domReading: numbers come from the
// data-value attributes the page sets next to the text it shows.
const readDOM = `(() => {
  const el = (id) => document.getElementById(id);
  const v = (id) => { const e = el(id); return e ? (e.dataset.value !== undefined ? e.dataset.value : e.textContent) : ""; };
  return {
    gear: el("gear-id").textContent, updates: Number(el("updates").textContent), conn: el("conn").textContent,
    offered: v("offered"), served: v("served"), p50: v("p50"), p95: v("p95"), live: v("live-runners"),
    workers: v("workers-count"), total: v("total-results"), conf: v("mean-conf"), slo: el("slo").textContent,
    backlog: [...document.querySelectorAll("#backlog tr")].map((r) => r.id),
    mix: [...document.querySelectorAll("#mix tr[data-model]")].map((r) => r.dataset.model),
    paths: document.querySelectorAll("#timeline path").length,
    resources: performance.getEntriesByType("resource").map((e) => e.name),
  };
})()`

func num(t *testing.T, what, s string) float64 {
	t.Helper()
	x, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("the page shows %s %q, not a number", what, s)
	}
	return x
}

// gearInfo returns the gear label of cascade_controller_gear_info.
func gearInfo(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "cascade_controller_gear_info" {
			for _, m := range mf.GetMetric() {
				if m.GetGauge().GetValue() == 1 {
					return m.GetLabel()[0].GetValue()
				}
			}
		}
	}
	return ""
}

func answers(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	return metrictest.Sum(reg, "cascade_worker_items_total", "outcome", "answered") +
		metrictest.Sum(reg, "cascade_worker_items_total", "outcome", "degraded")
}

// TestDashboardInChromium serves the all-in-one system's dashboard, offers
// it a steady load and reads the page in real headless Chromium while it
// updates from its event stream: the numbers it shows change from one
// reading to the next and agree with /dashboard/state and the Prometheus
// metrics of the same moment.
func TestDashboardInChromium(t *testing.T) {
	requireORT(t)
	findChromium(t)
	const rate = 150.0
	reg := prometheus.NewRegistry()
	mux := telemetry.Handler(reg)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close) // after the system has stopped: its event streams end then
	sys := startConfig(t, system.Config{DataDir: t.TempDir(), NATSPort: -1, Workers: 1, Registerer: reg, HTTP: mux})
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	loadDone := startLoad(ctx, t, sys, loadgen.Config{
		Pipeline: sys.Plan.Pipeline, Items: images, Schedule: loadgen.Constant(rate), Duration: 20 * time.Second,
		Timeout: 10 * time.Second, Seed: 3, Client: "dashboard",
	})

	b := startBrowser(t, 1400, 1100)
	// Load for longer than the served-statistics window (5 s) first: the
	// page then compares steady numbers, not the warm-up.
	time.Sleep(6 * time.Second)
	if err := b.navigate(ctx, srv.URL+"/dashboard"); err != nil {
		t.Fatal(err)
	}
	read := func() domReading {
		t.Helper()
		var r domReading
		if err := b.eval(ctx, readDOM, &r); err != nil {
			t.Fatalf("read the page: %v", err)
		}
		return r
	}
	// Wait until the page is live and shows served results.
	var r1 domReading
	for deadline := time.Now().Add(20 * time.Second); ; {
		r1 = domReading{}
		err := b.eval(ctx, readDOM, &r1) // fails until the page has loaded
		if err == nil && r1.Conn == "live" && r1.Updates >= 3 && r1.P95 != "" && r1.Served != "" && r1.Served != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page did not come alive: %+v (%v)\nchromium: %s", r1, err, b.stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := answers(t, reg)
	r1 = read()
	after := answers(t, reg)
	check := func(r domReading, before, after float64) {
		t.Helper()
		// The gear: page, Prometheus and the JSON snapshot agree.
		if g := gearInfo(t, reg); r.Gear != g {
			t.Errorf("page shows gear %q, cascade_controller_gear_info says %q", r.Gear, g)
		}
		resp, err := http.Get(srv.URL + "/dashboard/state")
		if err != nil {
			t.Fatal(err)
		}
		var st dashboard.State
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Gear.ID != r.Gear || len(st.History) == 0 {
			t.Errorf("/dashboard/state: gear %q (page %q), %d history points", st.Gear.ID, r.Gear, len(st.History))
		}
		// Capacity: one worker with 2 runners, as the metrics say.
		live, workers := num(t, "live runners", r.Live), num(t, "workers", r.Workers)
		if m := metrictest.Sum(reg, "cascade_controller_live_runners"); live != m || live != 2 {
			t.Errorf("page shows %v live runners, cascade_controller_live_runners %v, want 2", live, m)
		}
		if m := metrictest.Sum(reg, "cascade_controller_live_workers"); workers != m || workers != 1 {
			t.Errorf("page shows %v workers, cascade_controller_live_workers %v, want 1", workers, m)
		}
		if st.Capacity.LiveRunners != int(live) {
			t.Errorf("/dashboard/state live runners %d, page %v", st.Capacity.LiveRunners, live)
		}
		// Offered load: the intake metric and the load generator's rate.
		offered := num(t, "offered", r.Offered)
		if m := metrictest.Sum(reg, "cascade_controller_intake_requests_per_second"); math.Abs(offered-m) > 0.4*rate {
			t.Errorf("page shows offered %.1f req/s, cascade_controller_intake_requests_per_second %.1f", offered, m)
		}
		if offered < 0.6*rate || offered > 1.4*rate {
			t.Errorf("page shows offered %.1f req/s under a load of %.0f", offered, rate)
		}
		served := num(t, "served", r.Served)
		if served < 0.6*rate || served > 1.4*rate {
			t.Errorf("page shows served %.1f req/s under a load of %.0f", served, rate)
		}
		// Results so far: the workers' heartbeats against their answer
		// counters read just before and after (a heartbeat is up to
		// ~1 s old; results are counted when made, items when acked).
		if total := num(t, "total results", r.Total); total < before-2*rate || total > after+rate {
			t.Errorf("page shows %v results; cascade_worker_items_total{outcome=answered|degraded} was %v before and %v after", total, before, after)
		}
		p50, p95 := num(t, "p50", r.P50), num(t, "p95", r.P95)
		if !(p50 > 0 && p50 <= p95 && p95 < 2000) {
			t.Errorf("page shows p50 %v ms, p95 %v ms", p50, p95)
		}
		if conf := num(t, "mean confidence", r.Conf); conf <= 0 || conf > 1 {
			t.Errorf("page shows mean confidence %v", conf)
		}
		if r.SLO != "50" {
			t.Errorf("page shows SLO %q, the plan says 50 ms", r.SLO)
		}
		if len(r.Backlog) != len(sys.Plan.UsedModels()) || len(r.Mix) == 0 || r.Paths < 2 {
			t.Errorf("page shows backlog rows %v, answering models %v, %d timeline paths", r.Backlog, r.Mix, r.Paths)
		}
		for _, res := range r.Resources {
			if !strings.HasPrefix(res, srv.URL+"/") {
				t.Errorf("the page loaded %s, outside the controller", res)
			}
		}
	}
	check(r1, before, after)

	t1, mid1 := time.Now(), (before+after)/2
	time.Sleep(3 * time.Second)
	before = answers(t, reg)
	r2 := read()
	after = answers(t, reg)
	check(r2, before, after)
	// Served: the page's rate against the answer counters' between the
	// two readings.
	if m, served := ((before+after)/2-mid1)/time.Since(t1).Seconds(), num(t, "served", r2.Served); served < 0.6*m || served > 1.4*m {
		t.Errorf("page shows served %.1f req/s; cascade_worker_items_total grew %.1f/s", served, m)
	}
	t.Logf("page at t1: gear %s offered %s served %s p50 %s p95 %s results %s updates %d", r1.Gear, r1.Offered, r1.Served, r1.P50, r1.P95, r1.Total, r1.Updates)
	t.Logf("page at t2: gear %s offered %s served %s p50 %s p95 %s results %s updates %d", r2.Gear, r2.Offered, r2.Served, r2.P50, r2.P95, r2.Total, r2.Updates)
	// It updates live: ~4 events a second, and the counts move.
	if r2.Updates < r1.Updates+6 {
		t.Errorf("the page took %d updates in 3 s, want ≥ 6", r2.Updates-r1.Updates)
	}
	if num(t, "total", r2.Total) <= num(t, "total", r1.Total) || r2.Served == r1.Served && r2.Offered == r1.Offered {
		t.Errorf("the numbers did not change: %+v then %+v", r1, r2)
	}
	rep := <-loadDone
	if rep.Lost != 0 || len(rep.ErrorCounts()) != 0 {
		t.Errorf("load: sent %d, lost %d, errors %v", rep.Sent, rep.Lost, rep.ErrorCounts())
	}
}
