package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
)

func TestReadyzFollowsReadinessGaugesAndChecks(t *testing.T) {
	reg := prometheus.NewRegistry()
	var checkErr error
	srv := httptest.NewServer(Handler(reg, func() error { return checkErr }))
	defer srv.Close()
	probe := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	expect := func(what string, want int, wantBody string) {
		t.Helper()
		code, body := probe("/readyz")
		if code != want || !strings.Contains(body, wantBody) {
			t.Errorf("%s: /readyz = %d %q, want %d containing %q", what, code, body, want, wantBody)
		}
	}
	expect("no service registered", http.StatusServiceUnavailable, "no service has started")

	a := prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_ingress_ready", Help: "a"})
	b := prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_worker_ready", Help: "b"})
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_ingress_gear_index", Help: "c"})
	reg.MustRegister(a, b, other)
	a.Set(1)
	expect("one service not ready", http.StatusServiceUnavailable, "cascade_worker_ready")
	b.Set(1)
	expect("every service ready", http.StatusOK, "ready")
	checkErr = errors.New("waiting for NATS")
	expect("a failing check", http.StatusServiceUnavailable, "waiting for NATS")

	if code, _ := probe("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200 whatever the readiness", code)
	}
	if code, body := probe("/metrics"); code != http.StatusOK || !strings.Contains(body, "cascade_worker_ready 1") {
		t.Errorf("/metrics = %d without the gauges", code)
	}
}

// TestServeEndsStreamsOnShutdown: a long-lived response (the dashboard's
// event stream) sees its request context end when the server shuts down,
// so Serve returns at once and without error.
func TestServeEndsStreamsOnShutdown(t *testing.T) {
	addr := natstest.FreeAddr(t)
	mux := Handler(prometheus.NewRegistry())
	streaming := make(chan struct{})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		close(streaming)
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, addr, HTTPSecurity{}, mux, slog.New(slog.DiscardHandler)) }()
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err = http.Get("http://" + addr + "/stream"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	defer resp.Body.Close()
	<-streaming
	cancel()
	natstest.Returned(t, "Serve with a stream open", 1500*time.Millisecond, done)
}

// TestServiceMetrics: a gear switch replaces the gear's info series, and
// ZeroSeries creates every combination of label values at zero.
func TestServiceMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := With(reg)
	m := NewServiceMetrics(f, "cascade_test", "1 when ready.", "the gear in force")
	m.SetGear(0, "g1")
	m.SetGear(2, "g3")
	vec := f.CounterVec("cascade_test_items_total", "Items.", "model", "outcome")
	ZeroSeries(vec.MetricVec, []string{"a", "b"}, []string{"ok", "failed", "late"})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string][]string{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetValue())
			}
			series[mf.GetName()] = append(series[mf.GetName()], strings.Join(labels, ","))
		}
	}
	if got := series["cascade_test_gear_info"]; len(got) != 1 || got[0] != "g3" {
		t.Errorf("gear_info series %q, want only g3", got)
	}
	if got := testutil.ToFloat64(m.GearIndex); got != 2 {
		t.Errorf("gear_index = %v, want 2", got)
	}
	if got := series["cascade_test_items_total"]; len(got) != 6 {
		t.Errorf("items series %q, want the 6 combinations of 2 models and 3 outcomes", got)
	}
}
