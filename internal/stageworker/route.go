package stageworker

import (
	"slices"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// routeKind is what happens to an item after a model computed it.
type routeKind uint8

const (
	// routeAnswer: the model answers; the item gets its result.
	routeAnswer routeKind = iota
	// routeEscalate: the item goes on to decision.next.
	routeEscalate
	// routeDegraded: the cascade called for decision.next, but the item is
	// answered now, marked degraded (decision.reason says why).
	routeDegraded
)

// decision is the cascade decision for one computed item.
type decision struct {
	kind   routeKind
	next   string
	reason string
}

// stageRoute is what the cascade decisions of one batch of a model need of
// the gear in force, resolved once for the batch rather than once per
// item: the model's stage (its threshold) and the models its items may go
// on to, each with the time an item takes to pass it.
type stageRoute struct {
	c     *control
	model string
	// inGear reports whether the gear holds the model; threshold and last
	// are its stage's then. Outside the gear the threshold it had in the
	// gear that sent each item decides (sourceGear), item by item.
	inGear    bool
	threshold float64
	last      bool
	// next are the models an item may escalate to, in order: the gear's
	// later stages, or, for a model outside the gear, the gear's models
	// after it in ladder order. An item goes to the first it has not
	// visited; with none left the model answers.
	next []nextStage
}

// nextStage is a model an item may escalate to, and the time it takes
// there at the batch's size (stageTime).
type nextStage struct {
	model string
	time  time.Duration
}

// stageRoute resolves the cascade decisions of a batch of batch items of
// model under the gear in force.
func (c *control) stageRoute(model string, batch int) *stageRoute {
	s := &stageRoute{c: c, model: model}
	add := func(m string) { s.next = append(s.next, nextStage{model: m, time: c.stageTime(m, batch)}) }
	if i, ok := c.Gear.StageOf(model); ok {
		s.inGear, s.threshold, s.last = true, c.Gear.Cascade[i].Threshold, i == len(c.Gear.Cascade)-1
		for _, st := range c.Gear.Cascade[i+1:] {
			add(st.Model)
		}
		return s
	}
	if pos, ok := c.ladder[model]; ok {
		for _, st := range c.Gear.Cascade {
			if p, ok := c.ladder[st.Model]; ok && p > pos {
				add(st.Model)
			}
		}
	}
	return s
}

// decide is the cascade decision for item it, which the model just computed
// with confidence conf (from plan.Calibrate and plan.Confidence, as the
// planner's replay); now is the time of the decision. See the package
// documentation for the rules.
func (s *stageRoute) decide(it *wire.Item, conf float64, now time.Time) decision {
	next, ok := s.nextStage(it, conf)
	if !ok {
		return decision{kind: routeAnswer}
	}
	if it.DeadlineUnixNano > 0 && now.Add(next.time).After(time.Unix(0, it.DeadlineUnixNano)) {
		return decision{kind: routeDegraded, next: next.model, reason: degradedDeadline}
	}
	return decision{kind: routeEscalate, next: next.model}
}

// nextStage returns the stage the item escalates to, or false if the model
// answers it.
func (s *stageRoute) nextStage(it *wire.Item, conf float64) (nextStage, bool) {
	if s.inGear {
		// The model is in the current gear: its threshold decides.
		if plan.Answers(conf, s.threshold, s.last) {
			return nextStage{}, false
		}
	} else {
		// The model is not in the current gear: the threshold it had in
		// the gear that sent the item here decides.
		src := s.c.sourceGear(it, s.model)
		if src == nil {
			return nextStage{}, false
		}
		j, _ := src.StageOf(s.model)
		if plan.Answers(conf, src.Cascade[j].Threshold, j == len(src.Cascade)-1) {
			return nextStage{}, false
		}
	}
	for _, n := range s.next {
		if !visited(it, n.model) {
			return n, true
		}
	}
	// Every later model has seen the item: this one is the most accurate
	// left, and answers.
	return nextStage{}, false
}

// visited reports whether model has computed the item already.
func visited(it *wire.Item, model string) bool {
	for _, v := range it.Visits {
		if v.Model == model {
			return true
		}
	}
	return false
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

// route applies the cascade decision to a computed item: it answers it or
// marks where it escalates to.
func (w *worker) route(c *control, sr *stageRoute, it *itemTask, probs []float32, now time.Time) {
	item := it.item
	var keep []float32
	if item.ReturnProbabilities {
		keep = slices.Clone(probs)
	}
	it.answer = func(reason string) {
		it.outcome = outcomeAnswered
		res := w.answerResult(c, item, now, keep)
		if reason != "" {
			it.outcome, it.degrade, res.Degraded = outcomeDegraded, reason, true
		}
		w.addResult(it, res)
	}
	d := sr.decide(item, item.Visits[len(item.Visits)-1].Confidence, now)
	switch d.kind {
	case routeAnswer:
		it.answer("")
	case routeDegraded:
		it.answer(d.reason)
	case routeEscalate:
		item.EnqueuedUnixNano = now.UnixNano()
		if keep != nil {
			item.BestProbs = keep
		}
		it.outcome = outcomeEscalated
		it.next = d.next
	}
}
