package controlstate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/controlstate"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// planJSON is a plan of pipeline with three gears: acc (0), mid (1) and
// fast (2), or with the gears named by ids.
func planJSON(t *testing.T, pipeline string, ids ...string) []byte {
	t.Helper()
	if len(ids) == 0 {
		ids = []string{"acc", "mid", "fast"}
	}
	var gears []string
	for i, id := range ids {
		gears = append(gears, fmt.Sprintf(`{"id": %q, "max_qps": %d,
     "cascade": [{"model": "small", "threshold": 0.9}, {"model": "big", "threshold": 0}],
     "batching": {"max_batch": 8, "max_delay_ms": 2}, "runners": {"small": 0.5, "big": 0.5}}`, id, 100*(i+1)))
	}
	b := []byte(`{
  "version": 1, "pipeline": "` + pipeline + `", "slo": {"p95_ms": 50}, "capacity": 2, "confidence": "margin",
  "input": {"name": "x", "datatype": "FP32", "shape": [4], "classes": 3},
  "models": [
    {"name": "small", "file": "small.onnx", "profile": {"points": [{"batch": 1, "latency_ms": 0.1}]}},
    {"name": "big", "file": "big.onnx", "profile": {"points": [{"batch": 1, "latency_ms": 1}]}}
  ],
  "ladder": ["small", "big"],
  "gears": [` + strings.Join(gears, ",") + `]
}`)
	if _, err := plan.Parse(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func parsePlan(t *testing.T, b []byte) *plan.Plan {
	t.Helper()
	p, err := plan.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func gearJSON(t *testing.T, id string, index int) []byte {
	t.Helper()
	b, err := json.Marshal(wire.GearState{Gear: id, Index: index, Reason: "test", AtUnixNano: 42})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewResolvesGear(t *testing.T) {
	p := parsePlan(t, planJSON(t, "tiny"))
	tests := []struct {
		name string
		st   wire.GearState
		want string
		fb   controlstate.Fallback
	}{
		{"known id wins over the index", wire.GearState{Gear: "fast", Index: 0}, "fast", controlstate.NoFallback},
		{"unknown id: stored index in range", wire.GearState{Gear: "renamed", Index: 1}, "mid", controlstate.FallbackIndex},
		{"unknown id: last index in range", wire.GearState{Gear: "renamed", Index: 2}, "fast", controlstate.FallbackIndex},
		{"unknown id: index past the end", wire.GearState{Gear: "renamed", Index: 3}, "acc", controlstate.FallbackFirst},
		{"unknown id: negative index", wire.GearState{Gear: "renamed", Index: -1}, "acc", controlstate.FallbackFirst},
		{"no gear key yet", wire.GearState{}, "acc", controlstate.FallbackIndex},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.st.Reason, tt.st.AtUnixNano = "why", 7
			s, fb := controlstate.New(p, tt.st)
			i := p.GearByID(tt.want)
			if s.Gear.ID != tt.want || s.Index != i || s.Gear != &p.Gears[i] || s.Plan != p {
				t.Errorf("gear %q index %d, want %q index %d", s.Gear.ID, s.Index, tt.want, i)
			}
			if s.State.Gear != tt.want || s.State.Index != i || s.State.Reason != "why" || s.State.AtUnixNano != 7 {
				t.Errorf("state %+v, want the stored one resolved to %q/%d", s.State, tt.want, i)
			}
			if fb != tt.fb {
				t.Errorf("fallback %v, want %v", fb, tt.fb)
			}
		})
	}
}

// kv is one value the follower is given.
type kv struct {
	key   string
	value []byte
}

// records counts the log records at or above Warn.
type records struct {
	mu    sync.Mutex
	warns []string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		r.mu.Lock()
		r.warns = append(r.warns, rec.Message)
		r.mu.Unlock()
	}
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

func TestFollowerApply(t *testing.T) {
	good, other := planJSON(t, "tiny"), planJSON(t, "other")
	renamed := planJSON(t, "tiny", "acc2", "mid2", "fast2")
	pl := func(b []byte) kv { return kv{wire.KeyPlan, b} }
	gear := func(id string, index int) kv { return kv{wire.KeyGear, gearJSON(t, id, index)} }
	tests := []struct {
		name     string
		pipeline string
		values   []kv
		// wantGear is the gear in force at the end ("" for no snapshot);
		// wantPlan the plan's first gear id, telling which plan is in force.
		wantGear, wantPlan string
		// warns is how many warnings and errors were logged.
		warns int
	}{
		{name: "plan alone: the first gear", values: []kv{pl(good)}, wantGear: "acc", wantPlan: "acc"},
		{name: "known id", values: []kv{pl(good), gear("fast", 2)}, wantGear: "fast", wantPlan: "acc"},
		{name: "known id wins over a stale index", values: []kv{pl(good), gear("mid", 0)}, wantGear: "mid", wantPlan: "acc"},
		{name: "unknown id with its index in range", values: []kv{pl(good), gear("renamed", 1)}, wantGear: "mid", wantPlan: "acc", warns: 1},
		{name: "unknown id with its index out of range", values: []kv{pl(good), gear("fast", 2), gear("renamed", 5)}, wantGear: "acc", wantPlan: "acc", warns: 1},
		{name: "gear before plan waits for the plan", values: []kv{gear("fast", 2), pl(good)}, wantGear: "fast", wantPlan: "acc"},
		{name: "only the last gear before the plan counts", values: []kv{gear("fast", 2), gear("mid", 1), pl(good)}, wantGear: "mid", wantPlan: "acc"},
		{name: "gear without a plan: no snapshot", values: []kv{gear("fast", 2)}},
		{name: "invalid plan before any: no snapshot", values: []kv{pl([]byte(`{"version": 99}`))}, warns: 1},
		{name: "invalid plan ignored keeps the last good", values: []kv{pl(good), gear("mid", 1), pl([]byte(`{"version": 99}`))}, wantGear: "mid", wantPlan: "acc", warns: 1},
		{name: "undecodable gear ignored keeps the last good", values: []kv{pl(good), gear("mid", 1), {wire.KeyGear, []byte("not json")}}, wantGear: "mid", wantPlan: "acc", warns: 1},
		{name: "plan for another pipeline ignored", pipeline: "tiny", values: []kv{pl(good), gear("fast", 2), pl(renamed), pl(other)}, wantGear: "fast2", wantPlan: "acc2", warns: 2},
		{name: "plan for another pipeline before any: no snapshot", pipeline: "tiny", values: []kv{gear("fast", 2), pl(other)}, warns: 1},
		{name: "any pipeline without the option", values: []kv{pl(other)}, wantGear: "acc", wantPlan: "acc"},
		{name: "new plan keeps the gear by id", values: []kv{pl(good), gear("fast", 2), pl(good)}, wantGear: "fast", wantPlan: "acc"},
		{name: "new plan renaming the gears keeps the index", values: []kv{pl(good), gear("mid", 1), pl(renamed)}, wantGear: "mid2", wantPlan: "acc2", warns: 1},
		{name: "other keys ignored", values: []kv{pl(good), {"stats", []byte("x")}}, wantGear: "acc", wantPlan: "acc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &records{}
			var f *controlstate.Follower
			applied := 0
			f = controlstate.NewFollower(controlstate.Options{
				Pipeline: tt.pipeline,
				Logger:   slog.New(logs),
				Applied: func(s *controlstate.Snapshot, key string, live bool) {
					applied++
					if f.Load() != s {
						t.Errorf("Applied(%s) before the snapshot is in force", key)
					}
					if !live {
						t.Errorf("Applied(%s) live = false, want Apply's true", key)
					}
				},
			})
			for _, v := range tt.values {
				f.Apply(v.key, v.value, true)
			}
			s := f.Load()
			ready := false
			select {
			case <-f.Ready():
				ready = true
			default:
			}
			switch {
			case tt.wantGear == "":
				if s != nil || ready || applied != 0 {
					t.Fatalf("snapshot %+v, ready %v, applied %d; want none", s, ready, applied)
				}
			case s == nil || !ready:
				t.Fatalf("snapshot %v, ready %v; want gear %q", s, ready, tt.wantGear)
			case s.Gear.ID != tt.wantGear || s.State.Gear != tt.wantGear || s.Plan.Gears[0].ID != tt.wantPlan:
				t.Errorf("gear %q (state %q) of the plan starting at %q, want %q of %q", s.Gear.ID, s.State.Gear, s.Plan.Gears[0].ID, tt.wantGear, tt.wantPlan)
			}
			if len(logs.warns) != tt.warns {
				t.Errorf("logged %d warnings %q, want %d", len(logs.warns), logs.warns, tt.warns)
			}
		})
	}
}

// TestFollowerAppliedBeforeReady: a service's view published in Applied is
// in place when Ready fires, and Applied sees the key and live flag.
func TestFollowerAppliedBeforeReady(t *testing.T) {
	type call struct {
		key  string
		live bool
		gear string
	}
	var calls []call
	var f *controlstate.Follower
	f = controlstate.NewFollower(controlstate.Options{Applied: func(s *controlstate.Snapshot, key string, live bool) {
		select {
		case <-f.Ready():
			if len(calls) == 0 {
				t.Error("Ready closed before the first Applied")
			}
		default:
		}
		calls = append(calls, call{key, live, s.Gear.ID})
	}})
	f.Apply(wire.KeyGear, gearJSON(t, "mid", 1), false)
	f.Apply(wire.KeyPlan, planJSON(t, "tiny"), false)
	f.Apply(wire.KeyGear, gearJSON(t, "fast", 2), true)
	want := []call{{wire.KeyPlan, false, "mid"}, {wire.KeyGear, true, "fast"}}
	if len(calls) != len(want) || calls[0] != want[0] || calls[1] != want[1] {
		t.Fatalf("Applied calls %+v, want %+v", calls, want)
	}
}
