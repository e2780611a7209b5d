package ingress

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

// control is one immutable snapshot of what the ingress admits to: the plan
// and the gear in force. Admissions load the current snapshot once, so a
// request is validated and routed against one consistent plan and gear.
type control struct {
	plan  *plan.Plan
	index int
	gear  *plan.Gear
	state wire.GearState
}

// first returns the model new requests are published to.
func (c *control) first() string { return c.gear.Cascade[0].Model }

func newControl(p *plan.Plan, st wire.GearState) *control {
	i := p.GearByID(st.Gear)
	if i < 0 {
		i = 0 // no gear key yet, or a gear of another plan: the most accurate
	}
	st.Gear, st.Index = p.Gears[i].ID, i
	return &control{plan: p, index: i, gear: &p.Gears[i], state: st}
}

// watcher keeps the control snapshot current from the KV keys plan and gear.
type watcher struct {
	pipeline string
	cur      atomic.Pointer[control]
	havePlan chan struct{} // closed when the first plan is applied
	logger   *slog.Logger
	metrics  *metrics
	// pending is a gear state seen before any plan.
	pending *wire.GearState
}

func newWatcher(pipeline string, logger *slog.Logger, m *metrics) *watcher {
	return &watcher{pipeline: pipeline, havePlan: make(chan struct{}), logger: logger, metrics: m}
}

// load returns the current snapshot; nil before the first plan.
func (w *watcher) load() *control { return w.cur.Load() }

// run applies every change of the plan and gear keys until ctx ends,
// reopening a broken watch after every (natsbus.WatchControl).
func (w *watcher) run(ctx context.Context, kv jetstream.KeyValue, every time.Duration) error {
	return natsbus.WatchControl(ctx, kv, every, w.logger, func(key string, value []byte, _ bool) {
		w.apply(key, value)
	})
}

// apply applies one KV value. Bad values are logged and ignored: the
// ingress keeps admitting with the last good plan and gear.
func (w *watcher) apply(key string, value []byte) {
	old := w.cur.Load()
	switch key {
	case wire.KeyPlan:
		p, err := plan.Parse(value)
		if err != nil {
			w.logger.Error("ignoring invalid plan from the control bucket", "err", err)
			return
		}
		if p.Pipeline != w.pipeline {
			w.logger.Error("ignoring a plan for another pipeline", "plan_pipeline", p.Pipeline, "pipeline", w.pipeline)
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
		w.logger.Info("plan applied", "pipeline", p.Pipeline, "gears", len(p.Gears), "gear", c.state.Gear, "first_model", c.first())
		if old == nil {
			close(w.havePlan)
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
			w.logger.Warn("gear is not in the plan; admitting to the first gear", "gear", st.Gear)
		}
		c := newControl(old.plan, st)
		w.cur.Store(c)
		w.metrics.gear.Set(float64(c.index))
		w.logger.Debug("gear applied", "gear", c.state.Gear, "first_model", c.first(), "reason", st.Reason)
	}
}

// waitBucket returns the pipeline's control bucket once the controller has
// created it, or nil when ctx ends first.
func waitBucket(ctx context.Context, js jetstream.JetStream, pipeline string, every time.Duration) jetstream.KeyValue {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		// Any error (bucket missing, NATS restarting) means "not yet".
		if kv, err := js.KeyValue(ctx, wire.KVBucket(pipeline)); err == nil {
			return kv
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
