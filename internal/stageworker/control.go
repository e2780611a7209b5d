package stageworker

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/wire"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// control is one immutable snapshot of what the worker serves: the plan and
// the gear in force. The watcher swaps in a new snapshot on every change;
// runners load the current one at each decision, so a gear switch takes
// effect at the next decision of every runner without reloading anything.
type control struct {
	plan  *plan.Plan
	index int
	gear  *plan.Gear
	state wire.GearState
	// ladder maps a model to its position in the plan's ladder.
	ladder map[string]int
}

func newControl(p *plan.Plan, st wire.GearState) *control {
	i := p.GearByID(st.Gear)
	if i < 0 {
		i = st.Index
	}
	if i < 0 || i >= len(p.Gears) {
		i = 0
	}
	st.Gear, st.Index = p.Gears[i].ID, i
	c := &control{plan: p, index: i, gear: &p.Gears[i], state: st, ladder: make(map[string]int, len(p.Ladder))}
	for j, m := range p.Ladder {
		c.ladder[m] = j
	}
	return c
}

// watcher keeps the control snapshot current from the KV keys plan and gear.
type watcher struct {
	cur     atomic.Pointer[control]
	ready   chan struct{} // closed when the first plan is applied
	logger  *slog.Logger
	metrics *metrics
	now     func() time.Time
	applied func(wire.GearState, time.Duration)

	// pending is a gear state seen before any plan.
	pending *wire.GearState
}

func newWatcher(logger *slog.Logger, m *metrics, now func() time.Time, applied func(wire.GearState, time.Duration)) *watcher {
	return &watcher{ready: make(chan struct{}), logger: logger, metrics: m, now: now, applied: applied}
}

// load returns the current snapshot; nil before the first plan.
func (w *watcher) load() *control { return w.cur.Load() }

// run applies every change of the plan and gear keys until ctx ends,
// reopening a broken watch (natsbus.WatchControl); the worker keeps serving
// the last good snapshot meanwhile. Only gear writes seen after a watch's
// initial values are switches whose apply latency is measured: the gear in
// force when the worker starts may be hours old.
func (w *watcher) run(ctx context.Context, kv jetstream.KeyValue) error {
	return natsbus.WatchControl(ctx, kv, pollInterval, w.logger, w.apply)
}

// apply applies one KV value. Bad values are logged and ignored: the worker
// keeps serving the last good plan and gear. live is false for the values
// the watch delivers first (the state at start), true for later changes.
func (w *watcher) apply(key string, value []byte, live bool) {
	old := w.cur.Load()
	switch key {
	case wire.KeyPlan:
		p, err := plan.Parse(value)
		if err != nil {
			w.logger.Error("ignoring invalid plan from the control bucket", "err", err)
			return
		}
		st := wire.GearState{Reason: "default: no gear key yet"}
		switch {
		case old != nil:
			st = old.state
		case w.pending != nil:
			st = *w.pending
		}
		c := newControl(p, st)
		w.cur.Store(c)
		w.metrics.gear.Set(float64(c.index))
		w.logger.Info("plan applied", "pipeline", p.Pipeline, "gears", len(p.Gears), "gear", c.state.Gear)
		if old == nil {
			close(w.ready)
		}
	case wire.KeyGear:
		var st wire.GearState
		if err := json.Unmarshal(value, &st); err != nil {
			w.logger.Error("ignoring undecodable gear state", "err", err)
			return
		}
		if old == nil {
			w.pending = &st
			return
		}
		if old.plan.GearByID(st.Gear) < 0 {
			w.logger.Warn("gear is not in the plan; using its index", "gear", st.Gear, "index", st.Index)
		}
		c := newControl(old.plan, st)
		w.cur.Store(c)
		now := w.now()
		var latency time.Duration
		if st.AtUnixNano > 0 {
			latency = now.Sub(time.Unix(0, st.AtUnixNano))
			if live {
				w.metrics.gearApply.Observe(latency.Seconds())
			}
		}
		w.metrics.gear.Set(float64(c.index))
		w.logger.Debug("gear applied", "gear", c.state.Gear, "index", c.index, "reason", st.Reason, "latency", latency)
		if w.applied != nil {
			w.applied(c.state, latency)
		}
	}
}
