package stageworker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/modelinput"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/pkg/batching"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// runner is one inference slot: a goroutine with its own session of every
// hosted model. It chooses a model, pulls a batch for it as the batching
// policy of the current gear says, runs it, publishes and acks.
type runner struct {
	w        *worker
	id       int
	sessions []*onnxrt.Session // parallel to w.models

	// pending[i] holds items of model i delivered by an idle watch and not
	// yet batched; watching[i] counts the open watches on model i (one per
	// partition of its queue).
	pending  [][]*task
	watching []int
	// deliveries carries what open watches receive. Its capacity (two per
	// model: at most one item and one end per watch) means forwarders never
	// block.
	deliveries chan delivery
	forwarders sync.WaitGroup

	// in and out are the batch's input and output buffers, reused.
	in  modelinput.Batch
	out []float32
}

// delivery is an event of an idle watch: an item, or the watch's end.
type delivery struct {
	model int
	msg   jetstream.Msg
	done  bool
	err   error
}

func newRunner(w *worker, id int, sessions []*onnxrt.Session) *runner {
	return &runner{
		w:          w,
		id:         id,
		sessions:   sessions,
		pending:    make([][]*task, len(w.models)),
		watching:   make([]int, len(w.models)),
		deliveries: make(chan delivery, 2*len(w.models)*max(w.partitions, 1)),
	}
}

// run serves until ctx ends, then drains: it stops pulling, finishes the
// items in hand (including those that watches still open deliver),
// publishes, acks and returns.
func (r *runner) run(ctx context.Context) error {
	defer r.forwarders.Wait()
	for {
		r.reap()
		if ctx.Err() != nil {
			r.drain()
			return nil
		}
		i, ok := r.choose()
		if !ok {
			r.armWatches()
			r.await(ctx)
			continue
		}
		if !r.serve(ctx, i) {
			// Pulling failed (connection trouble): do not spin.
			natsbus.Sleep(ctx, r.w.cfg.IdleWait)
		}
	}
}

// choose picks the model to serve next: first a model whose backlog
// estimate is stale (nobody of this worker pulled from it for IdleWait),
// to probe it; then a model outside the current gear with items queued or
// in hand, to drain it; else the model with the largest backlog per runner
// share, counting items in hand. Ties go to the later stage (older
// requests). It reports false when there is nothing to do.
//
// Draining comes before the gear's own models because nothing new is
// routed to a model outside the gear: its items are the oldest and their
// number is bounded, while under overload the gear's backlog only grows
// and would keep them waiting until their deadlines passed.
func (r *runner) choose() (int, bool) {
	c := r.w.ctl.load()
	now := r.w.now()
	const (
		tierServe = iota // weighted by backlog per share
		tierDrain        // outside the gear: drain
		tierProbe        // stale estimate: probe
	)
	best, bestTier, bestPrio := -1, tierServe, 0.0
	for i, h := range r.w.models {
		n := float64(len(r.pending[i])) + float64(max(h.backlog.Load(), 0))
		tier, prio := tierServe, n
		switch {
		case r.watching[i] == 0 && len(r.pending[i]) == 0 && now.Sub(time.Unix(0, h.seen.Load())) > r.w.cfg.IdleWait:
			tier = tierProbe
		case n <= 0:
			continue
		case !c.inGear(h.name):
			tier = tierDrain
		default:
			prio = n / c.weight(h.name)
		}
		if tier > bestTier || (tier == bestTier && prio >= bestPrio) {
			best, bestTier, bestPrio = i, tier, prio
		}
	}
	return best, best >= 0
}

// serve forms one batch of model i and processes it. It reports false if
// pulling failed.
func (r *runner) serve(ctx context.Context, i int) bool {
	h := r.w.models[i]
	c := r.w.ctl.load()
	pol := c.policy(h.name, r.w.cfg.IdleWait)
	st := batching.State{Compute: c.stageTime(h.name, pol.MaxBatch)}
	tasks := r.pending[i]
	r.pending[i] = nil
	for _, t := range tasks {
		st.InHand += t.size()
		if st.Since.IsZero() || t.received.Before(st.Since) {
			st.Since = t.received
		}
		st.EarliestDeadline = earliest(st.EarliestDeadline, t.deadline())
	}
	ok := true
	probe := len(tasks) == 0 && h.backlog.Load() <= 0
	for ctx.Err() == nil {
		// The policy counts items; the queue holds envelopes.
		perMsg := h.itemsPerMessage()
		st.Backlog = int(float64(h.backlog.Load()) * perMsg)
		d := pol.Next(r.w.now(), st)
		if d.Run() {
			break
		}
		if d.Reason == batching.ReasonIdle {
			if !probe {
				break
			}
			// Chosen to refresh a stale estimate: take what is queued.
			d = batching.Decision{Count: pol.MaxBatch, Reason: batching.ReasonBacklog}
		}
		probe = false
		var got []*task
		msgs := max(1, int(float64(d.Count)/perMsg))
		got, ok = r.fetch(h, msgs, d.Wait)
		for _, t := range got {
			if st.InHand == 0 {
				st.Since = t.received
			}
			st.InHand += t.size()
			st.EarliestDeadline = earliest(st.EarliestDeadline, t.deadline())
		}
		tasks = append(tasks, got...)
		if !ok || (len(got) == 0 && d.Wait == 0 && st.InHand == 0) {
			break
		}
	}
	// Envelopes come whole: when a pull brought more items than the batch
	// holds, the envelopes past it wait in hand for the next batch.
	if n := splitAt(tasks, pol.MaxBatch); n < len(tasks) {
		r.pending[i] = append(r.pending[i], tasks[n:]...)
		tasks = tasks[:n]
	}
	if len(tasks) > 0 {
		r.process(i, tasks)
	}
	return ok
}

// process handles one batch of model i, the items of tasks: checks,
// inference, the cascade decision, publishing and settling every message.
func (r *runner) process(i int, tasks []*task) {
	w := r.w
	h := w.models[i]
	c := w.ctl.load()
	now := w.now()
	stillWorking := keepInProgress(h.ackWait, tasks)
	defer stillWorking.Stop()

	var run []*itemTask
	for _, t := range tasks {
		if t.decodeErr != nil {
			w.logger.Error("undecodable message: dead-lettered and terminated, no result can be sent",
				"model", h.name, "err", t.decodeErr)
			t.js = append(t.js, w.deadLetterMsg(h, t, t.decodeErr.Error()))
			t.err = natsbus.Permanent("undecodable message: %v", t.decodeErr)
			continue
		}
		for _, it := range t.items {
			switch bad := w.invalid(it.item); {
			case bad != nil:
				it.outcome = outcomeFailed
				w.logger.Warn("invalid item: answering invalid_input", "model", h.name, "id", it.item.ID, "err", bad)
				w.addResult(it, w.errorResult(c, it.item, now, wire.Errorf(wire.CodeInvalidInput, "%v", bad)))
			case it.item.DeadlineUnixNano > 0 && !now.Before(time.Unix(0, it.item.DeadlineUnixNano)):
				it.outcome = outcomeExpired
				w.addResult(it, w.errorResult(c, it.item, now, wire.Errorf(wire.CodeDeadlineExceeded,
					"deadline passed before model %q could run", h.name)))
			default:
				run = append(run, it)
			}
		}
	}
	if len(run) > 0 {
		r.infer(i, c, run)
	}
	for _, t := range tasks {
		w.outputs(h, c, t)
	}
	if w.hooks.beforePublish != nil {
		w.hooks.beforePublish(h.name, len(tasks))
	}
	w.publish(tasks)
	// Escalations rejected by a full next queue are answered now, degraded.
	var again []*task
	for _, t := range tasks {
		if w.answerRejected(h, t) {
			again = append(again, t)
		}
	}
	if len(again) > 0 {
		w.publish(again)
	}
	if w.hooks.beforeSettle != nil {
		w.hooks.beforeSettle(h.name, len(tasks))
	}
	stillWorking.Stop()
	for _, t := range tasks {
		w.settle(h, c, t)
	}
}

// progressKeeper tells the server, every half AckWait until stopped, that
// the messages of a batch are still being worked on, so a batch slower than
// the consumer's AckWait (a slow model, a slow PubAck) is not redelivered to
// another worker while this one finishes it. A short AckWait then costs
// nothing but a quick takeover of a dead worker's batch.
type progressKeeper struct {
	mu      sync.Mutex
	stopped bool
	timer   *time.Timer
}

// keepInProgress starts a progressKeeper for tasks; ackWait ≤ 0 starts none.
func keepInProgress(ackWait time.Duration, tasks []*task) *progressKeeper {
	k := &progressKeeper{}
	every := ackWait / 2
	if every <= 0 {
		return k
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.timer = time.AfterFunc(every, func() {
		for _, t := range tasks {
			// A message settled meanwhile answers ErrMsgAlreadyAckd.
			_ = t.msg.InProgress()
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if !k.stopped {
			k.timer.Reset(every)
		}
	})
	return k
}

// Stop ends the progress reports; it may be called more than once.
func (k *progressKeeper) Stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.timer != nil {
		k.timer.Stop()
	}
}

// infer runs the items through model i as one batch and decides every
// item's route. If the batch fails, items are run one by one so a single
// bad item cannot fail its neighbours; an item that fails alone goes back
// to its queue for another try (dead-lettered at the queue's MaxDeliver).
func (r *runner) infer(i int, c *control, run []*itemTask) {
	run = r.buildInput(i, c, run)
	if len(run) == 0 {
		return
	}
	failed := make([]error, len(run))
	start, end := r.runBatch(i, run, failed)
	r.decide(i, c, run, failed, start, end)
}

// buildInput fills the runner's input buffer with the items of run, in
// the form model i takes, and returns those that fit; an item that does
// not is answered invalid_input here.
func (r *runner) buildInput(i int, c *control, run []*itemTask) []*itemTask {
	w := r.w
	h := w.models[i]
	// The model's input, built by the transform replay and profile use.
	tr := h.input
	r.in.Reset()
	kept := run[:0]
	for _, it := range run {
		if err := tr.AppendTensor(&r.in, it.item.Input); err != nil {
			// A FP32 item that is not bytes for a UINT8 model: this
			// item's permanent error.
			it.outcome = outcomeFailed
			w.logger.Warn("item does not fit the model's input: answering invalid_input", "model", h.name, "id", it.item.ID, "err", err)
			w.addResult(it, w.errorResult(c, it.item, w.now(), wire.Errorf(wire.CodeInvalidInput, "%v", err)))
			continue
		}
		kept = append(kept, it)
	}
	return kept
}

// runBatch runs model i on the input buffer (the items of run) into the
// output buffer, falling back to one item at a time if the batch fails.
// It sets failed[k] (parallel to run) to item k's error and leaves it nil
// when the item's output is in r.out; start and end bound the compute,
// which it records in the metrics.
func (r *runner) runBatch(i int, run []*itemTask, failed []error) (start, end time.Time) {
	w := r.w
	h := w.models[i]
	sess := r.sessions[i]
	classes := w.classes
	tr := h.input
	if need := len(run) * classes; cap(r.out) < need {
		r.out = make([]float32, need)
	}
	start = w.now()
	_, err := tr.Run(sess, &r.in, r.out[:len(run)*classes])
	for k := 0; err == nil && w.hooks.runError != nil && k < len(run); k++ {
		err = w.hooks.runError(h.name, run[k].item.ID)
	}
	if err != nil {
		w.logger.Warn("batch inference failed; running its items one by one", "model", h.name, "batch", len(run), "err", err)
		for k := range run {
			in := tr.Slice(&r.in, k, k+1)
			_, err := tr.Run(sess, &in, r.out[k*classes:(k+1)*classes])
			if err == nil && w.hooks.runError != nil {
				err = w.hooks.runError(h.name, run[k].item.ID)
			}
			if err != nil {
				failed[k] = fmt.Errorf("model %q: %w", h.name, err)
			}
		}
	}
	end = w.now()
	w.metrics.compute.WithLabelValues(h.name).Observe(end.Sub(start).Seconds())
	w.metrics.batchSize.WithLabelValues(h.name).Observe(float64(len(run)))
	return start, end
}

// decide turns each item's output of model i (in r.out, parallel to run)
// into its visit and route: calibrated confidence, then escalate or
// answer. An item whose run failed is retried, one whose output is not
// finite fails for good.
func (r *runner) decide(i int, c *control, run []*itemTask, failed []error, start, end time.Time) {
	w := r.w
	h := w.models[i]
	classes := w.classes
	computeNs := end.Sub(start).Nanoseconds()
	// What every item's decision needs of the plan and the gear, once.
	metric := c.Plan.Confidence
	var temperature float64
	if m, ok := c.Plan.Model(h.name); ok {
		temperature = m.Temperature
	}
	sr := c.stageRoute(h.name, len(run))
	for k, it := range run {
		probs := r.out[k*classes : (k+1)*classes]
		switch {
		case errors.Is(failed[k], onnxrt.ErrInvalidOutput) || failed[k] == nil && !finite(probs):
			// The input is finite (the ingress checks) but drives the model
			// out of range, e.g. values near the float32 maximum: the same
			// input fails the same way on every try, so it is this item's
			// permanent error, not a transient failure.
			w.nonFinite(c, h, it, end)
			continue
		case failed[k] != nil:
			w.logger.Error("inference failed", "id", it.item.ID, "model", h.name, "attempt", it.item.Attempts+1, "err", failed[k])
			it.retry = failed[k]
			continue
		}
		plan.Calibrate(probs, temperature)
		conf, label := plan.Confidence(metric, probs)
		enq := it.item.EnqueuedUnixNano
		if enq <= 0 && it.t.meta != nil {
			enq = it.t.meta.Timestamp.UnixNano()
		}
		queueNs := max(start.UnixNano()-enq, 0)
		w.metrics.queue.WithLabelValues(h.name).Observe(float64(queueNs) / 1e9)
		it.item.Visits = append(it.item.Visits, wire.Visit{
			Model: h.name, Gear: c.Gear.ID, Confidence: conf, Label: label,
			QueueNs: queueNs, ComputeNs: computeNs, BatchSize: len(run),
		})
		w.route(c, sr, it, probs, end)
	}
}

// splitAt returns how many of tasks, at least one, fit in a batch of
// maxBatch items.
func splitAt(tasks []*task, maxBatch int) int {
	items := 0
	for k, t := range tasks {
		items += t.size()
		if items > maxBatch && k > 0 {
			return k
		}
	}
	return len(tasks)
}

// fetch pulls up to count items of model h, waiting at most wait (0: only
// what is queued now), and updates h's backlog estimate.
func (r *runner) fetch(h *hosted, count int, wait time.Duration) ([]*task, bool) {
	h.seen.Store(r.w.now().UnixNano())
	var (
		b   jetstream.MessageBatch
		err error
	)
	if wait > 0 {
		r.w.metrics.pulls.WithLabelValues(h.name, "fill").Inc()
		b, err = h.pick().Fetch(count, jetstream.FetchMaxWait(wait))
	} else {
		r.w.metrics.pulls.WithLabelValues(h.name, "nowait").Inc()
		b, err = h.pick().FetchNoWait(count)
	}
	if err != nil {
		r.w.logger.Warn("pull failed", "model", h.name, "err", err)
		return nil, false
	}
	var tasks []*task
	for msg := range b.Messages() {
		t := r.w.newTask(h, msg)
		h.observeItems(t.size())
		tasks = append(tasks, t)
	}
	if err := b.Error(); err != nil {
		r.w.logger.Debug("pull ended with an error", "model", h.name, "err", err)
	}
	h.seen.Store(r.w.now().UnixNano())
	// A pull that got everything it asked for leaves the backlog its last
	// message saw; one that got less found the queue empty.
	var backlog int64
	if n := len(tasks); n == count && tasks[n-1].meta != nil {
		backlog = int64(tasks[n-1].meta.NumPending) * int64(len(h.consumers))
	}
	h.setBacklog(backlog)
	return tasks, true
}

// armWatches opens an idle watch, a pull of one item lasting IdleWait, on
// every hosted model without one, so an idle runner wakes as soon as any
// of its models gets an item.
func (r *runner) armWatches() {
	for i, h := range r.w.models {
		if r.watching[i] > 0 || len(r.pending[i]) > 0 {
			continue
		}
		for _, cons := range h.consumers {
			r.w.metrics.pulls.WithLabelValues(h.name, "watch").Inc()
			b, err := cons.Fetch(1, jetstream.FetchMaxWait(r.w.cfg.IdleWait))
			if err != nil {
				r.w.logger.Warn("pull failed", "model", h.name, "err", err)
				continue
			}
			r.watching[i]++
			r.forwarders.Add(1)
			go func() {
				defer r.forwarders.Done()
				for msg := range b.Messages() {
					r.deliveries <- delivery{model: i, msg: msg}
				}
				r.deliveries <- delivery{model: i, done: true, err: b.Error()}
			}()
		}
	}
}

// await blocks until a watch delivers or ends, or ctx ends.
func (r *runner) await(ctx context.Context) {
	open := false
	for _, w := range r.watching {
		open = open || w > 0
	}
	if !open {
		// Nothing could be armed (connection trouble).
		natsbus.Sleep(ctx, r.w.cfg.IdleWait)
		return
	}
	select {
	case d := <-r.deliveries:
		r.handle(d)
	case <-ctx.Done():
	}
}

// reap takes every delivery already waiting, without blocking.
func (r *runner) reap() {
	for {
		select {
		case d := <-r.deliveries:
			r.handle(d)
		default:
			return
		}
	}
}

func (r *runner) handle(d delivery) {
	h := r.w.models[d.model]
	if d.done {
		r.watching[d.model]--
		h.seen.Store(r.w.now().UnixNano())
		if d.err != nil {
			r.w.logger.Debug("watch ended with an error", "model", h.name, "err", d.err)
		}
		return
	}
	t := r.w.newTask(h, d.msg)
	h.observeItems(t.size())
	if t.meta != nil {
		h.setBacklog(int64(t.meta.NumPending) * int64(len(h.consumers)))
	}
	r.pending[d.model] = append(r.pending[d.model], t)
}

// drain finishes what is in hand at shutdown: items already delivered and
// those that open watches still deliver (they end within IdleWait).
func (r *runner) drain() {
	for {
		for i, tasks := range r.pending {
			if len(tasks) > 0 {
				r.pending[i] = nil
				r.process(i, tasks)
			}
		}
		open := false
		for _, w := range r.watching {
			open = open || w > 0
		}
		if !open {
			return
		}
		r.handle(<-r.deliveries)
	}
}

func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}
