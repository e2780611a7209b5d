package controller

import (
	"fmt"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
)

// TestAlertedSeriesExistFromStart: once the controller is ready, every
// series an alert rule or the dashboard reads exists (at zero for
// counters: rate() sees nothing of a series born with its first event),
// and the gear is exported by index and by id.
func TestAlertedSeriesExistFromStart(t *testing.T) {
	srv := natstest.Start(t)
	file, p := fastPlanFile(t)
	c := startController(t, srv, testConfig(t, file, nil))
	natstest.WaitForState(t, "controller ready", waitTimeout, func() (bool, string) {
		v := metricValue(t, c.reg, "cascade_controller_ready", nil)
		return v == 1, fmt.Sprint(v)
	})
	mfs, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	has := func(name string, labels ...string) bool {
		_, ok := metrictest.Lookup(mfs, name, labels...)
		return ok
	}
	for _, d := range []string{"up", "down"} {
		if !has("cascade_controller_gear_switches_total", "direction", d) {
			t.Errorf("cascade_controller_gear_switches_total{direction=%q} is absent at start", d)
		}
	}
	for _, op := range errorOps {
		if !has("cascade_controller_errors_total", "op", op) {
			t.Errorf("cascade_controller_errors_total{op=%q} is absent at start", op)
		}
	}
	for _, m := range p.UsedModels() {
		for _, s := range []string{"pending", "ack_pending"} {
			if !has("cascade_controller_backlog_messages", "model", m, "state", s) {
				t.Errorf("cascade_controller_backlog_messages{model=%q,state=%q} is absent at start", m, s)
			}
		}
	}
	if got := metricValue(t, c.reg, "cascade_controller_plan_gears", nil); got != float64(len(p.Gears)) {
		t.Errorf("cascade_controller_plan_gears = %v, want %d", got, len(p.Gears))
	}
	if got := metricValue(t, c.reg, "cascade_controller_plan_slo_p95_seconds", nil); got != p.SLO.P95Ms/1000 {
		t.Errorf("cascade_controller_plan_slo_p95_seconds = %v, want %v", got, p.SLO.P95Ms/1000)
	}
	first := p.Gears[0].ID
	if got := metricValue(t, c.reg, "cascade_controller_gear_info", map[string]string{"gear": first}); got != 1 {
		t.Errorf("cascade_controller_gear_info{gear=%q} = %v, want 1", first, got)
	}
	if got := metricValue(t, c.reg, "cascade_controller_gear_info", nil); got != 1 {
		t.Errorf("cascade_controller_gear_info has %v series at 1, want exactly one", got)
	}
}
