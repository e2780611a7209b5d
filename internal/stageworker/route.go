package stageworker

import (
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/batching"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// routeKind is what happens to an item after a model computed it.
type routeKind uint8

const (
	// routeAnswer: the model answers; the item gets its result.
	routeAnswer routeKind = iota
	// routeEscalate: the item goes on to route.next.
	routeEscalate
	// routeDegraded: the cascade called for route.next, but the item is
	// answered now, marked degraded (route.reason says why).
	routeDegraded
)

// route is the cascade decision for one computed item.
type route struct {
	kind   routeKind
	next   string
	reason string
}

// decide is the cascade decision for item it, which model just computed
// with confidence conf (from plan.Calibrate and plan.Confidence, as the
// planner's replay). batch is the size of the batch it was in; now is the
// time of the decision. See the package documentation for the rules.
func (c *control) decide(it *wire.Item, model string, conf float64, now time.Time, batch int) route {
	next, answers := c.nextStage(it, model, conf)
	if answers {
		return route{kind: routeAnswer}
	}
	if it.DeadlineUnixNano > 0 {
		finish := now.Add(c.stageTime(next, batch))
		if finish.After(time.Unix(0, it.DeadlineUnixNano)) {
			return route{kind: routeDegraded, next: next, reason: degradedDeadline}
		}
	}
	return route{kind: routeEscalate, next: next}
}

// nextStage returns whether model answers the item and, if it does not,
// the model it escalates to.
func (c *control) nextStage(it *wire.Item, model string, conf float64) (next string, answers bool) {
	visited := func(m string) bool {
		if m == model {
			return true
		}
		for _, v := range it.Visits {
			if v.Model == m {
				return true
			}
		}
		return false
	}
	if i, ok := c.Gear.StageOf(model); ok {
		// The model is in the current gear: its threshold and its next
		// stage there.
		if plan.Answers(conf, c.Gear.Cascade[i].Threshold, i == len(c.Gear.Cascade)-1) {
			return "", true
		}
		for _, s := range c.Gear.Cascade[i+1:] {
			if !visited(s.Model) {
				return s.Model, false
			}
		}
		return "", true
	}
	// The model is not in the current gear: the threshold it had in the
	// gear that sent the item here decides.
	src := c.sourceGear(it, model)
	if src == nil {
		return "", true
	}
	j, _ := src.StageOf(model)
	if plan.Answers(conf, src.Cascade[j].Threshold, j == len(src.Cascade)-1) {
		return "", true
	}
	// Escalate to the first model of the current gear that comes after
	// this one in ladder order; if there is none, this model is the most
	// accurate one left, and answers.
	pos, ok := c.ladder[model]
	if !ok {
		return "", true
	}
	for _, s := range c.Gear.Cascade {
		if p, ok := c.ladder[s.Model]; ok && p > pos && !visited(s.Model) {
			return s.Model, false
		}
	}
	return "", true
}

// sourceGear returns the gear that sent the item to model: the gear of its
// previous visit (the escalation decision was made under it), or its
// admission gear at the first stage, falling back to the admission gear;
// nil if neither is in the plan or holds the model.
func (c *control) sourceGear(it *wire.Item, model string) *plan.Gear {
	var ids []string
	if n := len(it.Visits); n > 0 {
		ids = append(ids, it.Visits[n-1].Gear)
	}
	ids = append(ids, it.AdmittedGear)
	for _, id := range ids {
		if i := c.Plan.GearByID(id); i >= 0 {
			if _, ok := c.Plan.Gears[i].StageOf(model); ok {
				return &c.Plan.Gears[i]
			}
		}
	}
	return nil
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
	if _, ok := c.Gear.StageOf(model); !ok {
		p.MaxDelay = 0
	}
	return p
}

// weight is model's runner share in the current gear, the divisor of its
// backlog when runners choose what to serve. A model of the cascade
// without a share gets an equal split; a model outside it gets the
// smallest share of the gear, so its leftover items drain without
// starving the gear's models or being starved by them.
func (c *control) weight(model string) float64 {
	if s := c.Gear.Runners[model]; s > 0 {
		return s
	}
	n := float64(len(c.Gear.Cascade))
	if _, ok := c.Gear.StageOf(model); ok {
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
