package controller

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/dashboard"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// statsWindow is the window of the dashboard's served rate, latency
// quantiles and answering-model mix (worker heartbeats, differenced).
const statsWindow = 5 * time.Second

// onWorker feeds one worker heartbeat to the fleet.
func (c *controller) onWorker(msg *nats.Msg) {
	var hb wire.WorkerHeartbeat
	if !c.decode(msg, &hb, "decode_heartbeat", "bad worker heartbeat") {
		return
	}
	// The subject names the instance: a beat cannot speak for another.
	hb.Instance = subjectInstance(msg.Subject)
	now := c.stamp(&hb.AtUnixNano)
	c.mu.Lock()
	c.fleet.Observe(hb, now)
	c.mu.Unlock()
}

// capacity reads the live workers at now, logs workers joining and leaving
// and changes of the live capacity, and updates the capacity metrics.
func (c *controller) capacity(now time.Time) (workers []WorkerView, runners int, known bool) {
	c.mu.Lock()
	workers, runners = c.fleet.Live(now)
	known = c.fleet.Seen()
	c.mu.Unlock()

	live := make(map[string]bool, len(workers))
	for _, w := range workers {
		live[w.Instance] = true
		if _, ok := c.workers[w.Instance]; !ok {
			c.log.Info("worker joined", "instance", w.Instance, "runners", w.Runners, "models", strings.Join(w.Models, ","),
				"provider", w.Provider)
			c.workers[w.Instance] = w.Runners
		}
	}
	for id, r := range c.workers {
		if !live[id] {
			c.log.Info("worker left", "instance", id, "runners", r)
			delete(c.workers, id)
		}
	}
	if known && (!c.capKnown || runners != c.capRunners) {
		c.log.Info("live capacity changed", "runners", runners, "previous", c.capRunners, "workers", len(workers),
			"plan_capacity", c.plan.Capacity, "max_qps_factor", round1(100*float64(runners)/float64(max(c.plan.Capacity, 1)))/100)
	}
	c.capKnown, c.capRunners = known, runners
	c.m.liveRunners.Set(float64(runners))
	c.m.liveWorkers.Set(float64(len(workers)))
	return workers, runners, known
}

// publishDashboard hands the state of this tick to the dashboard.
func (c *controller) publishDashboard(now time.Time) {
	if c.hub == nil || c.state.Gear < 0 || c.state.Gear >= len(c.plan.Gears) {
		return
	}
	c.mu.Lock()
	stats := c.fleet.Stats(now)
	c.mu.Unlock()
	o := c.lastObs
	scaled := c.policy.ScaledGears(o)
	g := c.plan.Gears[c.state.Gear]
	st, _ := c.gears.Current()

	s := dashboard.State{
		Pipeline: c.plan.Pipeline, AtUnixMs: now.UnixMilli(), SLOP95Ms: c.plan.SLO.P95Ms,
		Decision: c.lastReason, Pinned: c.policy.Pinned() >= 0,
		OfferedQPS: o.QPS, Ingresses: c.ingresses,
		Capacity: dashboard.Capacity{PlanRunners: c.plan.Capacity, LiveRunners: o.Runners, Known: o.RunnersKnown, Factor: c.policy.Factor(o)},
	}
	s.Gear = dashboard.Gear{
		ID: g.ID, Index: c.state.Gear, SinceUnixMs: c.state.Since.UnixMilli(),
		MaxQPS: g.MaxQPS, ScaledMaxQPS: scaled[c.state.Gear].MaxQPS,
		PredictedAccuracy: g.Predicted.Accuracy, PredictedP95Ms: g.Predicted.P95Ms,
		MaxBatch: g.Batching.MaxBatch, MaxDelayMs: g.Batching.MaxDelayMs,
	}
	if st.Gear == g.ID {
		s.Gear.Reason = st.Reason
	}
	for i, stage := range g.Cascade {
		ds := dashboard.Stage{Model: stage.Model}
		if i < len(g.Cascade)-1 {
			th := stage.Threshold
			ds.Threshold = &th
		}
		s.Gear.Cascade = append(s.Gear.Cascade, ds)
	}
	for i, pg := range c.plan.Gears {
		s.Gears = append(s.Gears, dashboard.GearLimit{ID: pg.ID, MaxQPS: pg.MaxQPS, ScaledMaxQPS: scaled[i].MaxQPS, PredictedAccuracy: pg.Predicted.Accuracy})
	}
	for _, m := range c.plan.UsedModels() {
		b := c.backlog[m]
		s.Backlog = append(s.Backlog, dashboard.Backlog{Model: m, Pending: b.Pending, AckPending: b.AckPending})
	}
	s.Served = dashboard.Served{
		WindowS: math.Round(stats.Span.Seconds()*10) / 10, QPS: stats.ServedQPS, ErrorQPS: stats.ErrorQPS,
		Results: stats.Results, Degraded: stats.Degraded,
		P50Ms: finite(stats.P50Ms), P95Ms: finite(stats.P95Ms), MeanMs: finite(stats.MeanMs), MeanConf: finite(stats.MeanConfidence),
		TotalSeen: stats.Total.Results, TotalAnswered: stats.Total.AnsweredBy,
	}
	var answers uint64
	for _, n := range stats.AnsweredBy {
		answers += n
	}
	for _, m := range c.mixOrder(stats.AnsweredBy) {
		n := stats.AnsweredBy[m]
		s.Served.Mix = append(s.Served.Mix, dashboard.Share{Model: m, Answers: n, Share: float64(n) / float64(answers),
			MeanConfidence: finite(stats.ModelConfidence[m])})
	}
	for _, w := range c.lastWorkers {
		s.Workers = append(s.Workers, dashboard.Worker{
			Instance: w.Instance, Models: w.Models, Runners: w.Runners, Threads: w.Threads, Provider: w.Provider,
			Gear: w.Gear, Results: w.Stats.Results,
			UptimeS:   time.Duration(w.AtUnixNano - w.StartedUnixNano).Seconds(),
			LastBeatS: now.Sub(w.LastBeat).Seconds(),
		})
	}
	c.hub.Publish(s)
}

// mixOrder lists the models of an answer mix in ladder order, models
// outside the plan last.
func (c *controller) mixOrder(mix map[string]uint64) []string {
	var out []string
	for _, m := range c.plan.Ladder {
		if mix[m] > 0 {
			out = append(out, m)
		}
	}
	for _, m := range modelsOf(mix) {
		if mix[m] > 0 && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// finite returns &x, or nil for NaN and ±Inf (null in JSON).
func finite(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}
