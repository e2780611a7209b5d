package stageworker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/wire"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// task is one input message while its batch is handled.
type task struct {
	msg       jetstream.Msg
	model     string                 // the model whose queue it came from
	meta      *jetstream.MsgMetadata // nil if the reply subject did not parse
	received  time.Time
	item      wire.Item
	decodeErr error

	// Set while the batch is handled.
	outcome string
	degrade string // reason, for a degraded answer
	// js are the JetStream publishes (escalation, durable result, dead
	// letter); core the core NATS publishes (reply inbox), sent once every
	// js publish is acknowledged. escalation is the index in js of the
	// escalation, -1 if none.
	js         []*nats.Msg
	core       []*nats.Msg
	escalation int
	// answer is what a degraded fallback needs if the escalation is
	// rejected by a full queue.
	answer func(reason string) error
	// err is the handler's verdict, mapped to an ack by ackAction.
	err error
}

func (w *worker) newTask(h *hosted, msg jetstream.Msg) *task {
	t := &task{msg: msg, model: h.name, received: w.now(), escalation: -1}
	if meta, err := msg.Metadata(); err == nil {
		t.meta = meta
		if meta.NumDelivered > 1 {
			w.metrics.redeliveries.WithLabelValues(h.name).Inc()
		}
	}
	t.decodeErr = wire.DecodeItem(msg.Data(), &t.item)
	return t
}

func (t *task) delivered() uint64 {
	if t.meta == nil {
		return 1
	}
	return t.meta.NumDelivered
}

// process handles one batch of model i: checks, inference, the cascade
// decision, publishing and acknowledging every message.
func (r *runner) process(i int, tasks []*task) {
	w := r.w
	h := w.models[i]
	c := w.ctl.load()
	now := w.now()

	var run []*task
	for _, t := range tasks {
		var bad error
		if t.decodeErr == nil {
			bad = w.invalid(t)
		}
		switch {
		case t.decodeErr != nil:
			w.logger.Error("undecodable item: dead-lettered and terminated, no result can be sent",
				"model", h.name, "err", t.decodeErr)
			t.outcome = outcomeFailed
			t.js = append(t.js, w.deadLetterMsg(h, t, t.decodeErr.Error()))
			t.err = permanent("undecodable item: %v", t.decodeErr)
		case bad != nil:
			t.outcome = outcomeFailed
			t.err = permanent("invalid item %q: %v", t.item.ID, bad)
			if err := w.addResult(t, w.errorResult(c, &t.item, now, wire.Errorf(wire.CodeInvalidInput, "%v", bad))); err != nil {
				t.err = err
			}
		case !t.deadline().IsZero() && !now.Before(t.deadline()):
			t.outcome = outcomeExpired
			t.err = w.addResult(t, w.errorResult(c, &t.item, now, wire.Errorf(wire.CodeDeadlineExceeded,
				"deadline passed before model %q could run", h.name)))
		default:
			run = append(run, t)
		}
	}
	if len(run) > 0 {
		r.infer(i, c, run)
	}
	if w.hooks.beforePublish != nil {
		w.hooks.beforePublish(h.name, len(tasks))
	}
	w.publish(tasks)
	// Escalations rejected by a full next queue are answered now, degraded.
	var retry []*task
	for _, t := range tasks {
		if t.escalation >= 0 && t.err != nil && queueFull(t.err) {
			w.logger.Debug("next stage's queue is full: answering degraded", "id", t.item.ID, "model", h.name)
			t.js, t.core, t.escalation, t.err = nil, nil, -1, nil
			t.err = t.answer(degradedQueueFull)
			retry = append(retry, t)
		}
	}
	if len(retry) > 0 {
		w.publish(retry)
	}
	if w.hooks.beforeSettle != nil {
		w.hooks.beforeSettle(h.name, len(tasks))
	}
	for _, t := range tasks {
		w.settle(h, c, t)
	}
}

// invalid checks what the worker relies on: the item belongs to this
// pipeline, has an id, and its input fits the models.
func (w *worker) invalid(t *task) error {
	it := &t.item
	switch {
	case it.ID == "":
		return errors.New("item has no id")
	case it.Pipeline != w.cfg.Pipeline:
		return fmt.Errorf("item of pipeline %q sent to pipeline %q", it.Pipeline, w.cfg.Pipeline)
	case it.Client != "" && !wire.ValidToken(it.Client):
		return fmt.Errorf("client %q is not a valid subject token", truncate(it.Client))
	case it.ReplyTo != "" && w.replyRefused(it.ReplyTo) != nil:
		return w.replyRefused(it.ReplyTo)
	case wire.DatatypeSize(it.Input.Datatype) == 0:
		return fmt.Errorf("input datatype %q", it.Input.Datatype)
	case it.Input.Elements() != int64(w.itemSize) || len(it.Input.Data) != w.itemSize*wire.DatatypeSize(it.Input.Datatype):
		return fmt.Errorf("input shape %v (%d bytes), want %d %s values", it.Input.Shape, len(it.Input.Data), w.itemSize, it.Input.Datatype)
	}
	return nil
}

// infer runs the batch through model i and decides every item's route.
// If the batch fails, items are run one by one so a single bad item cannot
// fail its neighbours; an item that fails alone gets a transient error
// (redelivered, dead-lettered on its last delivery).
func (r *runner) infer(i int, c *control, run []*task) {
	w := r.w
	h := w.models[i]
	sess := r.sessions[i]
	classes := w.classes
	r.in = r.in[:0]
	for _, t := range run {
		var err error
		if r.in, err = t.item.Input.AppendFloat32s(r.in, w.uint8Scale); err != nil {
			// invalid() checked the datatype; this cannot happen.
			panic(fmt.Sprintf("stageworker: decode checked input: %v", err))
		}
	}
	if need := len(run) * classes; cap(r.out) < need {
		r.out = make([]float32, need)
	}
	start := w.now()
	_, err := sess.Run(r.in, len(run), r.out[:len(run)*classes])
	for k := 0; err == nil && w.hooks.runError != nil && k < len(run); k++ {
		err = w.hooks.runError(h.name, run[k].item.ID)
	}
	failed := make([]error, len(run))
	if err != nil {
		w.logger.Warn("batch inference failed; running its items one by one", "model", h.name, "batch", len(run), "err", err)
		for k := range run {
			in := r.in[k*w.itemSize : (k+1)*w.itemSize]
			_, err := sess.Run(in, 1, r.out[k*classes:(k+1)*classes])
			if err == nil && w.hooks.runError != nil {
				err = w.hooks.runError(h.name, run[k].item.ID)
			}
			if err != nil {
				failed[k] = fmt.Errorf("model %q: %w", h.name, err)
			}
		}
	}
	end := w.now()
	computeNs := end.Sub(start).Nanoseconds()
	w.metrics.compute.WithLabelValues(h.name).Observe(end.Sub(start).Seconds())
	w.metrics.batchSize.WithLabelValues(h.name).Observe(float64(len(run)))

	metric := c.Plan.Confidence
	var temperature float64
	if m, ok := c.Plan.Model(h.name); ok {
		temperature = m.Temperature
	}
	for k, t := range run {
		if errors.Is(failed[k], onnxrt.ErrInvalidOutput) {
			// The input is finite (the ingress checks) but drives the model
			// out of range, e.g. values near the float32 maximum: the same
			// input fails the same way on every delivery, so it is this
			// item's permanent error, not a transient failure.
			w.nonFinite(c, h, t, end)
			continue
		}
		if failed[k] != nil {
			w.logger.Error("inference failed", "id", t.item.ID, "model", h.name, "delivery", t.delivered(), "err", failed[k])
			t.outcome = outcomeFailed
			t.err = failed[k]
			continue
		}
		probs := r.out[k*classes : (k+1)*classes]
		if !finite(probs) {
			w.nonFinite(c, h, t, end)
			continue
		}
		plan.Calibrate(probs, temperature)
		conf, label := plan.Confidence(metric, probs)
		enq := t.item.EnqueuedUnixNano
		if enq <= 0 && t.meta != nil {
			enq = t.meta.Timestamp.UnixNano()
		}
		queueNs := max(start.UnixNano()-enq, 0)
		w.metrics.queue.WithLabelValues(h.name).Observe(float64(queueNs) / 1e9)
		t.item.Visits = append(t.item.Visits, wire.Visit{
			Model: h.name, Gear: c.Gear.ID, Confidence: conf, Label: label,
			QueueNs: queueNs, ComputeNs: computeNs, BatchSize: len(run),
		})
		w.route(c, h, t, probs, end, len(run))
	}
}

// route applies the cascade decision to a computed item: it fills the
// task's publishes.
func (w *worker) route(c *control, h *hosted, t *task, probs []float32, now time.Time, batch int) {
	it := &t.item
	var keep []float32
	if it.ReturnProbabilities {
		keep = slices.Clone(probs)
	}
	t.answer = func(reason string) error {
		t.outcome = outcomeAnswered
		res := w.answerResult(c, it, now, keep)
		if reason != "" {
			t.outcome, t.degrade, res.Degraded = outcomeDegraded, reason, true
		}
		return w.addResult(t, res)
	}
	rt := c.decide(it, h.name, it.Visits[len(it.Visits)-1].Confidence, now, batch)
	switch rt.kind {
	case routeAnswer:
		t.err = t.answer("")
	case routeDegraded:
		t.err = t.answer(rt.reason)
	case routeEscalate:
		next := *it
		next.EnqueuedUnixNano = now.UnixNano()
		if keep != nil {
			next.BestProbs = keep
		}
		data, err := w.codec.EncodeItem(&next)
		if err != nil {
			t.err = fmt.Errorf("encode escalation of %q: %w", it.ID, err)
			return
		}
		m := nats.NewMsg(wire.ModelSubject(w.cfg.Pipeline, rt.next))
		m.Data = data
		m.Header.Set(wire.HeaderMsgID, wire.StageMsgID(it.DedupKey(), rt.next))
		t.outcome = outcomeEscalated
		t.escalation = len(t.js)
		t.js = append(t.js, m)
	}
}

// nonFinite answers an item whose model output is NaN or infinite with
// invalid_input: a permanent error of that item only.
func (w *worker) nonFinite(c *control, h *hosted, t *task, now time.Time) {
	w.metrics.nonFinite.WithLabelValues(h.name).Inc()
	w.logger.Warn("model output is not finite: answering invalid_input", "id", t.item.ID, "model", h.name)
	t.outcome = outcomeFailed
	t.err = permanent("model %q output for item %q is not finite", h.name, t.item.ID)
	if err := w.addResult(t, w.errorResult(c, &t.item, now, wire.Errorf(wire.CodeInvalidInput,
		"model %q produced a non-finite output for this input (values too large in magnitude?)", h.name))); err != nil {
		t.err = err
	}
}

// finite reports whether every value is a number, not NaN or ±Inf.
func finite(v []float32) bool {
	for _, x := range v {
		if x-x != 0 { // NaN or ±Inf
			return false
		}
	}
	return true
}

// answerResult is the result of an item answered by its last visit.
func (w *worker) answerResult(c *control, it *wire.Item, now time.Time, probs []float32) *wire.Result {
	v := it.Visits[len(it.Visits)-1]
	res := w.baseResult(c, it, now)
	res.Label, res.Confidence, res.AnsweredBy = v.Label, v.Confidence, v.Model
	res.Probabilities = probs
	return res
}

// errorResult is an error result for the item.
func (w *worker) errorResult(c *control, it *wire.Item, now time.Time, e *wire.Error) *wire.Result {
	res := w.baseResult(c, it, now)
	res.Error = e
	return res
}

func (w *worker) baseResult(c *control, it *wire.Item, now time.Time) *wire.Result {
	res := &wire.Result{
		ID: it.ID, Pipeline: w.cfg.Pipeline, Client: it.Client,
		Gear: c.Gear.ID, AdmittedGear: it.AdmittedGear,
		Visits:           slices.Clone(it.Visits),
		AdmittedUnixNano: it.AdmittedUnixNano, CompletedUnixNano: now.UnixNano(),
	}
	if it.AdmittedUnixNano > 0 {
		res.TotalNs = now.UnixNano() - it.AdmittedUnixNano
	}
	return res
}

// addResult queues the result's publishes: to the results stream for a
// durable item (deduplicated by `<id>.result`), and to the reply inbox.
// Both carry the result in the item's ResultFormat (msgpack, or the OIP
// JSON body for jobs sent as JSON) with its Content-Type header, and an
// error result the header Cascade-Error.
func (w *worker) addResult(t *task, res *wire.Result) error {
	it := &t.item
	data, contentType, err := w.codec.EncodeResultAs(res, it.ResultFormat)
	if err != nil {
		return fmt.Errorf("encode result of %q: %w", res.ID, err)
	}
	fill := func(m *nats.Msg) {
		m.Data = data
		m.Header.Set(wire.HeaderContentType, contentType)
		if res.Error != nil {
			m.Header.Set(wire.HeaderError, string(res.Error.Code))
		}
	}
	client := it.Client
	if client == "" {
		client = wire.DefaultClient
	}
	if it.Durable && wire.ValidToken(client) {
		m := nats.NewMsg(wire.ResultSubject(w.cfg.Pipeline, client))
		fill(m)
		m.Header.Set(wire.HeaderMsgID, wire.ResultMsgID(w.cfg.Pipeline, it.DedupKey()))
		t.js = append(t.js, m)
	}
	if it.ReplyTo != "" {
		// Never publish where a reply cannot legitimately go: only the
		// ingress's check stands between a producer and a forged reply
		// subject, and items can reach a queue by other ways.
		if err := w.replyRefused(it.ReplyTo); err != nil {
			w.metrics.refusedReplies.WithLabelValues(t.model).Inc()
			w.logger.Warn("not answering on a refused reply subject", "id", it.ID, "err", err)
			return nil
		}
		m := nats.NewMsg(it.ReplyTo)
		fill(m)
		t.core = append(t.core, m)
	}
	return nil
}

// replyRefused says why the worker must not answer on subject, or nil.
func (w *worker) replyRefused(subject string) error {
	return wire.CheckReplySubject(w.cfg.InboxPrefix, subject)
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// deadLetterMsg is the dead-letter copy of a task's input message.
func (w *worker) deadLetterMsg(h *hosted, t *task, reason string) *nats.Msg {
	m := nats.NewMsg(wire.DLQSubject(w.cfg.Pipeline, h.name))
	m.Data = t.msg.Data()
	id := t.item.DedupKey()
	if t.decodeErr != nil || id == "" {
		id = "seq-" + fmt.Sprint(t.streamSeq())
	}
	m.Header.Set(wire.HeaderMsgID, id+".dlq."+h.name)
	m.Header.Set(wire.HeaderError, reason)
	return m
}

func (t *task) streamSeq() uint64 {
	if t.meta == nil {
		return 0
	}
	return t.meta.Sequence.Stream
}

// errPublishTimeout: a PubAck did not arrive within PublishTimeout.
var errPublishTimeout = errors.New("publish acknowledgement timed out")

// publish sends every task's JetStream messages asynchronously, waits for
// all their PubAcks, then sends the core messages of the tasks whose
// JetStream messages all succeeded. A task's first failure becomes its
// error (kept if it already has one).
func (w *worker) publish(tasks []*task) {
	type pending struct {
		t *task
		f jetstream.PubAckFuture
	}
	var futures []pending
	for _, t := range tasks {
		for _, m := range t.js {
			f, err := w.js.PublishMsgAsync(m)
			if err != nil {
				t.fail(fmt.Errorf("publish to %s: %w", m.Subject, err))
				continue
			}
			futures = append(futures, pending{t, f})
		}
	}
	timer := time.NewTimer(w.cfg.PublishTimeout)
	defer timer.Stop()
	expired := false
	for _, p := range futures {
		subject := p.f.Msg().Subject
		if expired {
			select {
			case <-p.f.Ok():
			case err := <-p.f.Err():
				p.t.fail(fmt.Errorf("publish to %s: %w", subject, err))
			default:
				p.t.fail(fmt.Errorf("publish to %s: %w", subject, errPublishTimeout))
			}
			continue
		}
		select {
		case <-p.f.Ok():
		case err := <-p.f.Err():
			p.t.fail(fmt.Errorf("publish to %s: %w", subject, err))
		case <-timer.C:
			expired = true
			p.t.fail(fmt.Errorf("publish to %s: %w", subject, errPublishTimeout))
		}
	}
	for _, t := range tasks {
		if t.err != nil && !errors.Is(t.err, errPermanent) {
			continue
		}
		for _, m := range t.core {
			if err := w.nc.PublishMsg(m); err != nil {
				t.fail(fmt.Errorf("reply to %s: %w", m.Subject, err))
			}
		}
	}
}

// fail records a transient failure; it takes precedence over a permanent
// verdict, so an error result that could not be published is retried.
func (t *task) fail(err error) {
	if t.err == nil || errors.Is(t.err, errPermanent) && t.decodeErr == nil {
		t.err = err
	}
}

// queueFull reports whether err is JetStream rejecting a publish because
// the stream is full (DiscardNew at MaxMsgs or MaxBytes).
func queueFull(err error) bool {
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	return api.ErrorCode == jsErrStoreFailed && strings.Contains(api.Description, "maximum")
}

// jsErrStoreFailed is the JetStream error code of a failed store (the
// server's JSStreamStoreFailedF); with a "maximum ... exceeded" description
// it means the stream is full.
const jsErrStoreFailed jetstream.ErrorCode = 10077

// settle acknowledges one message as ackAction decides, and records the
// item's outcome.
func (w *worker) settle(h *hosted, c *control, t *task) {
	act := ackAction(t.err, t.delivered(), h.maxDeliver)
	var err error
	switch act {
	case actAck:
		err = t.msg.Ack()
		w.metrics.items.WithLabelValues(h.name, t.outcome).Inc()
		if t.degrade != "" {
			w.metrics.degraded.WithLabelValues(h.name, t.degrade).Inc()
		}
	case actTerm:
		w.logger.Warn("terminating message", "model", h.name, "id", t.item.ID, "err", t.err)
		err = t.msg.Term()
		w.metrics.items.WithLabelValues(h.name, outcomeFailed).Inc()
		if t.decodeErr != nil {
			w.metrics.deadLetters.WithLabelValues(h.name).Inc()
		}
	case actNak:
		w.logger.Warn("transient failure; redelivering later", "model", h.name, "id", t.item.ID,
			"delivery", t.delivered(), "err", t.err)
		err = t.msg.NakWithDelay(w.cfg.NakDelay)
	case actDeadLetter:
		cause := t.err
		if dlErr := w.deadLetter(h, c, t); dlErr != nil {
			// Past MaxDeliver the server will not redeliver; the message
			// stays in the stream for an operator.
			w.logger.Error("could not dead-letter an item on its last delivery; it stays in the queue",
				"model", h.name, "id", t.item.ID, "err", dlErr, "cause", cause)
			return
		}
		w.logger.Error("item failed on its last delivery: dead-lettered with an internal error result",
			"model", h.name, "id", t.item.ID, "delivery", t.delivered(), "err", cause)
		err = t.msg.Term()
		w.metrics.items.WithLabelValues(h.name, outcomeFailed).Inc()
		w.metrics.deadLetters.WithLabelValues(h.name).Inc()
		act = actTerm
	}
	w.metrics.acks.WithLabelValues(h.name, act.String()).Inc()
	if err != nil {
		w.logger.Warn("acknowledgement failed", "model", h.name, "id", t.item.ID, "action", act, "err", err)
	}
}

// deadLetter publishes the item to the dead-letter subject and its
// `internal` error result, and waits for both.
func (w *worker) deadLetter(h *hosted, c *control, t *task) error {
	cause := t.err
	t.js, t.core, t.err = nil, nil, nil
	t.js = append(t.js, w.deadLetterMsg(h, t, cause.Error()))
	res := w.errorResult(c, &t.item, w.now(), wire.Errorf(wire.CodeInternal,
		"model %q failed on delivery %d of %d: %v", h.name, t.delivered(), h.maxDeliver, cause))
	if err := w.addResult(t, res); err != nil {
		return err
	}
	w.publish([]*task{t})
	return t.err
}
