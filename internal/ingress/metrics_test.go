package ingress_test

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
)

// TestAlertedSeriesExistFromStart: right after the ingress is ready, every
// door × outcome series of cascade_ingress_requests_total (alerts use
// rate() over them) and the latency histograms of every door exist at zero,
// and the gear is exported by index and by id.
func TestAlertedSeriesExistFromStart(t *testing.T) {
	e := startEnv(t)
	e.putGear(t, "fast")
	ti := e.ready(t, nil)
	natstest.WaitFor(t, "gear fast applied", 10*time.Second, func() bool { return ti.counter(t, "cascade_ingress_gear_index") == 1 })
	mfs, err := ti.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	outcomes := []string{"admitted", "invalid_input", "overloaded", "deadline_exceeded", "unavailable", "duplicate", "internal"}
	for _, door := range []string{"nats", "jobs", "http"} {
		for _, o := range outcomes {
			if !present(mfs, "cascade_ingress_requests_total", "door", door, "outcome", o) {
				t.Errorf("cascade_ingress_requests_total{door=%q,outcome=%q} is absent at start", door, o)
			}
		}
		for _, h := range []string{"cascade_ingress_request_duration_seconds", "cascade_ingress_admission_duration_seconds"} {
			if !present(mfs, h, "door", door) {
				t.Errorf("%s{door=%q} is absent at start", h, door)
			}
		}
	}
	if !present(mfs, "cascade_ingress_requests_total", "door", "jobs", "outcome", "deferred") {
		t.Error(`cascade_ingress_requests_total{door="jobs",outcome="deferred"} is absent at start`)
	}
	if got := ti.counter(t, "cascade_ingress_gear_info", "gear", "fast"); got != 1 {
		t.Errorf(`cascade_ingress_gear_info{gear="fast"} = %v, want 1`, got)
	}
	if got := ti.counter(t, "cascade_ingress_ready"); got != 1 {
		t.Errorf("cascade_ingress_ready = %v, want 1", got)
	}
}

// present reports whether metric name has a series with exactly the label
// pairs given.
func present(mfs []*dto.MetricFamily, name string, labels ...string) bool {
	_, ok := metrictest.Lookup(mfs, name, labels...)
	return ok
}
