package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/dashboard"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// maxCASAttempts bounds the re-read-and-retry of one tick's gear write.
const maxCASAttempts = 3

// Run serves cfg's pipeline until ctx ends: it checks deps.Plan, applies the
// topology, puts the plan into the control bucket, writes the initial gear
// and then runs the decision loop at the plan's sample interval. It returns
// nil on a clean shutdown (also when ctx ends during the start) and an
// error if the start fails. After the start, NATS failures are logged and
// counted (cascade_controller_errors_total) and the loop keeps going; a
// stream, consumer or bucket that vanished is re-created.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	d, err := deps.WithDefaults("controller")
	if err != nil {
		return err
	}
	c, err := newController(cfg, d, deps.Plan)
	if err != nil {
		return err
	}
	if d.HTTP != nil {
		c.hub = dashboard.NewHub()
		c.hub.Mount(d.HTTP)
		defer c.hub.Close()
	}
	if err := c.ensureAtStart(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("controller: %w", err)
	}
	sub, err := d.Conn.Subscribe(wire.StatsWildcard(c.plan.Pipeline), c.onStats)
	if err != nil {
		return fmt.Errorf("controller: subscribe to ingress stats: %w", err)
	}
	defer sub.Unsubscribe()
	wsub, err := d.Conn.Subscribe(wire.WorkerStatsWildcard(c.plan.Pipeline), c.onWorker)
	if err != nil {
		return fmt.Errorf("controller: subscribe to worker heartbeats: %w", err)
	}
	defer wsub.Unsubscribe()
	if err := c.start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("controller: %w", err)
	}
	c.m.Ready.Set(1)
	c.log.Info("controller started", "gears", gearIDs(c.plan.Gears), "pinned", cfg.Gear,
		"sample_interval_ms", c.plan.Hysteresis.SampleIntervalMs, "rate_window_ms", c.plan.Hysteresis.RateWindowMs)
	c.loop(ctx)
	return nil
}

// newController validates cfg, resolves the plan it serves from p, and
// returns the state of a Run that has touched nothing yet: no NATS call is
// made and no dashboard is mounted. Its errors are configuration errors.
func newController(cfg Config, d servicemain.Deps, p *plan.Plan) (*controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := servedPlan(cfg, p)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	pol, err := NewPolicy(p, cfg.UpshiftBacklog, cfg.Gear)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	topo, err := cfg.Topology()
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	js, err := jetstream.New(d.Conn)
	if err != nil {
		return nil, fmt.Errorf("controller: jetstream: %w", err)
	}
	c := &controller{
		plan:    p,
		policy:  pol,
		topo:    topo,
		js:      js,
		log:     d.Logger.With("pipeline", p.Pipeline),
		now:     d.Now,
		m:       newMetrics(d.Registerer, p),
		meter:   NewRateMeter(p.Hysteresis.RateWindow()),
		peak:    PeakHold{Hold: p.Hysteresis.DownshiftHold()},
		backlog: map[string]Backlog{},
		cons:    map[string]jetstream.Consumer{},
		latches: map[string]string{},
		fleet:   NewFleet(statsWindow),
		workers: map[string]int{},
	}
	c.topo.Logger = c.log
	return c, nil
}

// loop runs the decision loop at the plan's sample interval until ctx
// ends, handing the state of every tick to the dashboard.
func (c *controller) loop(ctx context.Context) {
	tick := time.NewTicker(c.plan.Hysteresis.SampleInterval())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			c.log.Info("controller stopped")
			return
		case <-tick.C:
			c.tick(ctx)
			c.publishDashboard(c.now())
		}
	}
}

// controller is the state of one Run.
type controller struct {
	plan   *plan.Plan
	policy Policy
	topo   natsbus.TopologyConfig
	js     jetstream.JetStream
	log    *slog.Logger
	now    func() time.Time
	m      *metrics

	mu    sync.Mutex // guards meter and fleet (fed by the stats subscriptions)
	meter *RateMeter
	fleet *Fleet

	gears   *GearStore
	state   State
	started time.Time
	peak    PeakHold // the intake rates of the plan's downshift hold
	backlog map[string]Backlog
	cons    map[string]jetstream.Consumer
	reapply bool              // the topology vanished (e.g. memory streams after a server restart)
	latches map[string]string // op → last error logged, so a lasting failure logs once

	// Live capacity: the workers seen live at the last tick (instance →
	// runners) and the capacity last logged.
	workers     map[string]int
	capRunners  int
	capKnown    bool
	lastWorkers []WorkerView
	// The dashboard (nil without Deps.HTTP) and what the last tick saw.
	hub        *dashboard.Hub
	lastObs    Observation
	lastReason string
	ingresses  int
}

// jobsKey is the jobs consumer's key in controller.cons (model names are
// wire tokens, so it cannot collide).
const jobsKey = "$jobs"

// ensure applies the topology and puts the plan.
func (c *controller) ensure(ctx context.Context) error {
	kv, err := natsbus.EnsureTopology(ctx, c.js, c.plan, c.topo)
	if err != nil {
		return fmt.Errorf("apply topology: %w", err)
	}
	rev, changed, err := PutPlan(ctx, kv, c.plan)
	if err != nil {
		return err
	}
	c.m.planRevision.Set(float64(rev))
	c.log.Info("topology applied", "models", strings.Join(c.plan.UsedModels(), ","), "plan_revision", rev, "plan_written", changed)
	if c.gears == nil {
		c.gears = NewGearStore(kv)
	} else {
		c.gears.kv = kv // the next Refresh finds out what the key holds now
	}
	clear(c.cons)
	c.reapply = false
	return nil
}

// ensureAtStart is ensure, tried again while it fails for a reason that
// passes (transientNATS): a server still starting JetStream, or one too
// busy to answer an API request in time, must not stop the controller. Any
// other error, or ctx's end, returns at once.
func (c *controller) ensureAtStart(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for {
		err := c.ensure(ctx)
		if err == nil {
			c.ok("apply_topology")
			return nil
		}
		if !transientNATS(err) || ctx.Err() != nil {
			return err
		}
		c.fail("apply_topology", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// transientNATS reports whether err is a NATS failure that may pass by
// itself: a request that timed out, or no responder yet (JetStream still
// starting).
func transientNATS(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// start reads the gear key: a value left by an earlier controller is adopted
// (a restart keeps the gear in force); without one, the initial gear is
// written at once so workers need not wait for the first tick.
func (c *controller) start(ctx context.Context) error {
	c.started = c.now()
	for attempt := 0; ; attempt++ {
		if _, err := c.gears.Refresh(ctx); err != nil {
			return err
		}
		st, rev := c.gears.Current()
		d := c.policy.Initial()
		if rev != 0 {
			c.adopt(st)
			if c.state.Gear >= 0 && (c.policy.Pinned() < 0 || c.state.Gear == c.policy.Pinned()) {
				return nil
			}
			if c.state.Gear < 0 {
				d.Reason = fmt.Sprintf("gear %q is not in the plan; %s", st.Gear, d.Reason)
			}
		}
		err := c.write(ctx, d, 0, 0)
		if errors.Is(err, ErrConflict) && attempt < maxCASAttempts {
			continue
		}
		return err
	}
}

// adopt makes a value someone else wrote the current state.
func (c *controller) adopt(st wire.GearState) {
	now := c.now()
	since := now
	if st.AtUnixNano > 0 && st.AtUnixNano <= now.UnixNano() {
		since = time.Unix(0, st.AtUnixNano)
	}
	idx := c.plan.GearByID(st.Gear)
	c.state = State{Gear: idx, Since: since}
	if idx >= 0 {
		c.m.SetGear(idx, st.Gear)
	}
	c.log.Info("adopted gear from control bucket", "gear", st.Gear, "known", idx >= 0, "reason", st.Reason)
}

// onStats feeds one ingress stats message to the rate meter.
func (c *controller) onStats(msg *nats.Msg) {
	var s wire.IngressStats
	if !c.decode(msg, &s, "decode_stats", "bad ingress stats") {
		return
	}
	if s.Instance == "" {
		s.Instance = subjectInstance(msg.Subject)
	}
	now := c.stamp(&s.AtUnixNano)
	c.mu.Lock()
	c.meter.Observe(s, now)
	c.mu.Unlock()
}

// decode unmarshals the JSON body of msg into v. A body that does not
// decode is counted as a failure of op (label of
// cascade_controller_errors_total), logged at debug level as what, and
// reported false.
func (c *controller) decode(msg *nats.Msg, v any, op, what string) bool {
	if err := json.Unmarshal(msg.Data, v); err != nil {
		c.m.errors.WithLabelValues(op).Inc()
		c.log.Debug(what, "subject", msg.Subject, "err", err)
		return false
	}
	return true
}

// subjectInstance returns the last token of a stats or heartbeat subject:
// the instance that published it.
func subjectInstance(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// stamp returns the time now and sets *atUnixNano to it when a message
// came without its own time (0).
func (c *controller) stamp(atUnixNano *int64) time.Time {
	now := c.now()
	if *atUnixNano == 0 {
		*atUnixNano = now.UnixNano()
	}
	return now
}

// tick is one turn of the decision loop: repair what vanished, measure,
// decide and, on a change of gear, write it.
func (c *controller) tick(ctx context.Context) {
	begin := time.Now()
	defer func() { c.m.decisionLoop.Observe(time.Since(begin).Seconds()) }()
	ctx, cancel := context.WithTimeout(ctx, max(c.plan.Hysteresis.SampleInterval(), 2*time.Second))
	defer cancel()

	if !c.repair(ctx) {
		return
	}
	c.decide(ctx, c.observe(ctx))
}

// repair re-applies the topology when a tick found part of it missing, and
// puts the plan key back if it holds anything but the plan. It reports
// false when the topology could not be applied (the tick ends there).
func (c *controller) repair(ctx context.Context) bool {
	if c.reapply {
		if err := c.ensure(ctx); err != nil {
			c.fail("apply_topology", err)
			return false
		}
		c.ok("apply_topology")
	}
	// The plan key holds what this controller serves: anything else written
	// there (e.g. a JetStream API response a client aimed at it with a
	// reply subject, which no permission can forbid) is replaced at once.
	if rev, changed, err := PutPlan(ctx, c.gears.kv, c.plan); err != nil {
		c.noteMissing(err)
		c.fail("put_plan", err)
	} else {
		c.ok("put_plan")
		if changed {
			c.m.planRevision.Set(float64(rev))
			c.log.Warn("the plan key held something else; the plan was written again", "plan_revision", rev)
		}
	}
	return true
}

// observe measures the load the policy decides on: the intake rate, the
// models' backlogs and the live capacity. It updates their metrics and
// keeps what it saw for the dashboard.
func (c *controller) observe(ctx context.Context) Observation {
	now := c.now()
	c.mu.Lock()
	qps, instances := c.meter.Rate(now)
	var recent float64
	if w := c.plan.Hysteresis.UpshiftWindow(); w > 0 {
		recent, _ = c.meter.RateOver(now, w)
	}
	perEnvelope := c.meter.ItemsPerEnvelope(now)
	c.mu.Unlock()
	c.m.intakeQPS.Set(qps)
	c.m.envelopeItems.Set(perEnvelope)
	c.m.ingresses.Set(float64(instances))
	c.ingresses = instances
	c.pollBacklog(ctx)
	workers, runners, known := c.capacity(now)
	obs := Observation{
		Now:              now,
		QPS:              qps,
		PeakQPS:          c.peak.Add(now, qps),
		RecentQPS:        recent,
		Backlog:          c.backlog,
		ItemsPerEnvelope: perEnvelope,
		Warm:             now.Sub(c.started) >= c.plan.Hysteresis.RateWindow(),
		Runners:          runners,
		RunnersKnown:     known,
	}
	c.lastObs, c.lastWorkers = obs, workers
	return obs
}

// decide reads the gear key (adopting what another writer put there), asks
// the policy for the gear under obs and writes it unless the key already
// holds it. A write that loses a compare-and-set is retried on a fresh
// read, up to maxCASAttempts tries.
func (c *controller) decide(ctx context.Context, obs Observation) {
	total := totalBacklog(obs.Backlog)
	for attempt := 1; ; attempt++ {
		changed, err := c.gears.Refresh(ctx)
		if err != nil {
			c.noteMissing(err)
			c.fail("read_gear", err)
			return
		}
		c.ok("read_gear")
		st, rev := c.gears.Current()
		if changed && rev != 0 {
			c.adopt(st)
		}
		valid := rev != 0 && c.state.Gear >= 0
		d := c.policy.Decide(c.state, obs)
		c.lastReason = d.Reason
		if valid && d.Gear == c.state.Gear {
			c.log.Debug("hold", "gear", c.plan.Gears[d.Gear].ID, "qps", obs.QPS, "backlog", total, "reason", d.Reason)
			return
		}
		switch {
		case rev == 0:
			d.Reason = "gear key was missing; " + d.Reason
		case c.state.Gear < 0:
			d.Reason = fmt.Sprintf("gear %q is not in the plan; %s", st.Gear, d.Reason)
		}
		err = c.write(ctx, d, obs.QPS, total)
		if errors.Is(err, ErrConflict) && attempt < maxCASAttempts {
			continue
		}
		if err != nil {
			c.noteMissing(err)
			c.fail("write_gear", err)
			return
		}
		c.ok("write_gear")
		return
	}
}

// write stores decision d with compare-and-set and, on success, makes it the
// current state. AtUnixNano is taken right before the write, so workers that
// measure now − AtUnixNano measure the switch from the moment it was sent.
func (c *controller) write(ctx context.Context, d Decision, qps float64, backlog int64) error {
	from, _ := c.gears.Current()
	g := c.plan.Gears[d.Gear]
	st := wire.GearState{Gear: g.ID, Index: d.Gear, Reason: d.Reason, QPS: qps, Backlog: backlog}
	at := c.now()
	st.AtUnixNano = at.UnixNano()
	if err := c.gears.Write(ctx, st); err != nil {
		if errors.Is(err, ErrConflict) {
			c.m.casConflicts.Inc()
			c.log.Info("gear write lost a compare-and-set; re-reading", "gear", g.ID, "err", err)
		}
		return err
	}
	c.m.gearWriteDelay.Observe(c.now().Sub(at).Seconds())
	dir := direction(c.state.Gear, d.Gear)
	if from.Gear == "" || c.state.Gear < 0 {
		dir = Hold // the first value, or replacing an unknown gear: not a switch
	}
	if dir != Hold {
		c.m.switches.WithLabelValues(string(dir)).Inc()
	}
	c.state = State{Gear: d.Gear, Since: at}
	c.m.SetGear(d.Gear, g.ID)
	msg := "gear switch"
	if dir == Hold {
		msg = "gear written"
	}
	c.log.Info(msg, "from", from.Gear, "to", g.ID, "direction", string(dir),
		"qps", round1(qps), "backlog", backlog, "reason", d.Reason)
	return nil
}

// pollBacklog reads every used model's consumer info, and checks that the
// jobs consumer still exists (a missing one is re-created by the next
// tick's topology repair). A failure keeps the model's last known backlog.
func (c *controller) pollBacklog(ctx context.Context) {
	if jobs := c.cons[jobsKey]; jobs != nil {
		if _, err := jobs.Info(ctx); err != nil {
			delete(c.cons, jobsKey)
			c.noteMissing(err)
			c.fail("jobs_consumer_info", fmt.Errorf("jobs consumer: %w", err))
		} else {
			c.ok("jobs_consumer_info")
		}
	} else if jobs, err := c.js.Consumer(ctx, wire.JobsStream(c.plan.Pipeline), wire.JobsConsumer); err != nil {
		c.noteMissing(err)
		c.fail("jobs_consumer_info", fmt.Errorf("jobs consumer: %w", err))
	} else {
		c.cons[jobsKey] = jobs
		c.ok("jobs_consumer_info")
	}
	parts := c.plan.QueuePartitions()
	for _, m := range c.plan.UsedModels() {
		// A model's backlog is the sum over its queue's partitions.
		var b Backlog
		complete := true
		for part := range parts {
			stream := wire.ModelPartitionStream(c.plan.Pipeline, m, part, parts)
			cons := c.cons[stream]
			if cons == nil {
				var err error
				cons, err = c.js.Consumer(ctx, stream, wire.ModelConsumer(m))
				if err != nil {
					c.noteMissing(err)
					c.fail("consumer_info", fmt.Errorf("consumer of model %q on %s: %w", m, stream, err))
					complete = false
					continue
				}
				c.cons[stream] = cons
			}
			info, err := cons.Info(ctx)
			if err != nil {
				delete(c.cons, stream)
				c.noteMissing(err)
				c.fail("consumer_info", fmt.Errorf("consumer info of model %q on %s: %w", m, stream, err))
				complete = false
				continue
			}
			b.Pending += int64(info.NumPending)
			b.AckPending += int64(info.NumAckPending)
		}
		if !complete {
			continue
		}
		c.ok("consumer_info")
		c.backlog[m] = b
		c.m.backlog.WithLabelValues(m, "pending").Set(float64(b.Pending))
		c.m.backlog.WithLabelValues(m, "ack_pending").Set(float64(b.AckPending))
	}
}

// noteMissing schedules a re-apply of the topology when err says a stream,
// consumer or the bucket no longer exists.
func (c *controller) noteMissing(err error) {
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrBucketNotFound) {
		c.reapply = true
	}
}

// fail counts a failed operation and logs it once until it recovers or the
// error changes, so a lasting outage does not log at every tick.
func (c *controller) fail(op string, err error) {
	if errors.Is(err, context.Canceled) {
		return // shutting down
	}
	c.m.errors.WithLabelValues(op).Inc()
	if msg := err.Error(); c.latches[op] != msg {
		c.latches[op] = msg
		c.log.Warn("controller operation failed", "op", op, "err", err)
	}
}

// ok logs the recovery of an operation that failed before.
func (c *controller) ok(op string) {
	if _, failed := c.latches[op]; failed {
		delete(c.latches, op)
		c.log.Info("controller operation recovered", "op", op)
	}
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }
