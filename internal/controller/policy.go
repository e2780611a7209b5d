package controller

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Direction names which way a gear switch goes. Gears are ordered by MaxQPS,
// so "up" is towards cheaper gears that serve more load and "down" towards
// more accurate gears (the same sense as the plan's DownshiftFactor).
type Direction string

// Directions of a Decision.
const (
	Hold Direction = "hold"
	Up   Direction = "up"
	Down Direction = "down"
)

// Backlog is one model's queue as its durable consumer reports it.
type Backlog struct {
	// Pending are messages not yet delivered to any worker: the queue proper.
	Pending int64
	// AckPending are messages delivered to a worker and not yet acked: the
	// batches being formed and computed.
	AckPending int64
}

// Total is Pending + AckPending.
func (b Backlog) Total() int64 { return b.Pending + b.AckPending }

// Observation is what the controller measured at one tick.
type Observation struct {
	// Now is the time of the measurement.
	Now time.Time
	// QPS is the intake rate: requests admitted per second over the plan's
	// rate window, summed over every ingress instance.
	QPS float64
	// PeakQPS is the highest QPS measured over the plan's downshift hold;
	// the policy moves down only when it too allows (0: QPS alone).
	PeakQPS float64
	// RecentQPS is the intake rate over the plan's short upshift window
	// (0: none); the policy moves up on it too when it is above QPS.
	RecentQPS float64
	// Backlog is per model; models that are missing count as empty. It
	// counts messages, each an envelope of items.
	Backlog map[string]Backlog
	// ItemsPerEnvelope is the mean number of items in the envelopes the
	// ingress instances published to first stages over the rate window
	// (RateMeter.ItemsPerEnvelope; 0 or less: unknown, read as 1). The
	// policy multiplies the current gear's first-stage backlog by it (and,
	// with shared runners, the queues of models the gear does not use), so
	// that the backlog rules weigh items against MaxQPS, which counts items.
	// The gear's later stages hold escalation envelopes of unknown size and
	// count one item a message: a lower bound.
	ItemsPerEnvelope float64
	// Warm reports that the rate window has been observed in full since the
	// controller started. Until then QPS may be an underestimate, so the
	// policy does not move to a more accurate gear.
	Warm bool
	// Runners is the live capacity: the runners of the stage workers whose
	// heartbeats are current (see Fleet). It counts only when RunnersKnown;
	// until the first heartbeat the plan's capacity is assumed.
	Runners      int
	RunnersKnown bool
}

// State is the gear in force and since when.
type State struct {
	// Gear is the index of the current gear in the plan.
	Gear int
	// Since is when the current gear was entered (written to the KV bucket).
	Since time.Time
}

// Decision is the policy's answer for one observation.
type Decision struct {
	// Gear is the index of the gear to be in; equal to State.Gear on Hold.
	Gear int
	// Direction is Hold, Up or Down.
	Direction Direction
	// Reason explains the decision in one line for logs and the KV value.
	Reason string
}

// ErrUnknownGear is returned for a pinned gear id the plan does not have.
var ErrUnknownGear = errors.New("unknown gear")

// Policy chooses gears. It is a pure value: Decide depends only on its
// arguments, so it is tested with a fake clock and no NATS.
//
// Live capacity: the plan's gears are made for plan.Capacity runners. With
// R live runners (Observation.Runners), every gear's MaxQPS below is the
// plan's MaxQPS × R / plan.Capacity: the load a gear carries is taken to
// grow and shrink in proportion to the runners serving it. The same scaled
// figures drive every rule, so losing runners moves up to a cheaper gear at
// once (the load now exceeds the scaled MaxQPS of the current gear), and
// gaining them moves back down with the usual hysteresis. With no runner
// left every scaled MaxQPS is 0 and any load selects the cheapest gear.
// Until a heartbeat has been seen (RunnersKnown false) the factor is 1.
//
// Rules, for the current gear c with capacity MaxQPS(c) and load q:
//
//   - Margin: with the plan's UpshiftFactor u (< 1), every rule up below
//     reads u × MaxQPS(c) for MaxQPS(c) and moves to plan.GearFor(x / u)
//     for plan.GearFor(x), except in the cheapest gear: a gear's MaxQPS is
//     the load at which its p95 reaches the SLO, and the margin keeps the
//     gear in force below it, with room for the plan's error.
//   - Up at once on load: if q > MaxQPS(c), switch straight to
//     plan.GearFor(q), however many gears that skips. Here q is the higher
//     of the rate window's rate and the plan's short upshift window's
//     (Observation.RecentQPS), so a burst moves the gear up before the
//     longer window has averaged it in.
//   - Up at once on backlog: let W be the items waiting (Backlog.Pending) at
//     the models of c's cascade. A queue's messages are envelopes of items:
//     the first stage's count is multiplied by the items per envelope the
//     ingress instances publish (Observation.ItemsPerEnvelope), so W counts
//     items, as MaxQPS does. The spare capacity MaxQPS(c) - q drains them
//     in W / (MaxQPS(c) - q) seconds; if that exceeds UpshiftBacklog, c cannot
//     keep up. Equivalently the required rate R = q + W/UpshiftBacklog exceeds
//     MaxQPS(c); the policy then switches to plan.GearFor(R). Only undelivered
//     messages count here: items already delivered to workers are the batches
//     in hand, which at high load are up to max batch per worker even when the
//     gear keeps up, and counting them would upshift on full batches alone.
//     Items count as one request each at any stage (a later stage sees only
//     the escalated fraction, so this errs on the side of going cheaper);
//     a later stage's escalation envelopes count one item each. With shared
//     runners, W also holds the queues of models c does not use, times the
//     items per envelope: what the gear before left there, which the same
//     runners drain first (a switch to a gear whose first model differs
//     would otherwise hide the backlog that made it).
//   - Down only with hysteresis: the policy moves to the most accurate gear
//     t < c for which (1) q < DownshiftFactor × MaxQPS(t), where q is the
//     highest rate of the plan's DownshiftHoldMs (Observation.PeakQPS), (2) the whole
//     backlog (Pending + AckPending over every model, including models of
//     older gears that still drain) is at most DrainedBacklogSeconds ×
//     MaxQPS(t), and no more than t's backlog rule up would move straight
//     back on (UpshiftBacklog × (u × MaxQPS(t) − q)), and (3) the current
//     gear has been held for MinDwellMs. It may
//     jump several gears in one step, as the paper's controller does: the
//     margin of (1) already keeps the target gear below its capacity. No move
//     down happens before the rate window has been observed once (Warm).
//
// A pinned policy always answers the pinned gear.
type Policy struct {
	gears          []plan.Gear
	h              plan.Hysteresis
	upshiftBacklog time.Duration
	pinned         int  // -1: not pinned
	capacity       int  // the plan's runners
	shared         bool // every runner serves every model (plan.SharedRunners)
}

// NewPolicy returns the policy for p. upshiftBacklog is the longest
// acceptable drain time of the waiting items (see Policy). pin, if not
// empty, is a gear id the policy always answers.
func NewPolicy(p *plan.Plan, upshiftBacklog time.Duration, pin string) (Policy, error) {
	if len(p.Gears) == 0 {
		return Policy{}, fmt.Errorf("policy: plan %q has no gears", p.Pipeline)
	}
	if upshiftBacklog <= 0 {
		return Policy{}, fmt.Errorf("policy: upshift backlog %v must be > 0", upshiftBacklog)
	}
	pol := Policy{gears: p.Gears, h: p.Hysteresis, upshiftBacklog: upshiftBacklog, pinned: -1, capacity: max(p.Capacity, 1), shared: p.SharedRunners()}
	if pin != "" {
		pol.pinned = p.GearByID(pin)
		if pol.pinned < 0 {
			return Policy{}, fmt.Errorf("policy: pin gear %q: %w (plan %q has %s)", pin, ErrUnknownGear, p.Pipeline, gearIDs(p.Gears))
		}
	}
	return pol, nil
}

// Pinned returns the pinned gear's index, or -1.
func (p Policy) Pinned() int { return p.pinned }

// Initial is the gear to start in when the KV bucket holds none: the pinned
// gear, or the most accurate one (no load has been measured yet; the first
// tick with load moves up at once).
func (p Policy) Initial() Decision {
	if p.pinned >= 0 {
		return Decision{Gear: p.pinned, Direction: Hold, Reason: "pinned"}
	}
	return Decision{Gear: 0, Direction: Hold, Reason: "initial: no load measured yet"}
}

// Decide returns the gear to be in after observation o, given the current
// state s. A state whose gear is out of range is treated as the most
// accurate gear entered at o.Now.
func (p Policy) Decide(s State, o Observation) Decision {
	if p.pinned >= 0 {
		d := Decision{Gear: p.pinned, Direction: Hold, Reason: "pinned"}
		if s.Gear != p.pinned {
			d.Direction = direction(s.Gear, p.pinned)
		}
		return d
	}
	if s.Gear < 0 || s.Gear >= len(p.gears) {
		s = State{Gear: 0, Since: o.Now}
	}
	d := p.decide(s, o)
	if note := p.capacityNote(o); note != "" {
		d.Reason += note
	}
	return d
}

// Factor is the live capacity's share of the plan's: Runners / Capacity
// when the runners are known, else 1.
func (p Policy) Factor(o Observation) float64 {
	if !o.RunnersKnown {
		return 1
	}
	return float64(max(o.Runners, 0)) / float64(p.capacity)
}

// ScaledGears returns the plan's gears with MaxQPS scaled to the live
// capacity of o (see Policy).
func (p Policy) ScaledGears(o Observation) []plan.Gear {
	f := p.Factor(o)
	if f == 1 {
		return p.gears
	}
	gears := make([]plan.Gear, len(p.gears))
	for i, g := range p.gears {
		g.MaxQPS *= f
		gears[i] = g
	}
	return gears
}

// capacityNote is the reasons' suffix that says the maxima are scaled.
func (p Policy) capacityNote(o Observation) string {
	if !o.RunnersKnown || o.Runners == p.capacity {
		return ""
	}
	return fmt.Sprintf(" (max_qps scaled to %d of %d planned runners)", max(o.Runners, 0), p.capacity)
}

// decide is Decide for a valid state, over the gears scaled to o's capacity.
func (p Policy) decide(s State, o Observation) Decision {
	gears := p.ScaledGears(o)
	cur := gears[s.Gear]
	last := len(gears) - 1

	// Up on load: the rate window's, or the short window's when higher.
	up, recent := o.QPS, ""
	if o.RecentQPS > o.QPS {
		up, recent = o.RecentQPS, fmt.Sprintf(" (the last %v)", p.h.UpshiftWindow())
	}
	// The margin: a gear is left above UpshiftFactor of its MaxQPS, for the
	// one whose MaxQPS × UpshiftFactor holds the load. The cheapest gear has
	// none to move to: its limit is its MaxQPS.
	share := p.h.UpshiftShare()
	limit, margin := cur.MaxQPS*share, ""
	if share < 1 && s.Gear < last {
		margin = fmt.Sprintf(" × %.2f", share)
	} else {
		limit = cur.MaxQPS
	}
	if up > limit {
		if s.Gear == last {
			return Decision{Gear: s.Gear, Direction: Hold,
				Reason: fmt.Sprintf("overloaded: load %.1f qps%s > max %.1f of %s, the cheapest gear", up, recent, cur.MaxQPS, cur.ID)}
		}
		t := gearFor(gears, up/share)
		return Decision{Gear: t, Direction: Up,
			Reason: fmt.Sprintf("load %.1f qps%s > max %.1f%s of %s", up, recent, cur.MaxQPS, margin, cur.ID)}
	}

	// Up on backlog.
	waiting := p.waiting(cur, o.Backlog, o.ItemsPerEnvelope)
	required := o.QPS + float64(waiting)/p.upshiftBacklog.Seconds()
	if required > limit {
		drain := "never (no spare capacity)"
		if spare := limit - o.QPS; spare > 0 {
			drain = fmt.Sprintf("%.2fs", float64(waiting)/spare)
		}
		why := fmt.Sprintf("backlog %d waiting at %s drains in %s > %v at load %.1f qps (max %.1f%s)",
			waiting, cur.ID, drain, p.upshiftBacklog, o.QPS, cur.MaxQPS, margin)
		if s.Gear == last {
			return Decision{Gear: s.Gear, Direction: Hold, Reason: "overloaded: " + why + ", the cheapest gear"}
		}
		return Decision{Gear: gearFor(gears, required/share), Direction: Up, Reason: why}
	}

	// Down with hysteresis, on the highest load of the hold.
	if s.Gear == 0 {
		return Decision{Gear: 0, Direction: Hold, Reason: "most accurate gear"}
	}
	load, held := o.QPS, ""
	if o.PeakQPS > o.QPS {
		load, held = o.PeakQPS, fmt.Sprintf(" (the peak of the last %v)", p.h.DownshiftHold())
	}
	// The most accurate gear the load allows with margin.
	t := -1
	for i := 0; i < s.Gear; i++ {
		if load < p.h.DownshiftFactor*gears[i].MaxQPS {
			t = i
			break
		}
	}
	if t < 0 {
		below := gears[s.Gear-1]
		return Decision{Gear: s.Gear, Direction: Hold,
			Reason: fmt.Sprintf("load %.1f qps%s not below %.2f × %.1f of %s", load, held, p.h.DownshiftFactor, below.MaxQPS, below.ID)}
	}
	if !o.Warm {
		return Decision{Gear: s.Gear, Direction: Hold, Reason: "warming up: rate window not yet observed"}
	}
	dwell := p.h.MinDwell()
	if held := o.Now.Sub(s.Since); held < dwell {
		return Decision{Gear: s.Gear, Direction: Hold,
			Reason: fmt.Sprintf("dwell: held %s for %v < %v", cur.ID, held.Round(time.Millisecond), dwell)}
	}
	// The drained check weighs items as the backlog rule up does, so that a
	// move down does not leave more waiting than sends the gear back up.
	total := itemsBacklog(o.Backlog, o.ItemsPerEnvelope)
	// A smaller target capacity needs a more thoroughly drained backlog, so
	// try t first, then the gears between t and the current one.
	for ; t < s.Gear; t++ {
		tg := gears[t]
		limit := p.drainedLimit(tg, load)
		if load < p.h.DownshiftFactor*tg.MaxQPS && float64(total) <= limit {
			return Decision{Gear: t, Direction: Down,
				Reason: fmt.Sprintf("load %.1f qps%s < %.2f × %.1f of %s, backlog %d ≤ %.0f, held %s for %v",
					load, held, p.h.DownshiftFactor, tg.MaxQPS, tg.ID, total, limit, cur.ID, o.Now.Sub(s.Since).Round(time.Millisecond))}
		}
	}
	below := gears[s.Gear-1]
	return Decision{Gear: s.Gear, Direction: Hold,
		Reason: fmt.Sprintf("backlog %d not drained: > %.0f for %s", total, p.drainedLimit(below, load), below.ID)}
}

// waiting estimates the undelivered items the current gear g's runners
// must get through: the messages at the models of g's cascade, the first
// stage's times perEnvelope (at least 1), one item a message at the later
// stages. With shared runners (plan.SharedRunners) the queues of models
// g does not use count too, times perEnvelope: what an older gear left
// there, mostly the ingress's envelopes to its first stage, which the
// same runners drain first.
func (p Policy) waiting(g plan.Gear, b map[string]Backlog, perEnvelope float64) int64 {
	var n int64
	used := map[string]bool{}
	for j, s := range g.Cascade {
		used[s.Model] = true
		if j == 0 {
			n += envelopeItems(b[s.Model].Pending, perEnvelope)
		} else {
			n += b[s.Model].Pending
		}
	}
	if !p.shared {
		return n
	}
	for m, bl := range b {
		if !used[m] {
			n += envelopeItems(bl.Pending, perEnvelope)
		}
	}
	return n
}

// totalBacklog sums Pending + AckPending over every model.
func totalBacklog(b map[string]Backlog) int64 {
	var n int64
	for _, v := range b {
		n += v.Total()
	}
	return n
}

// drainedLimit is the most items a move down to gear g at load may leave
// queued: DrainedBacklogSeconds of g's capacity, and no more than g's
// backlog rule would move straight back up on.
func (p Policy) drainedLimit(g plan.Gear, load float64) float64 {
	return min(p.h.DrainedBacklogSeconds*g.MaxQPS, p.upshiftBacklog.Seconds()*(p.h.UpshiftShare()*g.MaxQPS-load))
}

// itemsBacklog is totalBacklog with every model's undelivered messages
// counted as perEnvelope items (at least 1): an upper estimate of the items
// queued, for the drained check of a move down.
func itemsBacklog(b map[string]Backlog, perEnvelope float64) int64 {
	var n int64
	for _, v := range b {
		n += envelopeItems(v.Pending, perEnvelope) + v.AckPending
	}
	return n
}

// envelopeItems is the items in pending envelopes of perEnvelope items
// each (at least 1), rounded.
func envelopeItems(pending int64, perEnvelope float64) int64 {
	return int64(math.Round(float64(pending) * max(perEnvelope, 1)))
}

// gearFor is plan.GearFor over a gear slice.
func gearFor(gears []plan.Gear, qps float64) int {
	for i, g := range gears {
		if qps <= g.MaxQPS {
			return i
		}
	}
	return len(gears) - 1
}

func direction(from, to int) Direction {
	switch {
	case to > from:
		return Up
	case to < from:
		return Down
	}
	return Hold
}

func gearIDs(gears []plan.Gear) string {
	s := ""
	for i, g := range gears {
		if i > 0 {
			s += ", "
		}
		s += g.ID
	}
	return s
}
