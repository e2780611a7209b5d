// Package controlstate holds what a service serves from its pipeline's
// control bucket: one immutable snapshot of the plan and the gear in force,
// and the Follower that turns the bucket's `plan` and `gear` values into
// snapshots. Ingress and stage workers share it, so both resolve a gear by
// the same rule and keep their last good state the same way.
//
// The package is pure: natsbus.WatchControl delivers the values, the
// services add their own views and metrics through Options.
package controlstate

import (
	"encoding/json"
	"log/slog"
	"sync/atomic"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Snapshot is one immutable view of the control state: the plan and the
// gear in force. A service loads the current snapshot once per decision, so
// the decision is made against one consistent plan and gear.
type Snapshot struct {
	// Plan is the plan in force.
	Plan *plan.Plan
	// Index is the position of Gear in Plan.Gears.
	Index int
	// Gear is the gear in force, &Plan.Gears[Index].
	Gear *plan.Gear
	// State is the gear state the controller stored, with Gear and Index
	// replaced by the gear in force.
	State wire.GearState
}

// MaxBatch is model's max batch in the gear in force.
func (s *Snapshot) MaxBatch(model string) int { return s.Gear.MaxBatch(model) }

// Fallback says how New chose a snapshot's gear from a gear state.
type Fallback int

const (
	// NoFallback: the plan knows the state's gear id.
	NoFallback Fallback = iota
	// FallbackIndex: the plan does not know the id; the stored index is in
	// range and chose the gear.
	FallbackIndex
	// FallbackFirst: the plan knows neither the id nor the index; the
	// plan's first gear (index 0, the most accurate) is in force.
	FallbackFirst
)

// New returns the snapshot of plan p in the gear st names, resolved by the
// one rule ingress and workers share:
//
//  1. a gear id the plan knows wins;
//  2. otherwise the stored index, if it is a gear of the plan: the
//     controller writes id and index together, so an unknown id means the
//     plan and the gear key disagree for a moment (a plan change renamed
//     the gears), and the index keeps the load level the controller chose;
//  3. otherwise gear 0.
//
// The Fallback result says which step chose; callers log a warning for the
// last two when st names a gear (an empty id means no gear key yet). p must
// have at least one gear, as every parsed plan has.
func New(p *plan.Plan, st wire.GearState) (*Snapshot, Fallback) {
	i, fb := p.GearByID(st.Gear), NoFallback
	if i < 0 {
		i, fb = st.Index, FallbackIndex
		if i < 0 || i >= len(p.Gears) {
			i, fb = 0, FallbackFirst
		}
	}
	st.Gear, st.Index = p.Gears[i].ID, i
	return &Snapshot{Plan: p, Index: i, Gear: &p.Gears[i], State: st}, fb
}

// Options are what a service adds to a Follower.
type Options struct {
	// Pipeline, when set, makes the follower ignore plans of any other
	// pipeline (logged as an error, the last good plan stays). Empty
	// accepts every plan and leaves the check to the caller.
	Pipeline string
	// Logger receives what is applied and what is ignored; nil discards.
	Logger *slog.Logger
	// Applied, when set, is called after every new snapshot is in force,
	// on the goroutine that called Apply, before Ready is closed for the
	// first plan: key is the bucket key that made it (wire.KeyPlan or
	// wire.KeyGear) and live is Apply's. Services set their gauges, measure
	// gear switches and publish their own views here.
	Applied func(s *Snapshot, key string, live bool)
}

// Follower keeps the current snapshot from the control bucket's values.
// Apply must be called from one goroutine (the watch); Load and Ready are
// safe from any.
type Follower struct {
	opts  Options
	cur   atomic.Pointer[Snapshot]
	ready chan struct{}
	// pending is a gear state seen before any plan; only Apply touches it.
	pending *wire.GearState
}

// NewFollower returns a follower without a snapshot yet.
func NewFollower(o Options) *Follower {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Follower{opts: o, ready: make(chan struct{})}
}

// Load returns the current snapshot; nil before the first plan.
func (f *Follower) Load() *Snapshot { return f.cur.Load() }

// Ready is closed once the first plan is applied.
func (f *Follower) Ready() <-chan struct{} { return f.ready }

// Apply applies one value of the control bucket; its signature is
// natsbus.WatchControl's callback. live is false for the values a watch
// delivers first (the state at start), true for later changes.
//
// Bad values are logged and ignored: the service keeps the last good plan
// and gear. A gear seen before any plan waits for the plan. A new plan
// keeps the gear in force (resolved again by New's rule in the new plan).
func (f *Follower) Apply(key string, value []byte, live bool) {
	log := f.opts.Logger
	old := f.cur.Load()
	switch key {
	case wire.KeyPlan:
		p, err := plan.Parse(value)
		if err != nil {
			log.Error("ignoring invalid plan from the control bucket", "err", err)
			return
		}
		if f.opts.Pipeline != "" && p.Pipeline != f.opts.Pipeline {
			log.Error("ignoring a plan for another pipeline", "plan_pipeline", p.Pipeline, "pipeline", f.opts.Pipeline)
			return
		}
		st := wire.GearState{Reason: "default: no gear key yet"}
		switch {
		case old != nil:
			st = old.State
		case f.pending != nil:
			st = *f.pending
		}
		s := f.store(p, st, key, live)
		log.Info("plan applied", "pipeline", p.Pipeline, "gears", len(p.Gears), "gear", s.State.Gear, "first_model", s.Gear.Cascade[0].Model)
		if old == nil {
			f.pending = nil
			close(f.ready)
		}
	case wire.KeyGear:
		var st wire.GearState
		if err := json.Unmarshal(value, &st); err != nil {
			log.Error("ignoring undecodable gear state", "err", err)
			return
		}
		if old == nil {
			f.pending = &st
			return
		}
		s := f.store(old.Plan, st, key, live)
		log.Debug("gear applied", "gear", s.State.Gear, "index", s.Index, "first_model", s.Gear.Cascade[0].Model, "reason", st.Reason)
	}
}

// store resolves, stores and announces a new snapshot.
func (f *Follower) store(p *plan.Plan, st wire.GearState, key string, live bool) *Snapshot {
	s, fb := New(p, st)
	if st.Gear != "" {
		switch fb {
		case FallbackIndex:
			f.opts.Logger.Warn("gear is not in the plan; using its stored index", "gear", st.Gear, "index", s.Index, "using", s.Gear.ID)
		case FallbackFirst:
			f.opts.Logger.Warn("gear is not in the plan and its index is out of range; using the first gear", "gear", st.Gear, "index", st.Index, "using", s.Gear.ID)
		}
	}
	f.cur.Store(s)
	if f.opts.Applied != nil {
		f.opts.Applied(s, key, live)
	}
	return s
}
