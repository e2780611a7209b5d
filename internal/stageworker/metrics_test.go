package stageworker

import (
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// TestAlertedSeriesExistFromStart: right after a worker is ready, every
// series an alert rule or the dashboard reads exists at zero for each
// hosted model (rate() and increase() see nothing of a series that appears
// with its first event), and the gear is exported by index and by id.
func TestAlertedSeriesExistFromStart(t *testing.T) {
	p := testPlan(t, []plan.Gear{
		gear("acc", 100, 16, 2, "linear", 0.9, "mlp_small", 0.8, "mlp"),
		gear("fast", 200, 32, 1, "linear", 0.5, "mlp_small"),
	})
	e := startEnv(t, p)
	e.setGear(t, "fast")
	w := e.startWorker(t, nil, hooks{})
	natstest.WaitFor(t, "worker ready", 20*time.Second, func() bool { return w.counter("cascade_worker_ready") == 1 })
	mfs, err := w.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, model := range p.UsedModels() {
		for _, s := range []series{
			{"cascade_worker_dead_letters_total", map[string]string{"model": model}},
			{"cascade_worker_redeliveries_total", map[string]string{"model": model}},
			{"cascade_worker_degraded_total", map[string]string{"model": model, "reason": degradedDeadline}},
			{"cascade_worker_degraded_total", map[string]string{"model": model, "reason": degradedQueueFull}},
			{"cascade_worker_items_total", map[string]string{"model": model, "outcome": outcomeFailed}},
			{"cascade_worker_items_total", map[string]string{"model": model, "outcome": outcomeDegraded}},
			{"cascade_worker_acks_total", map[string]string{"model": model, "action": "dead_letter"}},
			{"cascade_worker_backlog_messages", map[string]string{"model": model}},
		} {
			if v, ok := s.value(mfs); !ok || v != 0 {
				t.Errorf("%s: value %v, present %v; want 0 from the start", s, v, ok)
			}
		}
	}
	if v, ok := (series{"cascade_worker_gear_info", map[string]string{"gear": "fast"}}).value(mfs); !ok || v != 1 {
		t.Errorf("cascade_worker_gear_info{gear=\"fast\"} = %v (present %v), want 1", v, ok)
	}
	if got := w.counter("cascade_worker_gear_index"); got != 1 {
		t.Errorf("cascade_worker_gear_index = %v, want 1", got)
	}
}

// series names one time series: a metric and its labels.
type series struct {
	name   string
	labels map[string]string
}

func (s series) String() string { return fmt.Sprintf("%s%v", s.name, s.labels) }

// value returns the series' counter or gauge value (a histogram's count)
// and whether it is present with exactly these labels.
func (s series) value(mfs []*dto.MetricFamily) (float64, bool) {
	var pairs []string
	for k, v := range s.labels {
		pairs = append(pairs, k, v)
	}
	return metrictest.Lookup(mfs, s.name, pairs...)
}
