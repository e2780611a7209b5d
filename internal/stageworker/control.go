package stageworker

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/controlstate"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/batching"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// control is the worker's view of one control snapshot: the plan and the
// gear in force (controlstate.Snapshot) plus the plan's ladder positions
// for routing. The watcher swaps in a new view on every change; runners
// load the current one at each decision, so a gear switch takes effect at
// the next decision of every runner without reloading anything.
type control struct {
	*controlstate.Snapshot
	// ladder maps a model to its position in the plan's ladder.
	ladder map[string]int
}

// newControl returns the view of plan p in the gear st names, resolved by
// controlstate.New's rule.
func newControl(p *plan.Plan, st wire.GearState) *control {
	s, _ := controlstate.New(p, st)
	return viewOf(s, nil)
}

// viewOf returns the worker's view of s, reusing old's ladder when the plan
// is the same (a gear switch).
func viewOf(s *controlstate.Snapshot, old *control) *control {
	c := &control{Snapshot: s}
	if old != nil && old.Plan == s.Plan {
		c.ladder = old.ladder
		return c
	}
	c.ladder = make(map[string]int, len(s.Plan.Ladder))
	for j, m := range s.Plan.Ladder {
		c.ladder[m] = j
	}
	return c
}

// watcher keeps the worker's control view current from the KV keys plan
// and gear (through a controlstate.Follower), sets the gear gauge, and
// measures the apply latency of gear switches.
type watcher struct {
	follower *controlstate.Follower
	cur      atomic.Pointer[control]
	ready    <-chan struct{} // closed when the first plan is applied
	logger   *slog.Logger
	metrics  *metrics
	now      func() time.Time
	applied  func(wire.GearState, time.Duration)
}

func newWatcher(logger *slog.Logger, m *metrics, now func() time.Time, applied func(wire.GearState, time.Duration)) *watcher {
	w := &watcher{logger: logger, metrics: m, now: now, applied: applied}
	// The worker checks the plan's pipeline itself, and fails: no Pipeline.
	w.follower = controlstate.NewFollower(controlstate.Options{Logger: logger, Applied: w.onApplied})
	w.ready = w.follower.Ready()
	return w
}

// load returns the current view; nil before the first plan.
func (w *watcher) load() *control { return w.cur.Load() }

// run applies every change of the plan and gear keys until ctx ends,
// waiting for the bucket and binding it again when it is recreated
// (natsbus.WatchControl); the worker keeps serving the last good snapshot
// meanwhile.
func (w *watcher) run(ctx context.Context, js jetstream.JetStream, bucket string) error {
	return natsbus.WatchControl(ctx, js, bucket, pollInterval, w.logger, w.apply)
}

// apply applies one KV value (controlstate.Follower.Apply). live is false
// for the values a watch delivers first (the state at start), true for
// later changes.
func (w *watcher) apply(key string, value []byte, live bool) { w.follower.Apply(key, value, live) }

// onApplied publishes the view of a new snapshot. Only gear writes seen
// after a watch's initial values are switches whose apply latency is
// measured: the gear in force when a watch opens may be hours old.
func (w *watcher) onApplied(s *controlstate.Snapshot, key string, live bool) {
	c := viewOf(s, w.cur.Load())
	w.cur.Store(c)
	w.metrics.SetGear(c.Index, c.Gear.ID)
	if key != wire.KeyGear {
		return
	}
	var latency time.Duration
	if at := c.State.AtUnixNano; at > 0 {
		latency = w.now().Sub(time.Unix(0, at))
		if live {
			w.metrics.gearApply.Observe(latency.Seconds())
		}
	}
	if w.applied != nil {
		w.applied(c.State, latency)
	}
}

// maxBatch returns model's max batch in the current gear: its stage's
// override, else the gear's.
func (c *control) maxBatch(model string) int {
	if i, ok := c.Gear.StageOf(model); ok && c.Gear.Cascade[i].MaxBatch > 0 {
		return c.Gear.Cascade[i].MaxBatch
	}
	return max(c.Gear.Batching.MaxBatch, 1)
}

// stageTime is the expected time for an item to pass model at the given
// batch size (clamped to the model's max batch): its profile latency plus
// the plan's hop overhead.
func (c *control) stageTime(model string, batch int) time.Duration {
	ms := c.Plan.HopOverheadMs
	if m, ok := c.Plan.Model(model); ok {
		ms += m.Profile.LatencyMs(min(max(batch, 1), c.maxBatch(model)))
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// policy is model's batching policy in the current gear. A model that is
// not in the gear is only being drained (nothing new is routed to it), so
// its batches do not wait to fill.
func (c *control) policy(model string, idle time.Duration) batching.Policy {
	p := batching.Policy{MaxBatch: c.maxBatch(model), MaxDelay: c.Gear.Batching.MaxDelay(), IdleWait: idle}
	if !c.inGear(model) {
		p.MaxDelay = 0
	}
	return p
}

// inGear reports whether model is a stage of the current gear.
func (c *control) inGear(model string) bool {
	_, ok := c.Gear.StageOf(model)
	return ok
}

// weight is model's runner share in the current gear, the divisor of its
// backlog when runners choose what to serve. A model of the cascade
// without a share gets an equal split; a model outside it gets the
// smallest share of the gear (choose drains such a model before it weighs
// the gear's).
func (c *control) weight(model string) float64 {
	if s := c.Gear.Runners[model]; s > 0 {
		return s
	}
	n := float64(len(c.Gear.Cascade))
	if c.inGear(model) {
		return 1 / n
	}
	least := 1 / n
	for _, s := range c.Gear.Runners {
		if s > 0 && s < least {
			least = s
		}
	}
	return least
}
