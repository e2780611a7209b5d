package stageworker

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
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
	e := startEnv(t, p, natsbus.TopologyConfig{})
	e.setGear(t, "fast")
	w := e.startWorker(t, nil, hooks{})
	deadline := time.Now().Add(20 * time.Second)
	for w.counter("cascade_worker_ready") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("worker not ready after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
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

func (s series) String() string { return s.name + fmtLabels(s.labels) }

func fmtLabels(l map[string]string) string {
	out := "{"
	for k, v := range l {
		if len(out) > 1 {
			out += ","
		}
		out += k + "=" + `"` + v + `"`
	}
	return out + "}"
}

// value returns the series' counter or gauge value (a histogram's count)
// and whether it is present with exactly these labels.
func (s series) value(mfs []*dto.MetricFamily) (float64, bool) {
	for _, mf := range mfs {
		if mf.GetName() != s.name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(s.labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := s.labels[lp.GetName()]; !ok || v != lp.GetValue() {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}
