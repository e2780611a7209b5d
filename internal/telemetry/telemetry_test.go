package telemetry

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
