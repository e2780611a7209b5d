package stageworker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/pkg/batching"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// routePlan is a plan over a four-model ladder for routing tests. Profiles
// are 1 ms per item; hop overhead 1 ms.
func routePlan(t *testing.T) *plan.Plan {
	t.Helper()
	prof := plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 1}, {Batch: 64, LatencyMs: 64}}}
	p := &plan.Plan{
		Version: plan.FormatVersion, Pipeline: "route", SLO: plan.SLO{P95Ms: 100}, Capacity: 2, Confidence: plan.MetricMargin,
		Input:     plan.Input{Name: "x", Datatype: "FP32", Shape: []int64{4}, Classes: 3},
		Overheads: plan.Overheads{HopOverheadMs: 1},
		Models: []plan.Model{
			{Name: "a", File: "a.onnx", Profile: prof}, {Name: "b", File: "b.onnx", Profile: prof},
			{Name: "c", File: "c.onnx", Profile: prof}, {Name: "d", File: "d.onnx", Profile: prof},
		},
		Ladder: []string{"a", "b", "c", "d"},
		Gears: []plan.Gear{
			{ID: "acc", MaxQPS: 10, Cascade: []plan.Stage{{Model: "b", Threshold: 0.8}, {Model: "d"}},
				Batching: plan.Batching{MaxBatch: 8, MaxDelayMs: 2}, Runners: map[string]float64{"b": 0.25, "d": 0.75}},
			{ID: "mid", MaxQPS: 20, Cascade: []plan.Stage{{Model: "a", Threshold: 0.9}, {Model: "b", Threshold: 0.7}, {Model: "c"}},
				Batching: plan.Batching{MaxBatch: 16, MaxDelayMs: 4}, Runners: map[string]float64{"a": 0.2, "b": 0.3}},
			{ID: "fast", MaxQPS: 40, Cascade: []plan.Stage{{Model: "a", Threshold: 0.6, MaxBatch: 32}, {Model: "c"}},
				Batching: plan.Batching{MaxBatch: 64, MaxDelayMs: 1}},
		},
		Hysteresis: plan.DefaultHysteresis(),
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDecide(t *testing.T) {
	p := routePlan(t)
	now := time.Unix(1000, 0)
	far := now.Add(time.Hour).UnixNano()
	item := func(admitted string, deadline int64, visits ...wire.Visit) *wire.Item {
		return &wire.Item{ID: "x", AdmittedGear: admitted, DeadlineUnixNano: deadline, Visits: visits}
	}
	visit := func(model, gear string) wire.Visit { return wire.Visit{Model: model, Gear: gear} }
	tests := []struct {
		name  string
		gear  string
		item  *wire.Item
		model string
		conf  float64
		batch int
		want  decision
	}{
		// The model is in the current gear.
		{"confident first stage answers", "mid", item("mid", far), "a", 0.9, 1, decision{kind: routeAnswer}},
		{"uncertain first stage escalates to the next stage", "mid", item("mid", far), "a", 0.89, 1, decision{kind: routeEscalate, next: "b"}},
		{"middle stage escalates to the last", "mid", item("mid", far, visit("a", "mid")), "b", 0.5, 1, decision{kind: routeEscalate, next: "c"}},
		{"last stage always answers", "mid", item("mid", far, visit("a", "mid"), visit("b", "mid")), "c", 0, 1, decision{kind: routeAnswer}},
		{"the current gear's threshold wins over the admission gear's", "fast", item("mid", far), "a", 0.7, 1, decision{kind: routeAnswer}},
		{"the current gear's next stage wins", "fast", item("mid", far), "a", 0.5, 1, decision{kind: routeEscalate, next: "c"}},
		{"no deadline: never degraded", "mid", item("mid", 0), "a", 0, 1, decision{kind: routeEscalate, next: "b"}},

		// The model is not in the current gear.
		{"not in gear: answers by its admission gear's threshold", "acc", item("mid", far), "a", 0.95, 1, decision{kind: routeAnswer}},
		{"not in gear: escalates to the first later model of the current gear", "acc", item("mid", far), "a", 0.5, 1, decision{kind: routeEscalate, next: "b"}},
		{"not in gear: the sending gear (previous visit) decides, not admission", "fast", item("acc", far, visit("a", "mid")), "b", 0.75, 1, decision{kind: routeAnswer}},
		{"not in gear: below the sending gear's threshold escalates", "fast", item("acc", far, visit("a", "mid")), "b", 0.65, 1, decision{kind: routeEscalate, next: "c"}},
		{"not in gear: last in the sending gear answers", "fast", item("acc", far, visit("b", "acc")), "d", 0, 1, decision{kind: routeAnswer}},
		{"not in gear: nothing later in the current gear answers", "mid", item("acc", far, visit("b", "acc")), "d", 0.1, 1, decision{kind: routeAnswer}},
		{"not in gear: unknown sending gear answers", "mid", item("gone", far), "d", 0.1, 1, decision{kind: routeAnswer}},
		{"not in gear: skips models already visited", "mid", &wire.Item{ID: "x", AdmittedGear: "acc", DeadlineUnixNano: far, Visits: []wire.Visit{visit("c", "fast")}}, "b", 0.1, 1, decision{kind: routeAnswer}},

		// Deadline-aware escalation: next stage needs profile(batch) + 1 ms hop.
		{"deadline leaves room for the next stage", "mid", item("mid", now.Add(3*time.Millisecond).UnixNano()), "a", 0.5, 2, decision{kind: routeEscalate, next: "b"}},
		{"deadline too close: degraded", "mid", item("mid", now.Add(3*time.Millisecond).UnixNano()), "a", 0.5, 3, decision{kind: routeDegraded, next: "b", reason: degradedDeadline}},
		{"next stage latency is taken at its own max batch at most", "mid", item("mid", now.Add(17*time.Millisecond+time.Microsecond).UnixNano()), "a", 0.5, 64, decision{kind: routeEscalate, next: "b"}},
		{"a confident item is answered, not degraded, even with no time left", "mid", item("mid", now.UnixNano()), "a", 0.95, 1, decision{kind: routeAnswer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newControl(p, wire.GearState{Gear: tt.gear})
			if c.Gear.ID != tt.gear {
				t.Fatalf("gear %q not applied", tt.gear)
			}
			if got := c.stageRoute(tt.model, tt.batch).decide(tt.item, tt.conf, now); got != tt.want {
				t.Errorf("decide = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNewControlResolvesGear(t *testing.T) {
	p := routePlan(t)
	tests := []struct {
		st   wire.GearState
		want string
	}{
		{wire.GearState{Gear: "fast", Index: 0}, "fast"},
		{wire.GearState{Gear: "unknown", Index: 1}, "mid"},
		{wire.GearState{Gear: "unknown", Index: 9}, "acc"},
		{wire.GearState{}, "acc"},
	}
	for _, tt := range tests {
		c := newControl(p, tt.st)
		if c.Gear.ID != tt.want || c.State.Gear != tt.want || c.Index != p.GearByID(tt.want) {
			t.Errorf("%+v: gear %q (state %q, index %d), want %q", tt.st, c.Gear.ID, c.State.Gear, c.Index, tt.want)
		}
	}
}

func TestPolicyAndWeight(t *testing.T) {
	p := routePlan(t)
	idle := 100 * time.Millisecond
	tests := []struct {
		gear, model string
		policy      batching.Policy
		weight      float64
	}{
		{"mid", "a", batching.Policy{MaxBatch: 16, MaxDelay: 4 * time.Millisecond, IdleWait: idle}, 0.2},
		{"mid", "c", batching.Policy{MaxBatch: 16, MaxDelay: 4 * time.Millisecond, IdleWait: idle}, 1.0 / 3},
		{"mid", "d", batching.Policy{MaxBatch: 16, IdleWait: idle}, 0.2}, // draining: no delay, least share
		{"fast", "a", batching.Policy{MaxBatch: 32, MaxDelay: time.Millisecond, IdleWait: idle}, 0.5},
		{"fast", "c", batching.Policy{MaxBatch: 64, MaxDelay: time.Millisecond, IdleWait: idle}, 0.5},
		{"acc", "d", batching.Policy{MaxBatch: 8, MaxDelay: 2 * time.Millisecond, IdleWait: idle}, 0.75},
		{"acc", "a", batching.Policy{MaxBatch: 8, IdleWait: idle}, 0.25},
	}
	for _, tt := range tests {
		c := newControl(p, wire.GearState{Gear: tt.gear})
		if got := c.policy(tt.model, idle); got != tt.policy {
			t.Errorf("%s/%s: policy %+v, want %+v", tt.gear, tt.model, got, tt.policy)
		}
		if got := c.weight(tt.model); got < tt.weight-1e-9 || got > tt.weight+1e-9 {
			t.Errorf("%s/%s: weight %v, want %v", tt.gear, tt.model, got, tt.weight)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	cfg, err := ConfigFromEnv(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Process:     servicemain.Process{NATSURL: "nats://127.0.0.1:4222", Pipeline: "mnist", LogLevel: "info", LogFormat: "text"},
		MetricsAddr: "127.0.0.1:9090",
		Runners:     2, Threads: 1, Provider: "cpu", InboxPrefixes: wire.DefaultInboxPrefixes, IdleWait: 100 * time.Millisecond, NakDelay: time.Second, PublishTimeout: 5 * time.Second,
	}
	if fmt.Sprint(cfg) != fmt.Sprint(want) {
		t.Errorf("defaults\n got %+v\nwant %+v", cfg, want)
	}

	cfg, err = ConfigFromEnv(map[string]string{
		"CASCADE_METRICS_ADDR": "", "CASCADE_WORKER_MODELS": "linear, mlp,", "CASCADE_WORKER_RUNNERS": "4",
		"CASCADE_WORKER_THREADS": "2", "CASCADE_WORKER_IDLE_WAIT": "20ms", "CASCADE_MODEL_DIR": "/models",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MetricsAddr != "" || strings.Join(cfg.Models, "|") != "linear|mlp" || cfg.Runners != 4 || cfg.Threads != 2 ||
		cfg.IdleWait != 20*time.Millisecond || cfg.ModelDir != "/models" {
		t.Errorf("parsed %+v", cfg)
	}

	_, err = ConfigFromEnv(map[string]string{
		"CASCADE_WORKER_RUNNERS": "0", "CASCADE_WORKER_THREADS": "-1", "CASCADE_WORKER_PROVIDER": "tpu",
		"CASCADE_WORKER_MODELS": "a,a", "CASCADE_LOG_FORMAT": "xml",
	})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"RUNNERS", "THREADS", "PROVIDER", "twice", "LOG_FORMAT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %s:\n%v", want, err)
		}
	}
	if _, err := ConfigFromEnv(map[string]string{"CASCADE_WORKER_RUNNERS": "many"}); err == nil {
		t.Error("unparsable runners accepted")
	}
}

func TestWatcherApply(t *testing.T) {
	p := routePlan(t)
	planJSON, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	gearJSON := func(id string, index int, at time.Time) []byte {
		b, err := json.Marshal(wire.GearState{Gear: id, Index: index, AtUnixNano: at.UnixNano()})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	now := time.Unix(5000, 0)
	var applied []time.Duration
	m := newMetrics(prometheus.NewRegistry())
	w := newWatcher(slog.New(slog.DiscardHandler), m, func() time.Time { return now },
		func(_ wire.GearState, d time.Duration) { applied = append(applied, d) })

	// A gear seen before any plan waits for the plan.
	w.apply(wire.KeyGear, gearJSON("fast", 2, now.Add(-time.Second)), true)
	if w.load() != nil {
		t.Fatal("snapshot before any plan")
	}
	w.apply(wire.KeyPlan, []byte(`{"version": 99}`), true)
	if w.load() != nil {
		t.Fatal("invalid plan applied")
	}
	w.apply(wire.KeyPlan, planJSON, true)
	select {
	case <-w.ready:
	default:
		t.Fatal("not ready after a plan")
	}
	if c := w.load(); c.Gear.ID != "fast" {
		t.Fatalf("gear %q, want the pending fast", c.Gear.ID)
	}

	w.apply(wire.KeyGear, gearJSON("mid", 1, now.Add(-3*time.Millisecond)), true)
	if c := w.load(); c.Gear.ID != "mid" || c.Index != 1 {
		t.Fatalf("gear %q/%d, want mid/1", c.Gear.ID, c.Index)
	}
	if len(applied) != 1 || applied[0] != 3*time.Millisecond {
		t.Fatalf("apply latencies %v, want [3ms]", applied)
	}
	if got := testutil.ToFloat64(m.GearIndex); got != 1 {
		t.Errorf("gear gauge %v, want 1", got)
	}
	w.apply(wire.KeyGear, []byte("not json"), true)
	if c := w.load(); c.Gear.ID != "mid" {
		t.Fatalf("undecodable gear changed the gear to %q", c.Gear.ID)
	}
	// An id the plan lacks falls back to the index.
	w.apply(wire.KeyGear, gearJSON("renamed", 0, now), true)
	if c := w.load(); c.Gear.ID != "acc" {
		t.Fatalf("gear %q, want acc (by index)", c.Gear.ID)
	}
	// A gear delivered with the watch's initial values is applied but is not
	// a switch: its age is not an apply latency.
	count := func() uint64 {
		var d dto.Metric
		if err := m.gearApply.Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetHistogram().GetSampleCount()
	}
	before := count()
	w.apply(wire.KeyGear, gearJSON("mid", 1, now.Add(-time.Hour)), false)
	if c := w.load(); c.Gear.ID != "mid" || count() != before {
		t.Fatalf("initial gear: gear %q, apply samples %d → %d; want mid and no new sample", c.Gear.ID, before, count())
	}
	// A new plan keeps the current gear.
	w.apply(wire.KeyGear, gearJSON("fast", 2, now), true)
	w.apply(wire.KeyPlan, planJSON, true)
	if c := w.load(); c.Gear.ID != "fast" {
		t.Fatalf("gear %q after a plan update, want fast", c.Gear.ID)
	}
}

func TestChoose(t *testing.T) {
	p := routePlan(t)
	now := time.Unix(7000, 0)
	idle := 100 * time.Millisecond
	type model struct {
		backlog  int64
		seenAgo  time.Duration
		pending  int
		watching bool
	}
	fresh := 10 * time.Millisecond
	tests := []struct {
		name   string
		gear   string
		models [4]model // a, b, c, d
		want   string   // "" = nothing to do
	}{
		{"idle: nothing to do", "mid", [4]model{{seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh}}, ""},
		{"a stale model is probed before any backlog", "mid",
			[4]model{{backlog: 100, seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: 2 * idle}, {seenAgo: fresh}}, "c"},
		{"a watched model is not stale", "mid",
			[4]model{{seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: 2 * idle, watching: true}, {seenAgo: fresh}}, ""},
		{"largest backlog per share: 10/0.2 beats 12/0.3", "mid",
			[4]model{{backlog: 10, seenAgo: fresh}, {backlog: 12, seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh}}, "a"},
		{"items in hand count", "mid",
			[4]model{{backlog: 10, seenAgo: fresh}, {backlog: 12, seenAgo: fresh, pending: 4}, {seenAgo: fresh}, {seenAgo: fresh}}, "b"},
		{"a model outside the gear drains first", "mid",
			[4]model{{backlog: 10, seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh}, {backlog: 10, seenAgo: fresh}}, "d"},
		{"a model outside the gear drains first, however large the gear's backlog", "mid",
			[4]model{{backlog: 5000, seenAgo: fresh}, {backlog: 4000, seenAgo: fresh}, {seenAgo: fresh}, {backlog: 1, seenAgo: fresh}}, "d"},
		{"items in hand of a model outside the gear drain first", "mid",
			[4]model{{backlog: 5000, seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh, pending: 2}}, "d"},
		{"a stale probe still comes before a drain", "mid",
			[4]model{{seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: 2 * idle}, {backlog: 10, seenAgo: fresh}}, "c"},
		{"a model outside the gear with a backlog is served when nothing else waits", "fast",
			[4]model{{seenAgo: fresh}, {backlog: 1, seenAgo: fresh}, {seenAgo: fresh}, {seenAgo: fresh}}, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMetrics(prometheus.NewRegistry())
			w := &worker{cfg: Config{IdleWait: idle}, now: func() time.Time { return now }, metrics: m,
				ctl: newWatcher(slog.New(slog.DiscardHandler), m, time.Now, nil)}
			w.ctl.cur.Store(newControl(p, wire.GearState{Gear: tt.gear}))
			for i, name := range p.Ladder {
				h := &hosted{name: name, backlogGage: m.backlog.WithLabelValues(name)}
				h.setBacklog(tt.models[i].backlog)
				h.seen.Store(now.Add(-tt.models[i].seenAgo).UnixNano())
				w.models = append(w.models, h)
			}
			r := newRunner(w, 0, nil)
			for i, md := range tt.models {
				if md.watching {
					r.watching[i] = 1
				}
				for range md.pending {
					r.pending[i] = append(r.pending[i], &task{})
				}
			}
			i, ok := r.choose()
			got := ""
			if ok {
				got = w.models[i].name
			}
			if got != tt.want {
				t.Errorf("choose = %q, want %q", got, tt.want)
			}
		})
	}
}
